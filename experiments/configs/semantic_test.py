r"""Tiny semantic-view config for tests: a few skip-gram epochs, 8 deep words, on an image folder.

  python experiments/semantic_view.py --config=experiments/configs/semantic_test.py \
      --config.dataset.root=/path/to/folder --workdir=/tmp/sem
"""
import ml_collections

from dcca_jax.semantic import deepwords


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset = ml_collections.ConfigDict()
    c.dataset.kind = "image_folder"
    c.dataset.root = ""
    c.semantic = deepwords.semantic_config()
    c.semantic.n_clusters = 8
    c.semantic.kmeans_n_init = 2
    c.semantic.skipgram.vector_size = 16
    c.semantic.skipgram.epochs = 3
    return c
