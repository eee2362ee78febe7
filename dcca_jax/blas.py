"""Thread limits for the BLAS/LAPACK libraries that run beside XLA.

On CPU, jaxlib runs the small dense factorisations of the correlation objective (Cholesky, triangular
solves, eigh of the ``o x o`` covariances, Eq. 4-5) through scipy's OpenBLAS/LAPACK, while the towers'
matrix products run on XLA's own thread pool. OpenBLAS worker threads keep spinning for a while after
each call, so on a machine with few cores they take the cores away from the next XLA products: on the
2-core reference machine one DCCA step on the MNIST halves (two 392-1024-1024-50 towers, batch 1000)
took 75 ms with OpenBLAS at its default two threads and 42 ms with one (the towers' matrix products
alone, the lower bound, take 42 ms at the machine's 430 GFLOP/s). The factorised matrices are tiny
(``o x o``), so one LAPACK thread costs nothing there. :func:`limit_blas_threads` sets the limit for a
block of code with ``threadpoolctl`` and restores the previous one afterwards.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["limit_blas_threads", "blas_thread_counts"]


@contextlib.contextmanager
def limit_blas_threads(n: int | None) -> Iterator[None]:
    """Limits every loaded BLAS/LAPACK library (OpenBLAS, MKL, BLIS) to ``n`` threads inside the block.

    Args:
        n: thread limit (>= 1), or ``None`` to leave the libraries as they are.

    Raises:
        ValueError: ``n`` is not ``None`` and below 1.
    """
    if n is None:
        yield
        return
    if int(n) < 1:
        raise ValueError(f"a BLAS thread limit must be >= 1 (or None for no limit); got {n!r}.")
    from threadpoolctl import threadpool_limits

    # threadpoolctl only sees libraries already loaded: jaxlib loads scipy's LAPACK lazily, at its first
    # factorisation, which would then escape the limit.
    import scipy.linalg.cython_lapack  # noqa: F401

    with threadpool_limits(limits=int(n), user_api="blas"):
        yield


def blas_thread_counts() -> dict[str, int]:
    """``{library file: threads}`` for the BLAS/LAPACK libraries loaded in this process."""
    from threadpoolctl import threadpool_info

    return {i["filepath"]: int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"}
