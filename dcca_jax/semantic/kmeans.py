r"""k-means in JAX: k-means++ seeding, restarts, empty-cluster re-seeding, jitted Lloyd iterations.

Used by :mod:`dcca_jax.semantic.deepwords` to cluster skip-gram word vectors into the deep-textual-word vocabulary
(paper section 2), but generic: any ``(n, d)`` float array.

Objective (the inertia, minimised):

.. math::

    J(C, a) = \sum_{i=1}^{n} \lVert x_i - c_{a_i} \rVert_2^2 .

Every Lloyd iteration (assign every point to its nearest centroid, move every non-empty centroid to the
mean of its points) cannot increase J. An empty cluster keeps no points, so it is re-seeded at the point
that is currently farthest from its own centroid (the j-th empty cluster takes the j-th farthest point);
that move cannot increase J either, because the point's distance drops to zero and no other assignment is
forced to change.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "KMeansResult",
    "pairwise_sq_distances",
    "kmeans_plus_plus",
    "assign",
    "lloyd_step",
    "lloyd",
    "kmeans",
]


class KMeansResult(NamedTuple):
    """Outcome of :func:`kmeans` (or of one :func:`lloyd` run).

    Attributes:
      centroids: (k, d) cluster centres.
      labels: (n,) int32 index of each point's centroid.
      inertia: () sum of squared distances of points to their centroids.
      n_iter: () int32 number of Lloyd iterations run.
      converged: () bool, True when the run stopped on the tolerance or on unchanged assignments, False
        when it hit ``max_iter``.
      inertia_history: (max_iter + 1,) inertia before each iteration and after the last (NaN past the end).
      n_reseeded: () int32 total empty clusters re-seeded during the run.
    """

    centroids: jax.Array
    labels: jax.Array
    inertia: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    inertia_history: jax.Array
    n_reseeded: jax.Array


def _check_x(x: jax.Array, k: int) -> None:
    if x.ndim != 2:
        raise ValueError(f"k-means expects x of shape (n, d); got shape {x.shape}.")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(
            f"k-means needs 1 <= k <= n; got k={k} for x of shape {x.shape}. Use fewer clusters or more points."
        )


def pairwise_sq_distances(x: ArrayLike, c: ArrayLike) -> jax.Array:
    r"""Squared Euclidean distances between the rows of x and of c.

    .. math:: D_{ij} = \lVert x_i \rVert^2 - 2 x_i^\top c_j + \lVert c_j \rVert^2, \quad D \ge 0

    Args:
      x: (n, d) points.
      c: (k, d) centroids.

    Returns:
      (n, k) squared distances, clipped at 0 (the expansion can go slightly negative in rounding).
    """
    x = jnp.asarray(x)
    c = jnp.asarray(c)
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1]:
        raise ValueError(f"pairwise_sq_distances needs x (n, d) and c (k, d); got {x.shape} and {c.shape}.")
    d = jnp.sum(x * x, axis=1)[:, None] - 2.0 * x @ c.T + jnp.sum(c * c, axis=1)[None, :]
    return jnp.maximum(d, 0.0)


def assign(x: ArrayLike, centroids: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Nearest-centroid assignment (ties go to the lowest index).

    Args:
      x: (n, d) points.
      centroids: (k, d).

    Returns:
      labels (n,) int32 and the squared distance of each point to its centroid (n,).
    """
    d = pairwise_sq_distances(x, centroids)
    labels = jnp.argmin(d, axis=1).astype(jnp.int32)
    return labels, jnp.take_along_axis(d, labels[:, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=("k",))
def kmeans_plus_plus(key: jax.Array, x: ArrayLike, *, k: int) -> jax.Array:
    r"""k-means++ seeding (Arthur and Vassilvitskii, 2007).

    The first centre is a uniformly drawn point; each next centre is drawn with probability proportional to
    :math:`D(x)^2`, the squared distance of x to its nearest centre chosen so far. When every remaining
    point coincides with a centre (all :math:`D(x)^2 = 0`) the draw falls back to uniform.

    Args:
      key: a jax.random key.
      x: (n, d) points.
      k: number of centres (static).

    Returns:
      (k, d) initial centroids, each a row of x.

    References:
      D. Arthur and S. Vassilvitskii, "k-means++: the advantages of careful seeding", SODA 2007.
    """
    x = jnp.asarray(x)
    _check_x(x, k)
    n = x.shape[0]
    keys = jax.random.split(key, k)
    first = jax.random.randint(keys[0], (), 0, n)
    centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
    d2 = jnp.sum((x - x[first]) ** 2, axis=1)

    def body(j, carry):
        centres, d2 = carry
        total = jnp.sum(d2)
        p = jnp.where(total > 0, d2 / jnp.where(total > 0, total, 1.0), jnp.full((n,), 1.0 / n, x.dtype))
        idx = jax.random.choice(keys[j], n, p=p)
        centres = centres.at[j].set(x[idx])
        d2 = jnp.minimum(d2, jnp.sum((x - x[idx]) ** 2, axis=1))
        return centres, d2

    centres, _ = jax.lax.fori_loop(1, k, body, (centres, d2))
    return centres


def lloyd_step(x: ArrayLike, centroids: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One Lloyd iteration with empty-cluster re-seeding.

    Assign every point to its nearest centroid, then move each non-empty centroid to the mean of its
    points; the j-th empty cluster (in index order) moves to the j-th farthest point from its own centroid.

    Args:
      x: (n, d) points.
      centroids: (k, d) current centroids.

    Returns:
      new_centroids (k, d), labels (n,) of the assignment step, inertia () of that assignment against the
      *old* centroids, and the number of re-seeded empty clusters ().
    """
    x = jnp.asarray(x)
    centroids = jnp.asarray(centroids)
    k = centroids.shape[0]
    labels, d2 = assign(x, centroids)
    one_hot = jax.nn.one_hot(labels, k, dtype=x.dtype)  # (n, k)
    counts = jnp.sum(one_hot, axis=0)
    sums = one_hot.T @ x
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    empty = counts == 0
    # The j-th empty cluster takes the j-th farthest point; at most k - 1 clusters can be empty and n >= k.
    far_order = jnp.argsort(-d2)
    rank = jnp.cumsum(empty) - 1
    donors = x[far_order[jnp.clip(rank, 0, x.shape[0] - 1)]]
    new = jnp.where(empty[:, None], donors, means)
    return new, labels, jnp.sum(d2), jnp.sum(empty).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("max_iter",))
def lloyd(x: ArrayLike, init: ArrayLike, *, max_iter: int = 300, tol: float = 1e-4) -> KMeansResult:
    r"""Lloyd iterations from given centroids until convergence.

    Stops when the assignments no longer change, or when the total squared centroid shift
    :math:`\sum_j \lVert c_j^{t+1} - c_j^t \rVert^2` is at most ``tol`` times the mean per-feature variance of x
    (scikit-learn's convention), or after ``max_iter`` iterations.

    Args:
      x: (n, d) points.
      init: (k, d) initial centroids.
      max_iter: maximum number of iterations (static).
      tol: relative tolerance on the centroid shift.

    Returns:
      KMeansResult; ``labels`` and ``inertia`` are those of the final centroids.
    """
    x = jnp.asarray(x)
    init = jnp.asarray(init, x.dtype)
    if init.ndim != 2 or init.shape[1] != x.shape[1]:
        raise ValueError(f"lloyd needs init of shape (k, {x.shape[1]}) for x of shape {x.shape}; got {init.shape}.")
    _check_x(x, init.shape[0])
    tol_abs = tol * jnp.mean(jnp.var(x, axis=0))
    history0 = jnp.full((max_iter + 1,), jnp.nan, x.dtype)
    labels0 = jnp.full((x.shape[0],), -1, jnp.int32)

    def cond(state):
        it, _, _, _, done, _, _ = state
        return jnp.logical_and(it < max_iter, jnp.logical_not(done))

    def body(state):
        it, c, labels_prev, history, _, _, n_re = state
        new_c, labels, inertia, n_empty = lloyd_step(x, c)
        history = history.at[it].set(inertia)
        shift = jnp.sum((new_c - c) ** 2)
        done = jnp.logical_or(jnp.all(labels == labels_prev), shift <= tol_abs)
        # Unchanged labels with no re-seeding mean new_c == c: nothing is left to do.
        return it + 1, new_c, labels, history, done, shift, n_re + n_empty

    state = (jnp.int32(0), init, labels0, history0, jnp.bool_(False), jnp.asarray(jnp.inf, x.dtype), jnp.int32(0))
    it, c, _, history, done, _, n_re = jax.lax.while_loop(cond, body, state)
    labels, d2 = assign(x, c)
    inertia = jnp.sum(d2)
    history = history.at[it].set(inertia)
    return KMeansResult(c, labels, inertia, it, done, history, n_re)


@functools.partial(jax.jit, static_argnames=("k", "n_init", "max_iter"))
def _kmeans_restarts(key, x, *, k, n_init, max_iter, tol):
    keys = jax.random.split(key, n_init)
    inits = jax.vmap(lambda kk: kmeans_plus_plus(kk, x, k=k))(keys)
    runs = jax.vmap(lambda c0: lloyd(x, c0, max_iter=max_iter, tol=tol))(inits)
    best = jnp.argmin(runs.inertia)
    return jax.tree.map(lambda a: a[best], runs), runs.inertia


def kmeans(
    x: ArrayLike,
    *,
    k: int,
    key: jax.Array | int = 0,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
    init: ArrayLike | None = None,
) -> KMeansResult:
    r"""k-means clustering: the best of ``n_init`` k-means++-seeded Lloyd runs.

    .. math:: \min_{C, a} \sum_i \lVert x_i - c_{a_i} \rVert_2^2

    The restarts run in parallel (``vmap``) and the run with the lowest final inertia is kept. With
    ``init`` given, a single Lloyd run starts from those centroids (no seeding, no restarts).

    Args:
      x: (n, d) float points.
      k: number of clusters, 1 <= k <= n.
      key: jax.random key or an int seed.
      n_init: number of k-means++ restarts.
      max_iter: maximum Lloyd iterations per run.
      tol: relative tolerance on the centroid shift (see :func:`lloyd`).
      init: optional (k, d) initial centroids.

    Returns:
      KMeansResult of the best run.

    References:
      S. Lloyd, "Least squares quantization in PCM", IEEE Trans. Inf. Theory 28(2), 1982;
      D. Arthur and S. Vassilvitskii, "k-means++", SODA 2007.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    _check_x(x, k)
    if not bool(jnp.all(jnp.isfinite(x))):
        bad = np.flatnonzero(~np.all(np.isfinite(np.asarray(x)), axis=1))
        raise ValueError(f"k-means input has non-finite values in rows {bad[:10].tolist()}; clean or drop them.")
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"k-means needs n_init >= 1 and max_iter >= 1; got n_init={n_init}, max_iter={max_iter}.")
    if init is not None:
        init = jnp.asarray(init, x.dtype)
        if init.shape != (k, x.shape[1]):
            raise ValueError(f"k-means init must have shape ({k}, {x.shape[1]}); got {init.shape}.")
        return lloyd(x, init, max_iter=max_iter, tol=tol)
    if isinstance(key, int):
        key = jax.random.key(key)
    best, _ = _kmeans_restarts(key, x, k=k, n_init=n_init, max_iter=max_iter, tol=tol)
    return best
