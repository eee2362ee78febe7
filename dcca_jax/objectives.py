r"""The DCCA correlation objectives (Eq. 4-7), selectable by name.

All functions take the two networks' outputs ``h_v`` ``(n, o_v)`` and ``h_s`` ``(n, o_s)`` (rows are
samples), are pure and jit-compatible, and differentiate safely on degenerate input when the ridges
are positive (dead units, duplicated columns, batches smaller than the output dimension).

Objectives (values to *maximise*; :func:`cca_loss` returns the quantity to minimise):

===============  ===========================================  ===================================
name             formula (``rho`` = singular values of T)     used by
===============  ===========================================  ===================================
``trace_norm``   ``sum_j rho_j`` = ``tr((T^T T)^{1/2})``      Andrew et al. 2013 (DCCA); default
``top_k``        ``sum_{j<=k} rho_j``                         Andrew et al. 2013 (``o > k`` case)
``frobenius``    ``||T||_F = tr(T^T T)^{1/2}``                the paper's Eq. 5, read literally
``sum_squares``  ``sum_j rho_j^2 = ||T||_F^2``                Wang et al. 2015; cca-zoo "DCCA-SS"
``eq6``          loss ``1/2 sum_j (1 - rho_j)^2``             the paper's Eq. 6
===============  ===========================================  ===================================

Whitening (how ``T`` of Eq. 5 is formed): ``"cholesky"``, :math:`L_v^{-1}\Sigma_{vs}L_s^{-\top}` with
:math:`\Sigma = LL^\top`, is the default of every function here and of :class:`dcca_jax.models.dcca.DeepCCA`
(:data:`DEFAULT_WHITENING`; the setting that produced the published results). ``"symmetric"``,
:math:`\Sigma_{vv}^{-1/2}\Sigma_{vs}\Sigma_{ss}^{-1/2}`, is Eq. 5 read literally. The two matrices differ by
orthogonal factors, so their singular values (the canonical correlations) and every objective are the same;
Cholesky is cheaper, and its gradient does not go through an eigendecomposition (the symmetric inverse square
root needs the Daleckii-Krein JVP of :func:`dcca_jax.linalg.inv_sqrtm`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from dcca_jax.linalg import check_views, cholesky_whitener, covariance, inv_sqrtm

__all__ = [
    "OBJECTIVES",
    "WHITENINGS",
    "DEFAULT_WHITENING",
    "view_covariances",
    "correlation_matrix",
    "canonical_correlations",
    "correlation_objective",
    "cca_loss",
    "eq6_loss",
    "analytic_trace_norm_gradient",
]

OBJECTIVES = ("trace_norm", "top_k", "frobenius", "sum_squares", "eq6")
WHITENINGS = ("symmetric", "cholesky")
DEFAULT_WHITENING = "cholesky"


def view_covariances(h_v: ArrayLike, h_s: ArrayLike, *, ridge_v: float = 1e-4, ridge_s: float = 1e-4):
    r"""The three covariances of Eq. 4: :math:`\Sigma_{vv}+r_vI`, :math:`\Sigma_{ss}+r_sI`, :math:`\Sigma_{vs}`.

    Both views are centred by one concatenated matrix product, which is faster than three products.

    Args:
      h_v: ``(n, o_v)`` visual network outputs.
      h_s: ``(n, o_s)`` semantic network outputs.
      ridge_v, ridge_s: the regularisers :math:`r_V, r_S` of Eq. 4.

    Returns:
      ``(s_vv, s_ss, s_vs)`` of shapes ``(o_v, o_v)``, ``(o_s, o_s)``, ``(o_v, o_s)``.
    """
    h_v, h_s = check_views(h_v, h_s, names=("h_v", "h_s"))
    o_v = h_v.shape[1]
    c = covariance(jnp.concatenate([h_v, h_s], axis=1))
    s_vv = c[:o_v, :o_v] + ridge_v * jnp.eye(o_v, dtype=c.dtype)
    s_ss = c[o_v:, o_v:] + ridge_s * jnp.eye(h_s.shape[1], dtype=c.dtype)
    return s_vv, s_ss, c[:o_v, o_v:]


def correlation_matrix(
    h_v: ArrayLike,
    h_s: ArrayLike,
    *,
    ridge_v: float = 1e-4,
    ridge_s: float = 1e-4,
    whitening: str = DEFAULT_WHITENING,
) -> jax.Array:
    r"""The whitened cross-covariance ``T`` of Eq. 5.

    .. math:: T = \Sigma_{vv}^{-1/2}\,\Sigma_{vs}\,\Sigma_{ss}^{-1/2}

    (The paper prints the exponents as ``1/2``; the inverse square roots are meant, as in Andrew et
    al. 2013.) That is ``whitening="symmetric"``; the default ``"cholesky"`` (module docstring) uses
    :math:`L_v^{-1}\Sigma_{vs}L_s^{-\top}` instead, which has the same singular values (it differs by
    orthogonal factors) and is cheaper.

    Returns:
      ``(o_v, o_s)`` matrix whose singular values are the canonical correlations.
    """
    if whitening not in WHITENINGS:
        raise ValueError(f"whitening must be one of {WHITENINGS}; got {whitening!r}.")
    s_vv, s_ss, s_vs = view_covariances(h_v, h_s, ridge_v=ridge_v, ridge_s=ridge_s)
    if whitening == "symmetric":
        return inv_sqrtm(s_vv) @ s_vs @ inv_sqrtm(s_ss)
    return cholesky_whitener(s_vv) @ s_vs @ cholesky_whitener(s_ss).T


def canonical_correlations(
    h_v: ArrayLike,
    h_s: ArrayLike,
    *,
    ridge_v: float = 1e-4,
    ridge_s: float = 1e-4,
    whitening: str = DEFAULT_WHITENING,
) -> jax.Array:
    """Canonical correlations of two views: the singular values of ``T`` (Eq. 5), descending.

    Returns:
      ``(min(o_v, o_s),)`` values in ``[0, 1]`` (slightly below 1 when the ridges are positive).
    """
    t = correlation_matrix(h_v, h_s, ridge_v=ridge_v, ridge_s=ridge_s, whitening=whitening)
    return jnp.linalg.svd(t, compute_uv=False)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    # sqrt has an infinite derivative at 0 (T = 0 when the views are uncorrelated); the double
    # `where` keeps the gradient finite there instead of producing NaN.
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def eq6_loss(rho: ArrayLike) -> jax.Array:
    r"""The paper's Eq. 6 loss on canonical correlations: :math:`\tfrac12\sum_j (1-\rho_j)^2`."""
    rho = jnp.asarray(rho)
    return 0.5 * jnp.sum((1.0 - rho) ** 2)


