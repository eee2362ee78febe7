r"""Regularised kernel CCA (Hardoon et al. 2004): exact, Nystrom and random-Fourier-feature solvers.

The formulation (one ridge per view, in the units of the feature-space covariance)
--------------------------------------------------------------------------------
With centred training kernels :math:`\tilde K_v, \tilde K_s` (``n x n``) and dual directions
:math:`\alpha, \beta`, kernel CCA maximises :math:`\alpha^\top\tilde K_v\tilde K_s\beta` subject to

.. math::
    \alpha^\top\Big(\tfrac{1}{n-1}\tilde K_v^2 + r_v\tilde K_v\Big)\alpha = 1, \qquad
    \beta^\top\Big(\tfrac{1}{n-1}\tilde K_s^2 + r_s\tilde K_s\Big)\beta = 1 .

This is *exactly* linear CCA in the kernel's feature space with the ridge of Eq. 4: for a direction
:math:`a = \tilde\Phi_v^\top\alpha`, :math:`a^\top(\Sigma_{vv} + r_vI)a` is the left-hand side above.
Hence the linear kernel with ridge ``r`` gives the same correlations and projections as
:func:`dcca_jax.models.cca.fit_linear_cca` with ridge ``r`` (tested), and the Nystrom / random-feature solvers,
which build explicit features :math:`\Phi` with :math:`\Phi\Phi^\top \approx K`, are linear CCA on those
features with the same ridges and converge to the exact solver as the number of features grows. It is
Hardoon et al.'s regularisation :math:`(1-\tau)K^2 + \tau K` up to a per-view scale
(:math:`\tau/(1-\tau) = (n-1)r`), and cca-zoo's ``KCCA(shrinkage=c)`` equals ``ridge = c/(1-c)``.
The canonical correlations are the square roots of the eigenvalues of :math:`P_vP_s` with
:math:`P = \tilde K(\tilde K + (n-1)rI)^{-1}` (Bach & Jordan 2002). Kernel CCA needs ``r > 0``: without
it every RBF fit has correlations 1 (Hardoon et al. 2004, Sec. 3).

Exact solver (``solver="exact"``): Cholesky whitening, then one symmetric eigendecomposition
--------------------------------------------------------------------------------------------
:math:`\tilde K_v + \epsilon I = G_vG_v^\top` (a tiny jitter :math:`\epsilon` keeps the Cholesky of the
rank-deficient centred kernel defined), :math:`G_v^\top G_v + cI = C_vC_v^\top` with
:math:`c = (n-1)r_v`; then :math:`A_v = G_vC_v^{-\top}` satisfies :math:`A_vA_v^\top = P_v` and the
canonical correlations and pairs are the SVD :math:`A_v^\top A_s = UDV^\top` (computed from the
eigendecomposition of :math:`TT^\top`, :math:`T = A_v^\top A_s`). Training projections are
:math:`z_v = \sqrt{n-1}A_vU`, and the dual coefficients for new data
:math:`\alpha = (\tilde K_v + (\epsilon + c)I)^{-1}z_s / \rho` (push-through identity), so that
:math:`z_v(x) = \tilde k_v(x)^\top\alpha` with the test kernel centred by the training column means.
Memory: each ``n x n`` float64 matrix takes ``8 n^2`` bytes (800 MB at ``n = 10,000``); the solver holds
about eight of them at its peak (kernels, Cholesky factors, ``A_v``, ``A_s``, ``T``, ``TT^\top``), about
6.4 GB at ``n = 10,000`` (half in float32). Kernel blocks are computed ``chunk_size`` rows at a time, so no ``n x n x d``
intermediate is ever formed. Time is a few ``n^3`` flops plus one ``n x n`` symmetric eigendecomposition.

Scalable solvers
----------------
``"nystrom"``: ``m`` landmarks drawn without replacement (seeded); :math:`\Phi = K(X, L)\,R^{-1}` with
:math:`K(L, L) + \epsilon I = R^\top R`, so :math:`\Phi\Phi^\top = K_{XL}K_{LL}^{-1}K_{LX}` (Williams &
Seeger 2001). ``"rff"`` (RBF only): :math:`\Phi = \sqrt{2/D}\cos(XW + b)`, :math:`W_{ij}\sim N(0,
\sigma^{-2})`, :math:`b\sim U[0, 2\pi)` (Rahimi & Recht 2007). Both then call
:func:`dcca_jax.models.cca.fit_linear_cca` on the features (whose centring is the feature-space centring of
the approximate kernel). Memory ``O(n m)``; at ``n = 50,000`` and ``m = 4,000`` about 1.6 GB per view
in float64.

References:
  Hardoon, Szedmak & Shawe-Taylor (2004). Canonical correlation analysis: an overview with application
  to learning methods. Neural Computation 16(12). Bach & Jordan (2002). Kernel independent component
  analysis. JMLR 3. Williams & Seeger (2001), Rahimi & Recht (2007). Scholkopf, Smola & Muller (1998) for
  test-kernel centring.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.typing import ArrayLike

from dcca_jax.models.base import CorrelationModel, register_model
from dcca_jax.models.cca import CCAParams, fit_linear_cca
from dcca_jax.linalg import as_float_array, check_views

__all__ = [
    "KERNELS",
    "SOLVERS",
    "KernelSpec",
    "kernel_matrix",
    "median_bandwidth",
    "center_kernel",
    "center_test_kernel",
    "fit_exact_kcca",
    "nystrom_features",
    "rff_features",
    "kcca_config",
    "KernelCCA",
]

KERNELS = ("rbf", "poly", "linear")
SOLVERS = ("exact", "nystrom", "rff")


class KernelSpec(tuple):
    """``(kind, bandwidth, gamma, coef0, degree)``: a resolved kernel (hashable, static under jit).

    ``rbf``: :math:`k(x, y) = \\exp(-\\|x-y\\|^2 / (2\\sigma^2))` with ``bandwidth`` = :math:`\\sigma`;
    ``poly``: :math:`(\\gamma x^\\top y + c_0)^{p}`; ``linear``: :math:`x^\\top y`.
    """

    def __new__(cls, kind: str, bandwidth: float = 1.0, gamma: float = 1.0, coef0: float = 1.0, degree: int = 2):
        if kind not in KERNELS:
            raise ValueError(f"unknown kernel {kind!r}; choose one of {KERNELS}.")
        if kind == "rbf" and not (bandwidth > 0 and math.isfinite(bandwidth)):
            raise ValueError(f"the RBF bandwidth must be positive and finite; got {bandwidth}.")
        if kind == "poly" and (int(degree) != degree or degree < 1):
            raise ValueError(f"the polynomial degree must be a positive integer; got {degree}.")
        return super().__new__(cls, (kind, float(bandwidth), float(gamma), float(coef0), int(degree)))

    kind = property(lambda self: self[0])
    bandwidth = property(lambda self: self[1])
    gamma = property(lambda self: self[2])
    coef0 = property(lambda self: self[3])
    degree = property(lambda self: self[4])


def _kernel_block(xb: jax.Array, y: jax.Array, y_sq: jax.Array, spec: KernelSpec) -> jax.Array:
    g = xb @ y.T
    if spec.kind == "linear":
        return g
    if spec.kind == "poly":
        return (spec.gamma * g + spec.coef0) ** spec.degree
    d2 = jnp.maximum(jnp.sum(xb * xb, axis=1, keepdims=True) + y_sq[None, :] - 2.0 * g, 0.0)
    return jnp.exp(d2 * (-0.5 / spec.bandwidth**2))


@functools.partial(jax.jit, static_argnames=("spec", "chunk_size"))
def _kernel_matrix(x, y, *, spec, chunk_size):
    n, d = x.shape
    nb = -(-n // chunk_size)
    xp = jnp.pad(x, ((0, nb * chunk_size - n), (0, 0))).reshape(nb, chunk_size, d)
    y_sq = jnp.sum(y * y, axis=1)
    out = jax.lax.map(lambda xb: _kernel_block(xb, y, y_sq, spec), xp)
    return out.reshape(nb * chunk_size, y.shape[0])[:n]


def kernel_matrix(x: ArrayLike, y: ArrayLike, *, spec: KernelSpec, chunk_size: int = 1024) -> jax.Array:
    r"""The (uncentred) kernel matrix :math:`K_{ij} = k(x_i, y_j)`, ``chunk_size`` rows at a time.

    The RBF kernel uses :math:`\|x\|^2 + \|y\|^2 - 2x^\top y` (clamped at 0), so a chunk needs
    ``chunk_size x m`` memory, never ``chunk_size x m x d``.

    Args:
      x: ``(n, d)``; y: ``(m, d)``.
      spec: the kernel (:class:`KernelSpec`).
      chunk_size: rows of ``x`` per block.

    Returns:
      ``(n, m)`` kernel matrix in the promoted dtype of ``x`` and ``y``.
    """
    x = as_float_array(x, name="x")
    y = as_float_array(y, name="y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same number of features; got shapes {x.shape} and {y.shape}.")
    dtype = jnp.promote_types(x.dtype, y.dtype)
    chunk = int(max(1, min(chunk_size, x.shape[0])))
    return _kernel_matrix(x.astype(dtype), y.astype(dtype), spec=spec, chunk_size=chunk)


def median_bandwidth(x: ArrayLike, *, subsample: int = 1000, seed: int = 0) -> float:
    r"""Median heuristic: :math:`\sigma = \mathrm{median}_{i<j}\|x_i - x_j\|` on a seeded subsample.

    Args:
      x: ``(n, d)``.
      subsample: at most this many rows (drawn without replacement with ``seed``) enter the median.

    Returns:
      The bandwidth as a Python float (positive).

    Raises:
      ValueError: when all sampled rows coincide (the median distance is 0).
    """
    x = np.asarray(as_float_array(x, name="x"), dtype=np.float64)
    n = x.shape[0]
    if n > subsample:
        x = x[np.random.default_rng(seed).choice(n, subsample, replace=False)]
    sq = np.sum(x * x, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    iu = np.triu_indices(x.shape[0], k=1)
    med = float(np.sqrt(np.median(d2[iu]))) if iu[0].size else 0.0
    if not med > 0:
        raise ValueError(
            f"median heuristic failed: the median pairwise distance of x (shape {x.shape}) is {med}; "
            "pass the RBF bandwidth explicitly."
        )
    return med


@jax.jit
def _center(k):
    col = k.mean(0)
    row = k.mean(1)
    mu = col.mean()
    kc = k - col[None, :] - row[:, None] + mu
    return 0.5 * (kc + kc.T), col, mu


def center_kernel(k: ArrayLike):
    r"""Feature-space centring :math:`\tilde K = HKH`, :math:`H = I - \tfrac1n\mathbf 1\mathbf 1^\top`.

    Returns:
      ``(k_centred (n, n) symmetrised, col_means (n,), grand_mean ())``; the last two centre test kernels.
    """
    return _center(as_float_array(k, name="k"))


def center_test_kernel(k_test: ArrayLike, col_means: ArrayLike, grand_mean: ArrayLike) -> jax.Array:
    r"""Centres a test kernel :math:`K_{*}` (``m x n``, rows = new points) with the training statistics.

    .. math::
        \tilde K_* = K_* - \mathbf 1\bar k^\top - \tfrac1n K_*\mathbf 1\mathbf 1^\top + \bar{\bar k}

    where :math:`\bar k` are the training kernel's column means and :math:`\bar{\bar k}` its grand
    mean: the inner products of the new points' centred feature vectors with the centred training ones.
    """
    k_test = as_float_array(k_test, name="k_test")
    return k_test - jnp.asarray(col_means)[None, :] - k_test.mean(1, keepdims=True) + grand_mean


def _jitter(kc: jax.Array) -> jax.Array:
    # Relative jitter: enough for a Cholesky of a PSD matrix with a null space in the working precision.
    eps = jnp.finfo(kc.dtype).eps
    return 10.0 * eps * kc.shape[0] * jnp.maximum(jnp.max(jnp.diagonal(kc)), jnp.finfo(kc.dtype).tiny)


@functools.partial(jax.jit, static_argnames=("n_components",))
def _exact_core(kc_v, kc_s, ridge_v, ridge_s, *, n_components):
    n = kc_v.shape[0]
    eye = jnp.eye(n, dtype=kc_v.dtype)
    solve = jax.scipy.linalg.solve_triangular

    def factor(kc, ridge):
        jit = _jitter(kc)
        g = jnp.linalg.cholesky(kc + jit * eye)
        c = (n - 1) * ridge
        gtg = g.T @ g
        cc = jnp.linalg.cholesky(0.5 * (gtg + gtg.T) + c * eye)
        a = solve(cc, g.T, lower=True).T  # G C^{-T}
        return a, jit + c

    a_v, shift_v = factor(kc_v, ridge_v)
    a_s, shift_s = factor(kc_s, ridge_s)
    t = a_v.T @ a_s
    # Top-k singular triplets of T from the eigendecomposition of T T^T (LAPACK's symmetric
    # eigensolver is 2x faster than its SVD here); the squared values lose accuracy only for
    # near-zero correlations, which are never among the components kept.
    w, u = jnp.linalg.eigh(0.5 * (t @ t.T + (t @ t.T).T))
    k = n_components
    w, u = w[::-1][:k], u[:, ::-1][:, :k]
    rho = jnp.sqrt(jnp.maximum(w, 0.0))
    safe = jnp.maximum(rho, jnp.finfo(rho.dtype).tiny)
    v = (t.T @ u) / safe
    scale = jnp.sqrt(jnp.asarray(n - 1, kc_v.dtype))
    z_v = scale * (a_v @ u)
    z_s = scale * (a_s @ v)
    alpha = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(kc_v + shift_v * eye), True), z_s) / safe
    beta = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(kc_s + shift_s * eye), True), z_v) / safe
    # Joint sign: the largest-magnitude dual coefficient of each view-v pair is positive.
    idx = jnp.argmax(jnp.abs(alpha), axis=0)
    sign = jnp.sign(alpha[idx, jnp.arange(k)])
    sign = jnp.where(sign == 0, 1.0, sign).astype(alpha.dtype)
    return alpha * sign, beta * sign, rho


def fit_exact_kcca(kc_v: ArrayLike, kc_s: ArrayLike, *, n_components: int, ridge_v: float, ridge_s: float):
    r"""Exact regularised KCCA from two centred training kernels (see the module docstring).

    Args:
      kc_v, kc_s: ``(n, n)`` centred kernels (:func:`center_kernel`).
      n_components: ``k``, ``1 <= k <= n - 1``.
      ridge_v, ridge_s: ridges ``r > 0`` in feature-covariance units.

    Returns:
      ``(alpha (n, k), beta (n, k), correlations (k,))``: the projection of new data is
      ``center_test_kernel(K(x, X), ...) @ alpha``; correlations descend.
    """
    kc_v = as_float_array(kc_v, name="kc_v")
    kc_s = as_float_array(kc_s, name="kc_s").astype(kc_v.dtype)
    n = kc_v.shape[0]
    if kc_v.shape != (n, n) or kc_s.shape != (n, n):
        raise ValueError(f"kc_v and kc_s must be square kernels of the same size; got {kc_v.shape} and {kc_s.shape}.")
    if not (isinstance(n_components, (int, np.integer)) and 1 <= n_components <= n - 1):
        raise ValueError(
            f"n_components={n_components!r} must be an integer between 1 and n - 1 = {n - 1} "
            "(the rank of a centred kernel on n samples)."
        )
    if not (ridge_v > 0 and ridge_s > 0):
        raise ValueError(
            f"kernel CCA needs positive ridges (got ridge_v={ridge_v}, ridge_s={ridge_s}): unregularised KCCA "
            "correlates any two views perfectly. Try 1e-3 and select on held-out data."
        )
    alpha, beta, rho = _exact_core(
        kc_v, kc_s, jnp.asarray(ridge_v, kc_v.dtype), jnp.asarray(ridge_s, kc_v.dtype), n_components=int(n_components)
    )
    if not bool(jnp.all(jnp.isfinite(alpha)) & jnp.all(jnp.isfinite(beta))):
        raise ValueError(
            f"exact KCCA produced non-finite coefficients (n={n}, dtype {kc_v.dtype}, ridges {ridge_v}, {ridge_s}): "
            "a kernel is not positive semi-definite in this precision. Use float64, a larger ridge, or another kernel."
        )
    return alpha, beta, rho


@functools.partial(jax.jit, static_argnames=("spec", "chunk_size"))
def _nystrom_whitener(landmarks, *, spec, chunk_size):
    k_ll = _kernel_matrix(landmarks, landmarks, spec=spec, chunk_size=chunk_size)
    k_ll = 0.5 * (k_ll + k_ll.T)
    m = k_ll.shape[0]
    r = jnp.linalg.cholesky(k_ll + _jitter(k_ll) * jnp.eye(m, dtype=k_ll.dtype))  # lower: K = R R^T
    return jax.scipy.linalg.solve_triangular(r, jnp.eye(m, dtype=k_ll.dtype), lower=True).T  # R^{-T}


def nystrom_features(x: ArrayLike, landmarks: ArrayLike, whitener: ArrayLike, *, spec: KernelSpec, chunk_size: int = 1024):
    r"""Nystrom features :math:`\Phi = K(X, L)\,R^{-\top}` with :math:`K_{LL} + \epsilon I = RR^\top`.

    Returns ``(n, m)`` features with :math:`\Phi\Phi^\top = K_{XL}(K_{LL}+\epsilon I)^{-1}K_{LX}`.
    """
    return kernel_matrix(x, landmarks, spec=spec, chunk_size=chunk_size) @ jnp.asarray(whitener)


@jax.jit
def _rff(x, w, b):
    return jnp.sqrt(2.0 / w.shape[1]).astype(x.dtype) * jnp.cos(x @ w + b)


def rff_features(x: ArrayLike, w: ArrayLike, b: ArrayLike) -> jax.Array:
    r"""Random Fourier features :math:`\sqrt{2/D}\cos(XW + b)` of the RBF kernel (Rahimi & Recht 2007)."""
    x = as_float_array(x, name="x")
    return _rff(x, jnp.asarray(w, x.dtype), jnp.asarray(b, x.dtype))


def kcca_config() -> ml_collections.ConfigDict:
    """Hyperparameters of :class:`KernelCCA` with their defaults (see the class docstring)."""
    cfg = ml_collections.ConfigDict()
    cfg.n_components = 10
    for v in ("v", "s"):
        cfg[f"kernel_{v}"] = "rbf"
        cfg[f"bandwidth_{v}"] = None
        cfg[f"bandwidth_scale_{v}"] = 1.0
        cfg[f"gamma_{v}"] = None
        cfg[f"coef0_{v}"] = 1.0
        cfg[f"degree_{v}"] = 2
        cfg[f"ridge_{v}"] = 1e-3
    cfg.solver = "exact"
    cfg.n_landmarks = 1000
    cfg.n_features = 2000
    cfg.median_subsample = 1000
    cfg.seed = 0
    cfg.chunk_size = 1024
    return cfg


_VIEW_FIELDS = ("kernel", "bandwidth", "bandwidth_scale", "gamma", "coef0", "degree", "ridge")


@register_model
class KernelCCA(CorrelationModel):
    """Regularised kernel CCA with the common model API; see the module docstring for the formulation.

    Config (``_v`` / ``_s`` per view):
      ``n_components``; ``kernel_v/_s`` in ``("rbf", "poly", "linear")``; ``bandwidth_v/_s`` (RBF sigma;
      ``None`` = median heuristic on ``median_subsample`` rows drawn with ``seed``, times
      ``bandwidth_scale_v/_s``); ``gamma_v/_s`` (poly; ``None`` = ``1/d``), ``coef0_v/_s``, ``degree_v/_s``;
      ``ridge_v/_s`` (> 0, feature-covariance units; KCCA with the linear kernel equals
      :class:`~dcca_jax.cca.LinearCCA` with the same ridges); ``solver`` in ``("exact", "nystrom", "rff")``;
      ``n_landmarks`` (Nystrom), ``n_features`` (RFF), ``seed``, ``chunk_size`` (kernel rows per block).
    """

    name = "kernel_cca"

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        return kcca_config()

    # ------------------------------------------------------------ config checks
    def _validate_config(self, shapes) -> None:
        c = self.config
        if c.solver not in SOLVERS:
            raise ValueError(f"unknown solver {c.solver!r}; choose one of {SOLVERS}.")
        for v in ("v", "s"):
            if c[f"kernel_{v}"] not in KERNELS:
                raise ValueError(f"unknown kernel_{v} {c[f'kernel_{v}']!r}; choose one of {KERNELS}.")
            if not c[f"ridge_{v}"] > 0:
                raise ValueError(
                    f"ridge_{v}={c[f'ridge_{v}']} must be > 0: unregularised kernel CCA correlates any two views "
                    "perfectly. Try 1e-3 and select on held-out data."
                )
            if c.solver == "rff" and c[f"kernel_{v}"] != "rbf":
                raise ValueError(f"solver 'rff' approximates the RBF kernel only; kernel_{v} is {c[f'kernel_{v}']!r}.")
        n = shapes[0][0]
        if c.solver == "exact":
            limit, what = n - 1, "n - 1 (the rank of a centred kernel)"
        elif c.solver == "nystrom":
            if not 1 <= c.n_landmarks <= n:
                raise ValueError(f"n_landmarks={c.n_landmarks} must be between 1 and n={n} (views {shapes}).")
            limit, what = c.n_landmarks, "n_landmarks"
        else:
            if c.n_features < 1:
                raise ValueError(f"n_features={c.n_features} must be positive.")
            limit, what = c.n_features, "n_features"
        k = c.n_components
        if not (isinstance(k, (int, np.integer)) and 1 <= k <= limit):
            raise ValueError(f"n_components={k!r} must be an integer between 1 and {what} = {limit} for views {shapes}.")

    def _resolve_spec(self, x: jax.Array, v: str) -> KernelSpec:
        c = self.config
        kind = c[f"kernel_{v}"]
        bw = c[f"bandwidth_{v}"]
        if kind == "rbf" and bw is None:
            bw = median_bandwidth(x, subsample=c.median_subsample, seed=c.seed) * c[f"bandwidth_scale_{v}"]
        gamma = c[f"gamma_{v}"]
        if gamma is None:
            gamma = 1.0 / x.shape[1]
        return KernelSpec(kind, bandwidth=bw if bw is not None else 1.0, gamma=gamma, coef0=c[f"coef0_{v}"], degree=c[f"degree_{v}"])

    # ------------------------------------------------------------ fit
    def _fit(self, x_v, x_s, **kwargs):
        if kwargs:
            raise TypeError(f"KernelCCA.fit takes no extra arguments; got {sorted(kwargs)}.")
        self._validate_config((x_v.shape, x_s.shape))
        c = self.config
        self.specs = (self._resolve_spec(x_v, "v"), self._resolve_spec(x_s, "s"))
        logging.info("KernelCCA: solver=%s n=%d kernels=%s", c.solver, x_v.shape[0], self.specs)
        if c.solver == "exact":
            self._fit_exact(x_v, x_s)
        else:
            self._fit_features(x_v, x_s)

    def _fit_exact(self, x_v, x_s):
        c = self.config
        kc, cols, means = [], [], []
        for x, spec in zip((x_v, x_s), self.specs):
            kct, col, mu = _center(kernel_matrix(x, x, spec=spec, chunk_size=c.chunk_size))
            kc.append(kct)
            cols.append(col)
            means.append(mu)
        alpha, beta, rho = fit_exact_kcca(
            kc[0], kc[1], n_components=int(c.n_components), ridge_v=c.ridge_v, ridge_s=c.ridge_s
        )
        del kc
        self.state = {
            "x_train_v": x_v, "x_train_s": x_s,
            "col_means_v": cols[0], "col_means_s": cols[1],
            "grand_mean_v": means[0], "grand_mean_s": means[1],
            "alpha_v": alpha, "alpha_s": beta, "correlations": rho,
        }

    def _fit_features(self, x_v, x_s):
        c = self.config
        rng = np.random.default_rng(c.seed)
        n = x_v.shape[0]
        self.state = {}
        feats = []
        for v, x, spec in zip(("v", "s"), (x_v, x_s), self.specs):
            if c.solver == "nystrom":
                idx = np.sort(rng.choice(n, int(c.n_landmarks), replace=False))
                lm = x[idx]
                wh = _nystrom_whitener(lm, spec=spec, chunk_size=int(min(c.chunk_size, lm.shape[0])))
                if not bool(jnp.all(jnp.isfinite(wh))):
                    raise ValueError(f"the landmark kernel of view {v} is not positive definite in {x.dtype}; use float64.")
                self.state[f"landmarks_{v}"], self.state[f"whitener_{v}"] = lm, wh
                feats.append(nystrom_features(x, lm, wh, spec=spec, chunk_size=c.chunk_size))
            else:
                w = rng.standard_normal((x.shape[1], int(c.n_features))) / spec.bandwidth
                b = rng.uniform(0.0, 2.0 * np.pi, int(c.n_features))
                self.state[f"rff_w_{v}"] = jnp.asarray(w, x.dtype)
                self.state[f"rff_b_{v}"] = jnp.asarray(b, x.dtype)
                feats.append(rff_features(x, w, b))
        params = fit_linear_cca(feats[0], feats[1], n_components=int(c.n_components), ridge_v=c.ridge_v, ridge_s=c.ridge_s)
        for f in ("mean_v", "mean_s", "proj_v", "proj_s", "correlations"):
            self.state[f"cca_{f}" if f != "correlations" else f] = getattr(params, f)

    # ------------------------------------------------------------ transform
    def _features(self, x, v):
        spec = self.specs[0 if v == "v" else 1]
        st, c = self.state, self.config
        if c.solver == "nystrom":
            return nystrom_features(x, st[f"landmarks_{v}"], st[f"whitener_{v}"], spec=spec, chunk_size=c.chunk_size)
        return rff_features(x, st[f"rff_w_{v}"], st[f"rff_b_{v}"])

    def _project_view(self, x, v):
        st, c = self.state, self.config
        x = x.astype(st[f"x_train_{v}" if c.solver == "exact" else "correlations"].dtype)
        if c.solver == "exact":
            spec = self.specs[0 if v == "v" else 1]
            k = kernel_matrix(x, st[f"x_train_{v}"], spec=spec, chunk_size=c.chunk_size)
            return center_test_kernel(k, st[f"col_means_{v}"], st[f"grand_mean_{v}"]) @ st[f"alpha_{v}"]
        return (self._features(x, v) - st[f"cca_mean_{v}"]) @ st[f"cca_proj_{v}"]

    def _transform(self, x_v, x_s):
        z_v = self._project_view(x_v, "v") if x_v is not None else None
        z_s = self._project_view(x_s, "s") if x_s is not None else None
        return z_v, z_s

    @property
    def correlations(self) -> jax.Array:
        """Training canonical correlations (of the regularised problem), descending."""
        self._check_fitted()
        return self.state["correlations"]

    @property
    def cca_params(self) -> CCAParams | None:
        """The linear CCA on the explicit features (``nystrom``/``rff`` solvers), else ``None``."""
        if self.config.solver == "exact":
            return None
        st = self.state
        return CCAParams(st["cca_mean_v"], st["cca_mean_s"], st["cca_proj_v"], st["cca_proj_s"], st["correlations"])

    # ------------------------------------------------------------ persistence
    def _state(self):
        out = {k: np.asarray(v) for k, v in self.state.items()}
        for i, v in enumerate(("v", "s")):
            spec = self.specs[i]
            out[f"spec_{v}"] = np.asarray([spec.bandwidth, spec.gamma, spec.coef0, spec.degree], np.float64)
        return out

    def _set_state(self, arrays):
        arrays = dict(arrays)
        specs = []
        for v in ("v", "s"):
            bw, gamma, coef0, degree = arrays.pop(f"spec_{v}").tolist()
            specs.append(KernelSpec(self.config[f"kernel_{v}"], bandwidth=bw, gamma=gamma, coef0=coef0, degree=int(degree)))
        self.specs = tuple(specs)
        self.state = {k: jnp.asarray(v) for k, v in arrays.items()}
