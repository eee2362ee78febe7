r"""Write the procedurally generated tagged-scene dataset (an image folder with tags.tsv and split lists).

  python experiments/make_synthetic.py --config=experiments/configs/synthetic.py --workdir=data/synthetic
"""
from absl import app, flags, logging
from ml_collections import config_flags

from dcca_jax.data import synthetic

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/synthetic.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "data/synthetic", "Destination folder of the dataset.")


def main(argv):
    del argv
    out = synthetic.generate(_WORKDIR.value, config=_CONFIG.value)
    logging.info("synthetic dataset: %d images of %dx%d in %s", _CONFIG.value.n_images,
                 _CONFIG.value.image_size, _CONFIG.value.image_size, out)


if __name__ == "__main__":
    app.run(main)
