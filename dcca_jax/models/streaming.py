"""Streaming linear CCA: covariance statistics accumulated over chunks in bounded memory.

Linear CCA needs only the count, the mean and the centred cross-product matrix (co-moment) of the
concatenated views ``[x_v, x_s]``. These are accumulated chunk by chunk, so ``n`` in the millions fits
in ``O(chunk * d + d^2)`` memory, from in-memory arrays, from memory-mapped ``.npy`` files or from any
iterator of chunks (one per host in a multi-host run, see :mod:`dcca_jax.distributed`).

Numerics: each chunk is shifted by a fixed reference row (the first chunk's mean, in float64) before
its statistics are computed in the chunk's dtype (float32 input stays float32 on the accelerator), and
chunk statistics are merged on the host in float64 with the pairwise update of Chan, Golub and
LeVeque. Neither step forms ``sum x x^T - n mu mu^T``, whose cancellation loses all precision in
float32 once ``n`` is large or the mean is far from zero.
"""
from __future__ import annotations

import mmap
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.typing import ArrayLike

from dcca_jax.models.base import register_model
from dcca_jax.models.cca import CCAParams, LinearCCA, cca_config, cca_from_covariances, check_components

__all__ = [
    "CovarianceStats",
    "empty_stats",
    "chunk_stats",
    "merge_stats",
    "stats_from_chunks",
    "stats_from_arrays",
    "stats_from_npy",
    "iter_array_chunks",
    "iter_npy_chunks",
    "fit_from_stats",
    "fit_streaming_cca",
    "streaming_cca_config",
    "StreamingLinearCCA",
]

DEFAULT_CHUNK = 65536
_MIN_BUCKET = 256


class CovarianceStats(flax.struct.PyTreeNode):
    r"""Sufficient statistics of the concatenated views ``x = [x_v, x_s]`` (``d = d_v + d_s`` columns).

    Attributes:
      count: number of rows seen (float64 scalar, exact up to 2**53).
      mean: ``(d,)`` float64 running mean :math:`\mu`.
      comoment: ``(d, d)`` float64 centred cross-product :math:`M = \sum_i (x_i-\mu)(x_i-\mu)^\top`.
      d_v: number of visual columns (the first ``d_v`` of ``x``).
    """

    count: np.ndarray
    mean: np.ndarray
    comoment: np.ndarray
    d_v: int = flax.struct.field(pytree_node=False)

    @property
    def d_s(self) -> int:
        return int(self.mean.shape[0]) - self.d_v

    def covariances(self, *, ridge_v: float = 0.0, ridge_s: float = 0.0):
        r"""The three covariances of Eq. 4 from the statistics (unbiased, ``1/(n-1)``).

        Returns:
          ``(s_vv + r_v I (d_v, d_v), s_ss + r_s I (d_s, d_s), s_vs (d_v, d_s))`` as float64 numpy arrays.
        """
        n = float(self.count)
        if n < 2:
            raise ValueError(f"need at least 2 rows to estimate a covariance; the statistics hold {n:.0f}.")
        c = np.asarray(self.comoment, np.float64) / (n - 1.0)
        c = 0.5 * (c + c.T)
        dv = self.d_v
        s_vv = c[:dv, :dv] + ridge_v * np.eye(dv)
        s_ss = c[dv:, dv:] + ridge_s * np.eye(self.d_s)
        return s_vv, s_ss, c[:dv, dv:]


def empty_stats(d_v: int, d_s: int) -> CovarianceStats:
    """Statistics of zero rows (the identity of :func:`merge_stats`)."""
    d = d_v + d_s
    return CovarianceStats(
        count=np.float64(0.0), mean=np.zeros(d), comoment=np.zeros((d, d)), d_v=int(d_v)
    )


