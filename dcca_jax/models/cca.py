"""Linear CCA: closed-form fit with per-view ridge, projections P, Q (Eq. 8), transform and scoring."""
from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.typing import ArrayLike

from dcca_jax.models.base import CorrelationModel, correlation_score_curve, paired_correlations, register_model
from dcca_jax.linalg import as_float_array, check_views

__all__ = [
    "CCAParams",
    "fit_linear_cca",
    "cca_from_covariances",
    "check_components",
    "project",
    "paired_correlations",
    "correlation_score_curve",
    "cca_config",
    "LinearCCA",
]


class CCAParams(flax.struct.PyTreeNode):
    """A fitted linear CCA: ``z_v = (x_v - mean_v) @ proj_v``, ``z_s = (x_s - mean_s) @ proj_s``.

    Attributes:
      mean_v: ``(d_v,)`` training mean of the visual view.
      mean_s: ``(d_s,)`` training mean of the semantic view.
      proj_v: ``(d_v, k)`` the paper's ``P`` (Eq. 8).
      proj_s: ``(d_s, k)`` the paper's ``Q`` (Eq. 8).
      correlations: ``(k,)`` training canonical correlations, descending.
    """

    mean_v: jax.Array
    mean_s: jax.Array
    proj_v: jax.Array
    proj_s: jax.Array
    correlations: jax.Array


def _fix_signs(p: jax.Array, q: jax.Array):
    # A canonical pair is defined up to a joint sign; make the largest-magnitude entry of each P
    # column positive so fits are reproducible and comparable across implementations.
    idx = jnp.argmax(jnp.abs(p), axis=0)
    sign = jnp.sign(p[idx, jnp.arange(p.shape[1])])
    sign = jnp.where(sign == 0, 1.0, sign).astype(p.dtype)
    return p * sign, q * sign


@functools.partial(jax.jit, static_argnames=("n_components",))
def cca_from_covariances(s_vv, s_ss, s_vs, *, n_components: int):
    r"""Canonical directions from (ridge-regularised) covariances.

    Cholesky whitening :math:`\Sigma_{vv} = L_vL_v^\top`, :math:`\Sigma_{ss} = L_sL_s^\top`, then the
    SVD :math:`L_v^{-1}\Sigma_{vs}L_s^{-\top} = UDV^\top` gives :math:`P = L_v^{-\top}U_{:k}`,
    :math:`Q = L_s^{-\top}V_{:k}` (Eq. 8 with the Cholesky factor in place of the symmetric square
    root: the two differ by an orthogonal factor that the SVD absorbs), so that
    :math:`P^\top\Sigma_{vv}P = Q^\top\Sigma_{ss}Q = I` and :math:`P^\top\Sigma_{vs}Q = D_{:k}`.

    Returns:
      ``(proj_v (d_v, k), proj_s (d_s, k), correlations (k,))``.
    """
    solve = jax.scipy.linalg.solve_triangular
    l_v = jnp.linalg.cholesky(0.5 * (s_vv + s_vv.T))
    l_s = jnp.linalg.cholesky(0.5 * (s_ss + s_ss.T))
    a = solve(l_v, s_vs, lower=True)
    t = solve(l_s, a.T, lower=True).T
    u, d, vt = jnp.linalg.svd(t, full_matrices=False)
    k = n_components
    p = solve(l_v.T, u[:, :k], lower=False)
    q = solve(l_s.T, vt[:k].T, lower=False)
    p, q = _fix_signs(p, q)
    return p, q, d[:k]


@functools.partial(jax.jit, static_argnames=("n_components",))
def _fit(x_v, x_s, ridge_v, ridge_s, *, n_components):
    n, d_v = x_v.shape
    mean_v = x_v.mean(0)
    mean_s = x_s.mean(0)
    z = jnp.concatenate([x_v - mean_v, x_s - mean_s], axis=1)
    c = z.T @ z / (n - 1)
    s_vv = c[:d_v, :d_v] + ridge_v * jnp.eye(d_v, dtype=c.dtype)
    s_ss = c[d_v:, d_v:] + ridge_s * jnp.eye(c.shape[0] - d_v, dtype=c.dtype)
    p, q, rho = cca_from_covariances(s_vv, s_ss, c[:d_v, d_v:], n_components=n_components)
    return CCAParams(mean_v=mean_v, mean_s=mean_s, proj_v=p, proj_s=q, correlations=rho)


def check_components(n_components: int, d_v: int, d_s: int, shapes) -> None:
    """ValueError naming both view shapes unless ``1 <= n_components <= min(d_v, d_s)`` (an integer)."""
    if not isinstance(n_components, (int, np.integer)) or not 1 <= n_components <= min(d_v, d_s):
        raise ValueError(
            f"n_components={n_components!r} must be an integer between 1 and min(d_v, d_s)={min(d_v, d_s)} "
            f"(the largest possible rank of the cross-covariance) for views of shapes {shapes[0]} and {shapes[1]}."
        )


