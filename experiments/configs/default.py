r"""Main job: the whole pipeline on the embedded synthetic dataset (generated with Pillow, no download).

  make run
  # = .venv/bin/python experiments/pipeline.py --config=experiments/configs/default.py --workdir=runs/default

Uses the MobileNetV2 TFLite weights when found (``$DCCA_MOBILENET_TFLITE`` or
``../shared/models/mobilenet_v2_1.0_224_quant/``), else the hand-crafted colour+texture backbone.
Expected: finishes in a few minutes on 2 CPU cores; DMFR&DCCA beats DMFR&CCA on held-out correlation.

Every size is "auto" (dcca_jax/sizes.py): on this dataset (44 words, 960 training images) the targets below
resolve to themselves: code 128, 24 deep words, 20 components everywhere, DCCA batch 200, PCA 128.
Check the sizes on other data in seconds with experiments/check_data.py.
"""
import os
import pathlib

from dcca_jax import pipeline

TFLITE_NAME = "mobilenet_v2_1.0_224_quant.tflite"


def default_tflite_path() -> str:
    """Where the MobileNetV2 TFLite weights are looked for: ``$DCCA_MOBILENET_TFLITE``, else
    ``../shared/models/mobilenet_v2_1.0_224_quant/`` beside the repository."""
    env = os.environ.get("DCCA_MOBILENET_TFLITE")
    if env:
        return env
    repo = pathlib.Path(__file__).resolve().parents[2]
    return str(repo.parent / "shared" / "models" / "mobilenet_v2_1.0_224_quant" / TFLITE_NAME)


def get_config():
    c = pipeline.pipeline_config()
    c.visual.tflite_path = default_tflite_path()
    c.data.kind = "synthetic"
    c.data.synthetic.n_images = 1200
    c.data.synthetic.image_size = 128

    # Targets of the "auto" sizes (capped by the data).
    c.sizes.code_dim = 128  # auto-encoder code; PCA of the baselines
    c.sizes.deep_words = 24
    c.sizes.components = 20  # CCA, KCCA, DCCA output, general CCA, CCA-KNN
    c.sizes.dcca_batch = 200

    c.visual.autoencoder.architecture = "pca_residual"
    c.visual.autoencoder.learning_rate = 1e-4
    c.visual.autoencoder.hidden_sizes = (512,)
    c.visual.autoencoder.max_epochs = 60

    c.semantic.skipgram.vector_size = 32

    c.cca.ridge_v = 1e-2
    c.cca.ridge_s = 1e-2

    # Residual towers that start at the linear CCA map (FINDINGS.md), minibatches, dropout and early
    # stopping: the plain full-batch DCCA of the paper lost held-out correlation to linear CCA here.
    c.dcca.towers.visual_hidden = (256, 256)
    c.dcca.towers.semantic_hidden = (256, 256)
    c.dcca.towers.activation = "relu"
    c.dcca.towers.residual_cca = True
    c.dcca.towers.cca_init_ridge = 0.01
    c.dcca.towers.dropout = 0.1
    c.dcca.epochs = 100
    c.dcca.patience = 15
    c.dcca.learning_rate = 1e-3
    c.dcca.weight_decay = 1e-4
    c.dcca.ridge_v = 1e-3
    c.dcca.ridge_s = 1e-3
    c.dcca.checkpoint_every = 50
    return c