def merge_stats(a: CovarianceStats, b: CovarianceStats) -> CovarianceStats:
    r"""Pairwise merge of two sets of statistics (Chan, Golub & LeVeque 1979).

    .. math::
        n = n_a + n_b,\quad \delta = \mu_b - \mu_a,\quad \mu = \mu_a + \delta\,n_b/n,\quad
        M = M_a + M_b + \delta\delta^\top\,n_a n_b / n

    Exact in exact arithmetic and stable in floating point (no ``sum x x^T - n mu mu^T``).
    Computed in float64 with numpy; associative and commutative, so chunks, devices and hosts can be
    merged in any order.

    Raises:
      ValueError: the two statistics describe views of different widths.
    """
    if a.mean.shape != b.mean.shape or a.d_v != b.d_v:
        raise ValueError(
            f"cannot merge statistics of views with (d_v, d_s) = ({a.d_v}, {a.d_s}) and ({b.d_v}, {b.d_s})."
        )
    n_a, n_b = float(a.count), float(b.count)
    if n_b == 0:
        return a
    if n_a == 0:
        return b
    n = n_a + n_b
    mean_a = np.asarray(a.mean, np.float64)
    delta = np.asarray(b.mean, np.float64) - mean_a
    mean = mean_a + delta * (n_b / n)
    comoment = np.asarray(a.comoment, np.float64) + np.asarray(b.comoment, np.float64)
    comoment += np.outer(delta, delta * (n_a * n_b / n))
    return CovarianceStats(count=np.float64(n), mean=mean, comoment=comoment, d_v=a.d_v)


@jax.jit
def _shifted_chunk_moments(x, shift, weights):
    # Statistics of the rows with weight 1 (padding rows have weight 0), after subtracting ``shift``;
    # returns (mean of x - shift, centred co-moment), both in x's dtype.
    y = x - shift.astype(x.dtype)
    cnt = jnp.maximum(jnp.sum(weights), 1.0)
    mu = (weights @ y) / cnt
    yc = (y - mu) * weights[:, None]
    return mu, yc.T @ yc


def _bucket_rows(n: int, chunk_size: int) -> int:
    # Pad chunks to a power of two (at most chunk_size) so an iterator with ragged chunks compiles
    # O(log chunk_size) programs, not one per distinct length.
    if n >= chunk_size:
        return n
    b = _MIN_BUCKET
    while b < n:
        b *= 2
    return min(b, chunk_size)


def _validate_chunk(x_v, x_s, *, row0: int, source: str):
    x_v = np.asarray(x_v)
    x_s = np.asarray(x_s)
    if x_v.ndim != 2 or x_s.ndim != 2:
        raise ValueError(
            f"chunks must be 2-D (rows, features); got shapes {x_v.shape} and {x_s.shape} at row {row0} of {source}."
        )
    if x_v.shape[0] != x_s.shape[0]:
        raise ValueError(
            f"x_v and x_s chunks must have the same number of rows; got shapes {x_v.shape} and {x_s.shape} "
            f"at row {row0} of {source}."
        )
    for name, arr in (("x_v", x_v), ("x_s", x_s)):
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
        finite = np.isfinite(arr)
        if not finite.all():
            r, c = np.argwhere(~finite)[0]
            raise ValueError(
                f"{name} of {source} has a non-finite value {arr[r, c]} at row {row0 + r}, column {c}; "
                "clean or impute the features before fitting."
            )
    return x_v, x_s


def chunk_stats(
    x_v: ArrayLike,
    x_s: ArrayLike,
    *,
    shift: np.ndarray | None = None,
    dtype=None,
    pad_to: int | None = None,
) -> CovarianceStats:
    r"""Statistics of one chunk of paired rows.

    The chunk is concatenated to ``x = [x_v, x_s]``, shifted by ``shift`` (default: its own mean in
    float64), and its mean and centred co-moment are computed by one jitted matrix product in
    ``dtype`` (default: the chunks' common floating dtype, float64 only when JAX's x64 mode is on).

    Args:
      x_v: ``(m, d_v)`` rows of the visual view.
      x_s: ``(m, d_s)`` the paired rows of the semantic view.
      shift: optional ``(d,)`` reference row subtracted before the product (keeps float32 accurate).
      dtype: compute dtype of the product.
      pad_to: pad the chunk with zero-weight rows to this many (fixed shapes: one compilation).

    Returns:
      :class:`CovarianceStats` of the ``m`` rows (float64 on the host).
    """
    x_v = np.asarray(x_v)
    x_s = np.asarray(x_s)
    m = x_v.shape[0]
    d_v = x_v.shape[1]
    if m == 0:
        return empty_stats(d_v, x_s.shape[1])
    if dtype is None:
        dtype = np.result_type(x_v.dtype, x_s.dtype)
        if not np.issubdtype(dtype, np.floating):
            dtype = np.float64
        elif np.finfo(dtype).bits < 32:
            dtype = np.float32  # no half-precision sums: float16 co-moments overflow and lose digits
    dtype = jnp.dtype(jax.dtypes.canonicalize_dtype(dtype))
    x = np.concatenate([x_v.astype(dtype, copy=False), x_s.astype(dtype, copy=False)], axis=1)
    if shift is None:
        shift = x.mean(axis=0, dtype=np.float64)
    # Round the shift to the compute dtype first so that adding it back is exact.
    shift = np.asarray(shift).astype(dtype)
    rows = max(m, pad_to or m)
    weights = np.zeros(rows, dtype)
    weights[:m] = 1
    if rows > m:
        x = np.concatenate([x, np.zeros((rows - m, x.shape[1]), dtype)], axis=0)
    mu, m2 = _shifted_chunk_moments(jnp.asarray(x), jnp.asarray(shift), jnp.asarray(weights))
    mean = np.asarray(shift, np.float64) + np.asarray(mu, np.float64)
    return CovarianceStats(
        count=np.float64(m), mean=mean, comoment=np.asarray(m2, np.float64), d_v=int(d_v)
    )


