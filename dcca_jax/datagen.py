"""Generated paired views with a known correlation structure (for demos, tests and benchmarks)."""
from __future__ import annotations

import numpy as np

__all__ = ["correlated_views"]


def correlated_views(
    n: int,
    d_v: int,
    d_s: int,
    *,
    latent: int = 20,
    noise: float = 1.0,
    nonlinear: bool = False,
    seed: int = 0,
    dtype=np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """Two views driven by shared Gaussian latents plus independent noise.

    ``x_v = z A + noise``, ``x_s = g(z) B + noise`` with ``g`` the identity, or (``nonlinear=True``)
    an elementwise square, which linear CCA cannot capture but kernel and deep CCA can.

    Returns:
      ``(x_v (n, d_v), x_s (n, d_s))`` as numpy arrays of ``dtype``.
    """
    if min(n, d_v, d_s, latent) < 1:
        raise ValueError(f"n, d_v, d_s and latent must be positive; got {n}, {d_v}, {d_s}, {latent}.")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent))
    a = rng.standard_normal((latent, d_v)) / np.sqrt(latent)
    b = rng.standard_normal((latent, d_s)) / np.sqrt(latent)
    g = (z**2 - 1.0) / np.sqrt(2.0) if nonlinear else z
    x_v = z @ a + noise * rng.standard_normal((n, d_v))
    x_s = g @ b + noise * rng.standard_normal((n, d_s))
    return x_v.astype(dtype), x_s.astype(dtype)
