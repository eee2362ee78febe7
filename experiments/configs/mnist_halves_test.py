r"""Tiny CPU smoke config of the MNIST halves experiment (seconds; numbers are meaningless).

  python experiments/mnist_halves.py --config=experiments/configs/mnist_halves_test.py --workdir=/tmp/mnist_halves_test
"""
from experiments.configs import mnist_halves


def get_config():
    c = mnist_halves.get_config()
    c.n_components = 5
    c.n_val = 500
    c.run_kcca = False
    c.objectives = ("trace_norm",)
    c.dcca.towers.visual_hidden = c.dcca.towers.semantic_hidden = (32,)
    c.dcca.towers.out_dim = 5
    c.dcca.batch_size = 500
    c.dcca.epochs = 1
    return c
