r"""General CCA: linear CCA between the raw visual and semantic views, with kNN label transfer.

The "general CCA" of the paper's Table 1 / Fig. 2 (DMFR&CCA): the visual features (optionally reduced by PCA
first, which acts as a second regulariser besides the ridge) and the binary tag vectors are related by linear CCA
(:func:`dcca_jax.models.cca.fit_linear_cca`); a test image is projected with the visual map and its tags are transferred
from its neighbours in the common space (:mod:`dcca_jax.tagging.recommend`).  Canonical directions are nested, so a model
fitted with k components also gives every smaller dimension by truncation (:func:`truncate`), which makes the
choice of dimension on a validation split cheap.

References:
  Hotelling. Relations between two sets of variates. Biometrika 1936.
  Hardoon, Szedmak, Shawe-Taylor. Canonical correlation analysis: an overview. Neural Computation 2004.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.typing import ArrayLike

from dcca_jax.linalg import principal_axes
from dcca_jax.models import cca as cca_lib
from dcca_jax.tagging import recommend


@dataclasses.dataclass(frozen=True)
class PCA:
    """Principal components of a view: ``(x - mean) @ components``."""

    mean: jax.Array  # (d,)
    components: jax.Array  # (d, p)

    def __call__(self, x: ArrayLike) -> jax.Array:
        return (jnp.asarray(x) - self.mean) @ self.components


def fit_pca(x: ArrayLike, *, n_components: int) -> PCA:
    r"""PCA of the centred data, keeping the ``n_components`` leading principal axes
    (:func:`dcca_jax.linalg.principal_axes`).

    Args:
      x: (n, d) data.
      n_components: p <= min(n, d); 0 means no reduction (identity map, centred).

    Returns:
      :class:`PCA` whose call maps (m, d) -> (m, p).
    """
    x = jnp.asarray(x)
    mean = x.mean(0)
    if n_components == 0:
        return PCA(mean, jnp.eye(x.shape[1], dtype=x.dtype))
    if not 0 < n_components <= min(x.shape):
        raise ValueError(f"n_components={n_components} must lie in [1, min{x.shape}] for data {x.shape}")
    # The axes from the eigendecomposition of the float64 scatter matrix, not from an SVD of the data: the
    # same axes up to sign (which CCA ignores), 0.3 s instead of 20-40 s for Corel5k's 4,000 x 1,280 features
    # on 2 cores (jnp.linalg.svd in float32).
    x64 = np.asarray(x, np.float64)
    axes = principal_axes(x64 - x64.mean(0), n_components=n_components)
    return PCA(mean, jnp.asarray(axes.T, x.dtype))


@dataclasses.dataclass(frozen=True)
class GeneralCCA:
    """A fitted general-CCA model: optional PCA of the visual view, then linear CCA."""

    pca: PCA
    cca: cca_lib.CCAParams

    def transform(self, x_v: ArrayLike | None = None, x_s: ArrayLike | None = None):
        """(z_v or None, z_s or None): common-space projections (the CorrelationModel ``transform`` API)."""
        xv = None if x_v is None else self.pca(x_v)
        return cca_lib.project(self.cca, x_v=xv, x_s=x_s)

    @property
    def correlations(self) -> jax.Array:
        """(k,) canonical correlations on the training data, descending."""
        return self.cca.correlations


def general_cca_config() -> ml_collections.ConfigDict:
    """Defaults: PCA 300, ridge 0.1 on both views, 100 components, 10-NN similarity votes."""
    c = ml_collections.ConfigDict()
    c.pca_dims = 300
    c.ridge_v = 0.1
    c.ridge_s = 0.1
    c.n_components = 100
    c.transfer = recommend.transfer_config()
    return c


def fit_general_cca(x_v: ArrayLike, x_s: ArrayLike, *, pca_dims: int, n_components: int, ridge_v: float,
                    ridge_s: float) -> GeneralCCA:
    """Fit PCA (``pca_dims``; 0 = none) on the visual view, then linear CCA with ``n_components`` directions.

    Args:
      x_v: (n, d_v) visual features.
      x_s: (n, d_s) semantic features (binary tag vectors for general CCA).
      pca_dims: PCA dimension of the visual view before CCA (0 keeps all d_v).
      n_components: canonical directions k <= min(pca_dims or d_v, d_s).
      ridge_v: ridge added to the visual covariance (Eq. 4).
      ridge_s: ridge added to the semantic covariance.

    Returns:
      :class:`GeneralCCA`.
    """
    xv, xs = jnp.asarray(x_v), jnp.asarray(x_s)
    if xv.shape[0] != xs.shape[0]:
        raise ValueError(f"x_v {xv.shape} and x_s {xs.shape} must have the same number of rows")
    pca = fit_pca(xv, n_components=pca_dims)
    params = cca_lib.fit_linear_cca(pca(xv), xs, n_components=n_components, ridge_v=ridge_v, ridge_s=ridge_s)
    return GeneralCCA(pca, params)


def truncate(model: GeneralCCA, n_components: int) -> GeneralCCA:
    """The same model restricted to its ``n_components`` leading canonical directions."""
    p = model.cca
    k = p.proj_v.shape[1]
    if not 0 < n_components <= k:
        raise ValueError(f"n_components={n_components} must lie in [1, {k}] (the fitted directions)")
    return GeneralCCA(model.pca, p.replace(proj_v=p.proj_v[:, :n_components], proj_s=p.proj_s[:, :n_components],
                                           correlations=p.correlations[:n_components]))

