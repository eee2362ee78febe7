r"""MNIST left/right halves: the classic two-view benchmark of Deep CCA (Andrew et al., ICML 2013).

Each 28 x 28 digit is split into its left 14 columns (view ``v``) and right 14 columns (view ``s``),
392 pixels each, scaled to ``[0, 1]``. Models are fitted on the 60,000 training images (part of which is
held out for hyperparameter selection) and scored by the *total canonical correlation* of their 50
output dimensions on the 10,000 test images: the sum of the per-component Pearson correlations of the
paired projections (:func:`dcca_jax.models.base.paired_correlations`). Published test totals (Andrew et al.
2013, Table 1): linear CCA 28.0, KCCA 33.0, DCCA 39.7.

The fits themselves are the MNIST study, ``experiments/studies/mnist_halves.py``.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np

__all__ = ["load_mnist_halves"]

_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_mnist_halves(path: str | os.PathLike, *, dtype=np.float32) -> dict[str, np.ndarray]:
    """Loads ``mnist.npz`` and splits every digit into its left and right halves.

    Args:
      path: an ``.npz`` with ``x_train (60000, 28, 28)``, ``y_train``, ``x_test (10000, 28, 28)``,
        ``y_test`` (uint8 pixels, 0 = background), e.g. ``../shared/data/mnist/mnist.npz``.
      dtype: dtype of the pixel views (values ``/255``).

    Returns:
      ``{"train_v", "train_s", "test_v", "test_s"}`` of shape ``(n, 392)`` (left, right halves, each
      flattened row-major from its ``28 x 14`` block) and ``{"y_train", "y_test"}`` labels.

    Raises:
      FileNotFoundError: ``path`` is missing (the message says where MNIST comes from).
      ValueError: a key is missing or an image is not 28 x 28.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"MNIST not found at {path}: expected an .npz with {', '.join(_KEYS)} (the Keras layout, "
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz); pass its path."
        )
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in _KEYS if k not in z.files]
        if missing:
            raise ValueError(f"{path} lacks {missing}; it has {z.files}.")
        arrays = {k: z[k] for k in _KEYS}
    out = {}
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(f"{path}: x_{split} has shape {x.shape}; expected (n, 28, 28) images.")
        x = x.astype(dtype) / dtype(255.0)
        out[f"{split}_v"] = np.ascontiguousarray(x[:, :, :14].reshape(len(x), -1))
        out[f"{split}_s"] = np.ascontiguousarray(x[:, :, 14:].reshape(len(x), -1))
        out[f"y_{split}"] = arrays[f"y_{split}"]
    return out