def _validate_objective(objective: str, k: int | None, n_corr: int, shapes) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}; got {objective!r}.")
    if objective == "top_k":
        if k is None:
            raise ValueError("objective 'top_k' needs k (the number of correlations to sum).")
        if not 1 <= k <= n_corr:
            raise ValueError(
                f"k={k} must be between 1 and min(o_v, o_s)={n_corr} (the rank of T) for outputs of "
                f"shapes {shapes[0]} and {shapes[1]}."
            )


def correlation_objective(
    h_v: ArrayLike,
    h_s: ArrayLike,
    *,
    objective: str = "trace_norm",
    k: int | None = None,
    ridge_v: float = 1e-4,
    ridge_s: float = 1e-4,
    whitening: str = DEFAULT_WHITENING,
) -> jax.Array:
    r"""The total correlation to maximise (Eq. 5), by name; see the module table.

    ``eq6`` is returned as ``-loss`` so that larger is better for every name.

    Args:
      h_v: ``(n, o_v)`` visual network outputs.
      h_s: ``(n, o_s)`` semantic network outputs.
      objective: one of :data:`OBJECTIVES`.
      k: number of correlations summed by ``top_k``.
      ridge_v, ridge_s: Eq. 4 regularisers.
      whitening: ``"cholesky"`` (:data:`DEFAULT_WHITENING`, cheaper) or ``"symmetric"`` (Eq. 5
        literally); the value is the same either way.

    Returns:
      A scalar.
    """
    h_v_shape, h_s_shape = jnp.shape(h_v), jnp.shape(h_s)
    n_corr = min(h_v_shape[-1], h_s_shape[-1]) if len(h_v_shape) == 2 and len(h_s_shape) == 2 else 0
    _validate_objective(objective, k, n_corr, (h_v_shape, h_s_shape))
    t = correlation_matrix(h_v, h_s, ridge_v=ridge_v, ridge_s=ridge_s, whitening=whitening)
    if objective == "sum_squares":
        return jnp.sum(t * t)
    if objective == "frobenius":
        return _safe_sqrt(jnp.sum(t * t))
    # Singular values only: JAX's SVD JVP for compute_uv=False is u_i^T dT v_i, finite even when
    # singular values repeat.
    rho = jnp.linalg.svd(t, compute_uv=False)
    if objective == "trace_norm":
        return jnp.sum(rho)
    if objective == "top_k":
        return jnp.sum(rho[:k])
    return -eq6_loss(rho)


