r"""MNIST left/right halves (Andrew et al. 2013): linear CCA, KCCA and DCCA, table as JSON + Markdown.

  python experiments/mnist_halves.py --config=experiments/configs/mnist_halves.py \
      --config.data_path=../shared/data/mnist/mnist.npz --workdir=runs/mnist_halves
"""
from absl import app, flags
from ml_collections import config_flags

from experiments.studies.mnist_halves import run_mnist_halves

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/mnist_halves.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/mnist_halves", "Where the models, results.json and results.md go.")


def main(argv):
    del argv
    run_mnist_halves(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
