r"""MNIST left/right halves (Andrew et al. 2013): linear CCA, KCCA and DCCA, table as JSON + Markdown.

  PYTHONPATH=$PWD python experiments/mnist_halves.py --config=experiments/configs/mnist_halves.py \
      --config.data_path=../shared/data/mnist/mnist.npz --config.workdir=runs/mnist_halves
"""
from absl import app
from ml_collections import config_flags

from experiments.studies.mnist_halves import run_mnist_halves

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/mnist_halves.py", lock_config=True)


def main(argv):
    del argv
    run_mnist_halves(_CONFIG.value)


if __name__ == "__main__":
    app.run(main)