def fit_linear_cca(
    x_v: ArrayLike,
    x_s: ArrayLike,
    *,
    n_components: int,
    ridge_v: float = 0.0,
    ridge_s: float = 0.0,
) -> CCAParams:
    r"""Closed-form (regularised) linear CCA.

    Maximises :math:`\mathrm{corr}(X_v p, X_s q)` for successive uncorrelated pairs, with
    covariances :math:`\Sigma_{vv} + r_vI`, :math:`\Sigma_{ss} + r_sI` (Eq. 4). With zero ridges this
    is plain CCA (Hotelling 1936); it then needs each view's covariance to be full rank, i.e.
    ``n - 1 >= d`` and no constant or duplicated columns, otherwise pass a positive ridge.

    Args:
      x_v: ``(n, d_v)`` visual view.
      x_s: ``(n, d_s)`` semantic view.
      n_components: number of canonical pairs ``k`` (``1 <= k <= min(d_v, d_s)``).
      ridge_v, ridge_s: per-view ridges added to the covariance diagonals.

    Returns:
      :class:`CCAParams` with components sorted by decreasing training correlation.

    Raises:
      ValueError: bad shapes, non-finite input, ``k`` out of range, or a singular covariance with
        zero ridge.
    """
    a, b = check_views(x_v, x_s)
    check_components(n_components, a.shape[1], b.shape[1], (a.shape, b.shape))
    if ridge_v < 0 or ridge_s < 0:
        raise ValueError(f"ridges must be >= 0; got ridge_v={ridge_v}, ridge_s={ridge_s}.")
    params = _fit(a, b, jnp.asarray(ridge_v, a.dtype), jnp.asarray(ridge_s, a.dtype), n_components=int(n_components))
    if not isinstance(params.proj_v, jax.core.Tracer) and not (
        bool(jnp.all(jnp.isfinite(params.proj_v))) and bool(jnp.all(jnp.isfinite(params.proj_s)))
    ):
        raise ValueError(
            f"a view covariance is singular (views of shapes {a.shape} and {b.shape}, ridge_v={ridge_v}, "
            f"ridge_s={ridge_s}): constant or duplicated columns, or fewer samples than features. "
            "Use a positive ridge (e.g. 1e-3 times the mean feature variance) or reduce the dimension."
        )
    return params


def project(params: CCAParams, x_v: ArrayLike | None = None, x_s: ArrayLike | None = None):
    """Applies Eq. 8's projections: returns ``(z_v or None, z_s or None)``, each ``(n, k)``."""
    z_v = z_s = None
    if x_v is not None:
        x_v = as_float_array(x_v, name="x_v")
        if x_v.shape[1] != params.proj_v.shape[0]:
            raise ValueError(f"x_v has shape {x_v.shape}; the projection expects {params.proj_v.shape[0]} features.")
        z_v = (x_v - params.mean_v) @ params.proj_v
    if x_s is not None:
        x_s = as_float_array(x_s, name="x_s")
        if x_s.shape[1] != params.proj_s.shape[0]:
            raise ValueError(f"x_s has shape {x_s.shape}; the projection expects {params.proj_s.shape[0]} features.")
        z_s = (x_s - params.mean_s) @ params.proj_s
    return z_v, z_s


def cca_config() -> ml_collections.ConfigDict:
    """Hyperparameters of :class:`LinearCCA` with their defaults (see the class docstring)."""
    return ml_collections.ConfigDict({"n_components": 10, "ridge_v": 0.0, "ridge_s": 0.0})


@register_model
class LinearCCA(CorrelationModel):
    """Linear CCA with the common model API (``fit``/``transform``/``score``/``save``/``load``).

    Config: ``n_components`` (k), ``ridge_v``, ``ridge_s`` (Eq. 4 ridges, absolute: they are added
    to covariances, so scale them with the features' variance).
    """

    name = "linear_cca"

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        return cca_config()

    def _fit(self, x_v, x_s, **kwargs):
        if kwargs:
            raise TypeError(f"LinearCCA.fit takes no extra arguments; got {sorted(kwargs)}.")
        c = self.config
        self.params = fit_linear_cca(x_v, x_s, n_components=c.n_components, ridge_v=c.ridge_v, ridge_s=c.ridge_s)

    @property
    def correlations(self) -> jax.Array:
        """Training canonical correlations, descending."""
        self._check_fitted()
        return self.params.correlations

    def _transform(self, x_v, x_s):
        return project(self.params, x_v, x_s)

    def _state(self):
        return {k: np.asarray(getattr(self.params, k)) for k in ("mean_v", "mean_s", "proj_v", "proj_s", "correlations")}

    def _set_state(self, arrays):
        self.params = CCAParams(**{k: jnp.asarray(v) for k, v in arrays.items()})