def stats_from_chunks(
    chunks: Iterable[tuple[ArrayLike, ArrayLike]],
    *,
    chunk_size: int = DEFAULT_CHUNK,
    dtype=None,
    source: str = "the chunk iterator",
    feature_map: Callable | None = None,
) -> CovarianceStats:
    """Accumulates :class:`CovarianceStats` over an iterable of ``(x_v_chunk, x_s_chunk)`` pairs.

    Chunks may have any number of rows; they are padded to a power of two (at most ``chunk_size``)
    so ragged chunks reuse a few compiled programs. Memory: one chunk plus two ``(d, d)`` matrices.

    ``feature_map(x_v_chunk, x_s_chunk) -> (f_v, f_s)`` maps each chunk row-wise before its statistics
    are taken (e.g. Nystrom or random Fourier features of ``dcca_jax.models.kcca``): linear CCA on the
    statistics is then approximate kernel CCA in ``O(chunk * m + m^2)`` memory instead of ``O(n m)``.

    Raises:
      ValueError: no rows, chunks of inconsistent widths, non-finite values (naming the global row).
    """
    total = None
    shift = None
    row0 = 0
    for x_v, x_s in chunks:
        x_v, x_s = _validate_chunk(x_v, x_s, row0=row0, source=source)
        m = x_v.shape[0]
        if m == 0:
            continue
        if feature_map is not None:
            x_v, x_s = (np.asarray(f) for f in feature_map(x_v, x_s))
        if total is None:
            total = empty_stats(x_v.shape[1], x_s.shape[1])
            shift = np.concatenate([x_v.mean(0, dtype=np.float64), x_s.mean(0, dtype=np.float64)])
        elif (x_v.shape[1], x_s.shape[1]) != (total.d_v, total.d_s):
            raise ValueError(
                f"chunk at row {row0} of {source} has (mapped) shapes {x_v.shape} and {x_s.shape}; earlier chunks had "
                f"{total.d_v} and {total.d_s} columns."
            )
        st = chunk_stats(x_v, x_s, shift=shift, dtype=dtype, pad_to=_bucket_rows(m, chunk_size))
        total = merge_stats(total, st)
        row0 += m
    if total is None:
        raise ValueError(f"{source} yielded no rows.")
    return total


