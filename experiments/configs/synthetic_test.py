r"""A tiny synthetic dataset for tests (40 images, 64x64).

  python experiments/make_synthetic.py --config=experiments/configs/synthetic_test.py --workdir=/tmp/synth
"""
import ml_collections

from dcca_jax.data import synthetic


def get_config() -> ml_collections.ConfigDict:
    c = synthetic.synthetic_config()
    c.n_images = 40
    c.image_size = 64
    return c
