r"""The CNN-free visual feature (the ``"handcrafted"`` backbone), standardised with *training* statistics.

JEC's HSV and LAB joint histograms coarsened to 8 bins per channel (512 each, square-rooted: the Hellinger
map, so that Euclidean geometry matches the Bhattacharyya similarity) and its 192 Gabor energies, standardised
by the mean and standard deviation of the training images and divided by :math:`\sqrt{192}`:

.. math::
    x = \left[\sqrt{h_{HSV}},\ \sqrt{h_{LAB}},\ \frac{g - \mu_{train}}{(\sigma_{train} + 10^{-6})\sqrt{192}}\right]

The statistics are fixed at training time (and travel in the tagger bundle), so the feature of one image does
not depend on the other images of its batch: one photo can be tagged on its own.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

DIM = 1216


def gabor_statistics(jec_features: Mapping[str, np.ndarray], ok: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation ``(192,)`` of the Gabor energies of the (readable) training images."""
    g = np.asarray(jec_features["gabor"], np.float64)
    if ok is not None:
        g = g[np.asarray(ok, bool)]
    if len(g) == 0:
        raise ValueError("gabor_statistics needs at least one readable training image")
    return g.mean(0).astype(np.float32), g.std(0).astype(np.float32)


def handcrafted_from_jec(jec_features: Mapping[str, np.ndarray], *, gabor_mean: np.ndarray,
                         gabor_std: np.ndarray) -> np.ndarray:
    """The ``(n, 1216)`` float32 feature from JEC features (:func:`dcca_jax.baselines.jec.compute_jec_features`).

    Args:
      jec_features: ``{"hsv": (n, 4096), "lab": (n, 4096), "gabor": (n, 192), ...}``.
      gabor_mean: ``(192,)`` training mean of the Gabor energies (:func:`gabor_statistics`).
      gabor_std: ``(192,)`` training standard deviation.

    Returns:
      ``(n, 1216)`` float32.
    """
    def coarse(h):
        h = np.asarray(h)
        h = h.reshape(len(h), 8, 2, 8, 2, 8, 2).sum(axis=(2, 4, 6)).reshape(len(h), 512)
        return np.sqrt(np.maximum(h, 0))

    gabor = np.asarray(jec_features["gabor"])
    mean, std = np.asarray(gabor_mean), np.asarray(gabor_std)
    if mean.shape != gabor.shape[1:] or std.shape != gabor.shape[1:]:
        raise ValueError(f"gabor statistics {mean.shape}, {std.shape} do not match the Gabor features {gabor.shape}")
    gabor = (gabor - mean) / (std + 1e-6) / np.sqrt(gabor.shape[1])
    return np.concatenate([coarse(jec_features["hsv"]), coarse(jec_features["lab"]), gabor], axis=1).astype(np.float32)
