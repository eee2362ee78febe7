r"""The built-in synthetic tagged-scene dataset (1200 images, 128x128, 40 words).

  python experiments/make_synthetic.py --config=experiments/configs/synthetic.py --workdir=data/synthetic

Then load it with dcca_jax.data.datasets.load_image_folder("data/synthetic") (960 train / 240 test).
Takes about 25 s on 2 (shared) CPU cores and about 40 MB of PNGs.
"""
import ml_collections

from dcca_jax.data import synthetic


def get_config() -> ml_collections.ConfigDict:
    return synthetic.synthetic_config()
