r"""Tiny CPU-friendly config for tests: 160 synthetic images, hand-crafted features, few epochs.

  python experiments/pipeline.py --config=experiments/configs/test.py --workdir=/tmp/dcca_test
Expected: runs in well under a minute; every table has every method; all values in [0, 1] (per component).
"""
from experiments.configs import default


def get_config():
    c = default.get_config()
    c.data.synthetic.n_images = 160
    c.data.synthetic.image_size = 64
    c.visual.backbone = "handcrafted"
    c.visual.autoencoder.code_dim = 16
    c.visual.autoencoder.hidden_sizes = (32,)
    c.visual.autoencoder.max_epochs = 3
    c.visual.autoencoder.batch_size = 32
    c.semantic.n_clusters = 8
    c.semantic.kmeans_n_init = 2
    c.semantic.skipgram.vector_size = 8
    c.semantic.skipgram.epochs = 5
    c.cca.n_components = 4
    c.kcca.n_components = 4
    c.dcca.towers.visual_hidden = (16,)
    c.dcca.towers.semantic_hidden = (16,)
    c.dcca.towers.out_dim = 4
    c.dcca.epochs = 3
    c.general_cca.pca_dims = 16
    c.general_cca.n_components = 4
    c.cca_knn.pca_dims = 16
    c.cca_knn.n_components = 4
    c.cca_knn.word2vec_dim = 8
    c.eval.ap_ar_max_tags = 4
    return c
