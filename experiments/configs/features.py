r"""Precomputed features (.npy) plus a label matrix, for any dataset (e.g. Corel30k).

  python experiments/pipeline.py --config=experiments/configs/features.py \
      --config.data.root=/path/to/features_dir --workdir=runs/corel30k

The folder layout is described in BUILD.md (train/test features, label matrices, vocabulary). With no
images, the visual view is the given features (through the auto-encoder) and JEC is not available.
"""
from experiments.configs import corel5k


def get_config():
    c = corel5k.get_config()
    c.data.kind = "features"
    c.data.root = ""
    c.visual.backbone = "precomputed"
    c.baselines = ("general_cca", "cca_knn")
    return c
