r"""Tiny CPU-friendly config for tests: 160 synthetic images, hand-crafted features, few epochs.

  python experiments/pipeline.py --config=experiments/configs/test.py --workdir=/tmp/dcca_test
Expected: runs in well under a minute; every table has every method; all values in [0, 1] (per component).

Small targets for the "auto" sizes, and recommend.n_tags="auto" (the rounded mean tags per training image), so
the same config runs on any dataset (tests/test_pipeline_family.py: 2 to 1,000 words, single-tag images,
8-d features, 40 images).
"""
from dcca_jax import sizes
from experiments.configs import default


def get_config():
    c = default.get_config()
    c.data.synthetic.n_images = 160
    c.data.synthetic.image_size = 64
    c.visual.backbone = "handcrafted"
    c.sizes.code_dim = 16
    c.sizes.deep_words = 8
    c.sizes.components = 4
    c.sizes.ae_batch = 32
    c.recommend.n_tags = sizes.AUTO
    c.visual.autoencoder.hidden_sizes = (32,)
    c.visual.autoencoder.max_epochs = 3
    c.semantic.kmeans_n_init = 2
    c.semantic.skipgram.vector_size = 8
    c.semantic.skipgram.epochs = 5
    c.dcca.towers.visual_hidden = (16,)
    c.dcca.towers.semantic_hidden = (16,)
    c.dcca.epochs = 3
    c.eval.ap_ar_max_tags = 4
    return c