def cca_loss(
    h_v: ArrayLike,
    h_s: ArrayLike,
    *,
    objective: str = "trace_norm",
    k: int | None = None,
    ridge_v: float = 1e-4,
    ridge_s: float = 1e-4,
    whitening: str = DEFAULT_WHITENING,
) -> jax.Array:
    """The loss DCCA minimises: ``-correlation_objective(...)``; for ``eq6`` the paper's Eq. 6 loss."""
    return -correlation_objective(
        h_v, h_s, objective=objective, k=k, ridge_v=ridge_v, ridge_s=ridge_s, whitening=whitening
    )


def analytic_trace_norm_gradient(
    h_v: ArrayLike, h_s: ArrayLike, *, ridge_v: float = 1e-4, ridge_s: float = 1e-4
) -> tuple[jax.Array, jax.Array]:
    r"""The closed-form gradient of the trace-norm correlation (Eq. 7; Andrew et al. 2013, Sec. 2.2).

    With :math:`T = UDV^\top` (thin SVD),

    .. math::
        \nabla_{vv} = -\tfrac12 \Sigma_{vv}^{-1/2} U D U^\top \Sigma_{vv}^{-1/2}, \quad
        \nabla_{vs} = \Sigma_{vv}^{-1/2} U V^\top \Sigma_{ss}^{-1/2}, \\
        \frac{\partial\,\mathrm{corr}}{\partial \tilde H_v} = \frac{1}{n-1}
        \left(2\nabla_{vv}\tilde H_v + \nabla_{vs}\tilde H_s\right)

    in the paper's ``(o, n)`` layout; here rows are samples, so the result is
    :math:`\frac{1}{n-1}(2\tilde H_v\nabla_{vv} + \tilde H_s\nabla_{vs}^\top)`. The paper's Eq. 7
    prints :math:`\nabla_{vs}` with :math:`UDU^\top`; that is a typo (the shapes do not even agree when
    ``o_v != o_s``): Andrew et al. have :math:`UV^\top`, which is what autodiff confirms.

    Returns:
      ``(g_v, g_s)`` with the shapes of ``h_v`` and ``h_s``: the gradient of :math:`\sum_j\rho_j`
      with respect to the raw (uncentred) outputs.
    """
    h_v, h_s = check_views(h_v, h_s, names=("h_v", "h_s"))
    n = h_v.shape[0]
    s_vv, s_ss, s_vs = view_covariances(h_v, h_s, ridge_v=ridge_v, ridge_s=ridge_s)
    w_v, w_s = inv_sqrtm(s_vv), inv_sqrtm(s_ss)
    t = w_v @ s_vs @ w_s
    u, d, vt = jnp.linalg.svd(t, full_matrices=False)
    nabla_vs = w_v @ u @ vt @ w_s
    nabla_vv = -0.5 * w_v @ (u * d) @ u.T @ w_v
    nabla_ss = -0.5 * w_s @ (vt.T * d) @ vt @ w_s
    hv_c = h_v - h_v.mean(0)
    hs_c = h_s - h_s.mean(0)
    g_v = (2.0 * hv_c @ nabla_vv + hs_c @ nabla_vs.T) / (n - 1)
    g_s = (2.0 * hs_c @ nabla_ss + hv_c @ nabla_vs) / (n - 1)
    return g_v, g_s
