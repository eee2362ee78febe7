"""MNIST halves loader (the fits are the study, tests/experiments/test_mnist_halves.py)."""
import numpy as np
import pytest
from tests.conftest import shared_path

from dcca_jax.data import mnist


@pytest.mark.slow
def test_load_mnist_halves_splits_columns():
    path = shared_path("data", "mnist", "mnist.npz")
    d = mnist.load_mnist_halves(path)
    with np.load(path) as z:
        raw_train, raw_test = z["x_train"], z["x_test"]
    assert d["train_v"].shape == d["train_s"].shape == (60000, 392)
    assert d["test_v"].shape == (10000, 392) and d["train_v"].dtype == np.float32
    for i in (0, 12345):
        np.testing.assert_allclose(d["train_v"][i].reshape(28, 14), raw_train[i][:, :14] / 255.0, rtol=1e-6)
        np.testing.assert_allclose(d["train_s"][i].reshape(28, 14), raw_train[i][:, 14:] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(d["test_s"][7].reshape(28, 14), raw_test[7][:, 14:] / 255.0, rtol=1e-6)
    assert d["train_v"].max() == 1.0 and d["train_v"].min() == 0.0


def test_missing_file_and_bad_content(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST not found at .*nope.npz"):
        mnist.load_mnist_halves(tmp_path / "nope.npz")
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((3, 28, 28)))
    with pytest.raises(ValueError, match="lacks \\['y_train', 'x_test', 'y_test'\\]"):
        mnist.load_mnist_halves(tmp_path / "bad.npz")