def iter_array_chunks(x_v, x_s, *, chunk_size: int = DEFAULT_CHUNK, start: int = 0, stop: int | None = None):
    """Yields ``(x_v[i:j], x_s[i:j])`` for consecutive row blocks of ``chunk_size`` in ``[start, stop)``.

    Works with anything that slices like an array (numpy arrays, ``np.memmap``, h5py datasets); only
    one block is materialised at a time. Pages of a memory-mapped array are released after use, so
    the resident memory stays bounded even for files larger than RAM.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive; got {chunk_size}.")
    n = len(x_v)
    if len(x_s) != n:
        raise ValueError(
            f"x_v and x_s must have the same number of rows; got shapes {np.shape(x_v)} and {np.shape(x_s)}."
        )
    stop = n if stop is None else min(stop, n)
    for i in range(start, stop, chunk_size):
        j = min(i + chunk_size, stop)
        yield np.asarray(x_v[i:j]), np.asarray(x_s[i:j])
        _release_pages(x_v, j)
        _release_pages(x_s, j)


def _release_pages(arr, row_stop: int) -> None:
    # Drops the already-read pages of a read-only np.memmap from this process's resident set (the
    # kernel's page cache keeps them); otherwise RSS would grow to the file size. Best effort.
    mm = getattr(arr, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not isinstance(arr, np.memmap) or arr.ndim != 2:
        return
    if not arr.flags.c_contiguous:
        return
    page = mmap.PAGESIZE
    start_in_map = arr.offset % mmap.ALLOCATIONGRANULARITY  # np.memmap maps from an aligned offset
    end = start_in_map + row_stop * arr.strides[0]
    end -= end % page
    if end <= 0:
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED, 0, min(end, len(mm)))
    except (OSError, ValueError, AttributeError):
        pass


def _open_npy(path) -> np.ndarray:
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (expected a 2-D .npy file of features).")
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.ndim != 2:
        raise ValueError(f"{path} holds an array of shape {arr.shape}; expected 2-D (rows, features).")
    return arr


def iter_npy_chunks(path_v, path_s, *, chunk_size: int = DEFAULT_CHUNK, start: int = 0, stop: int | None = None):
    """Row blocks of two ``.npy`` files opened with ``np.load(mmap_mode="r")`` (nothing is loaded whole).

    Raises:
      FileNotFoundError / ValueError: a missing file, a file that is not 2-D, or row counts that differ.
    """
    a, b = _open_npy(path_v), _open_npy(path_s)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{path_v} has shape {a.shape} but {path_s} has shape {b.shape}: row counts differ.")
    yield from iter_array_chunks(a, b, chunk_size=chunk_size, start=start, stop=stop)


def stats_from_arrays(
    x_v, x_s, *, chunk_size: int = DEFAULT_CHUNK, start: int = 0, stop: int | None = None, dtype=None, feature_map=None
):
    """:func:`stats_from_chunks` over row blocks of two arrays (numpy, memmap, or JAX arrays)."""
    return stats_from_chunks(
        iter_array_chunks(x_v, x_s, chunk_size=chunk_size, start=start, stop=stop),
        chunk_size=chunk_size,
        dtype=dtype,
        source="the arrays",
        feature_map=feature_map,
    )


def stats_from_npy(
    path_v, path_s, *, chunk_size: int = DEFAULT_CHUNK, start: int = 0, stop: int | None = None, dtype=None, feature_map=None
):
    """:func:`stats_from_chunks` over two memory-mapped ``.npy`` files (rows ``[start, stop)``)."""
    return stats_from_chunks(
        iter_npy_chunks(path_v, path_s, chunk_size=chunk_size, start=start, stop=stop),
        chunk_size=chunk_size,
        dtype=dtype,
        source=f"{path_v} / {path_s}",
        feature_map=feature_map,
    )


def fit_from_stats(
    stats: CovarianceStats, *, n_components: int, ridge_v: float = 0.0, ridge_s: float = 0.0
) -> CCAParams:
    """Linear CCA (Eq. 4 covariances, Eq. 8 projections) from accumulated statistics.

    The solve runs in JAX's default float dtype (float64 under x64). Equal to
    :func:`dcca_jax.models.cca.fit_linear_cca` on the same rows.

    Raises:
      ValueError: fewer than 2 rows, ``n_components`` out of range, negative ridges, or a singular
        view covariance with zero ridge.
    """
    d_v, d_s = stats.d_v, stats.d_s
    shapes = ((int(stats.count), d_v), (int(stats.count), d_s))
    check_components(n_components, d_v, d_s, shapes)
    if ridge_v < 0 or ridge_s < 0:
        raise ValueError(f"ridges must be >= 0; got ridge_v={ridge_v}, ridge_s={ridge_s}.")
    s_vv, s_ss, s_vs = stats.covariances(ridge_v=ridge_v, ridge_s=ridge_s)
    dtype = jnp.result_type(float)
    p, q, rho = cca_from_covariances(
        jnp.asarray(s_vv, dtype), jnp.asarray(s_ss, dtype), jnp.asarray(s_vs, dtype), n_components=int(n_components)
    )
    if not (bool(jnp.all(jnp.isfinite(p))) and bool(jnp.all(jnp.isfinite(q)))):
        raise ValueError(
            f"a view covariance is singular (views of shapes {shapes[0]} and {shapes[1]}, ridge_v={ridge_v}, "
            f"ridge_s={ridge_s}): constant or duplicated columns, or fewer samples than features. "
            "Use a positive ridge (e.g. 1e-3 times the mean feature variance) or reduce the dimension."
        )
    mean = jnp.asarray(stats.mean, dtype)
    return CCAParams(mean_v=mean[:d_v], mean_s=mean[d_v:], proj_v=p, proj_s=q, correlations=rho)


def _is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def fit_streaming_cca(
    x_v=None,
    x_s=None,
    *,
    chunks: Iterable[tuple[ArrayLike, ArrayLike]] | Iterator | None = None,
    n_components: int,
    ridge_v: float = 0.0,
    ridge_s: float = 0.0,
    chunk_size: int = DEFAULT_CHUNK,
    dtype=None,
    feature_map: Callable | None = None,
) -> CCAParams:
    r"""Linear CCA in bounded memory: the same result as :func:`dcca_jax.models.cca.fit_linear_cca`.

    Give either both views (arrays, ``np.memmap``, or paths to ``.npy`` files, which are memory-mapped)
    or ``chunks``, an iterable of ``(x_v_chunk, x_s_chunk)`` pairs. Memory is
    :math:`O(\text{chunk} \cdot d + d^2)` whatever ``n``.

    Args:
      x_v, x_s: ``(n, d_v)`` and ``(n, d_s)`` views, or two ``.npy`` paths.
      chunks: alternative to ``x_v``/``x_s``.
      n_components: number of canonical pairs ``k``.
      ridge_v, ridge_s: Eq. 4 ridges.
      chunk_size: rows per block.
      dtype: compute dtype of the per-chunk products (default: the data's dtype).
      feature_map: optional row-wise map of each chunk (see :func:`stats_from_chunks`); the result is
        then CCA of the mapped views (its means and projections live in feature space).

    Returns:
      :class:`dcca_jax.models.cca.CCAParams`.
    """
    if chunks is not None:
        if x_v is not None or x_s is not None:
            raise ValueError("give either x_v and x_s, or chunks, not both.")
        stats = stats_from_chunks(chunks, chunk_size=chunk_size, dtype=dtype, feature_map=feature_map)
    elif x_v is None or x_s is None:
        raise ValueError("fit_streaming_cca needs both x_v and x_s (arrays or .npy paths), or chunks.")
    elif _is_path(x_v) and _is_path(x_s):
        stats = stats_from_npy(x_v, x_s, chunk_size=chunk_size, dtype=dtype, feature_map=feature_map)
    else:
        stats = stats_from_arrays(x_v, x_s, chunk_size=chunk_size, dtype=dtype, feature_map=feature_map)
    return fit_from_stats(stats, n_components=n_components, ridge_v=ridge_v, ridge_s=ridge_s)


def streaming_cca_config() -> ml_collections.ConfigDict:
    """Hyperparameters of :class:`StreamingLinearCCA`: those of linear CCA plus ``chunk_size``."""
    cfg = cca_config()
    cfg.chunk_size = DEFAULT_CHUNK
    return cfg


@register_model
class StreamingLinearCCA(LinearCCA):
    """:class:`dcca_jax.models.cca.LinearCCA` fitted in bounded memory; ``fit`` also takes ``.npy`` paths.

    Config: ``n_components``, ``ridge_v``, ``ridge_s`` as ``LinearCCA``, plus ``chunk_size`` (rows per
    block). Saved models load as this class; transforms are those of ``LinearCCA``.
    """

    name = "streaming_linear_cca"

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        return streaming_cca_config()

    def fit(self, x_v, x_s, **kwargs) -> "StreamingLinearCCA":
        """Fits on two arrays, memmaps or ``.npy`` paths without loading them whole."""
        if kwargs:
            raise TypeError(f"StreamingLinearCCA.fit takes no extra arguments; got {sorted(kwargs)}.")
        c = self.config
        self.params = fit_streaming_cca(
            x_v, x_s, n_components=c.n_components, ridge_v=c.ridge_v, ridge_s=c.ridge_s, chunk_size=c.chunk_size
        )
        self._dims = (int(self.params.proj_v.shape[0]), int(self.params.proj_s.shape[0]))
        return self
