"""BLAS/LAPACK thread limits (dcca_jax.blas) and their use while fitting DCCA."""
import numpy as np
import pytest

from dcca_jax.blas import blas_thread_counts, limit_blas_threads
from dcca_jax.data.synthetic import correlated_views
from dcca_jax.models.dcca import DeepCCA, dcca_config

# numpy is linked against an OpenBLAS that threadpoolctl can see; without one nothing can be checked.
pytestmark = pytest.mark.skipif(not blas_thread_counts(), reason="no BLAS library visible to threadpoolctl")


def test_limit_applies_inside_and_restores_after():
    import scipy.linalg.cython_lapack  # noqa: F401  (the library jaxlib's LAPACK calls run in)

    before = blas_thread_counts()
    with limit_blas_threads(1):
        inside = blas_thread_counts()
    assert set(inside.values()) == {1}
    assert blas_thread_counts() == before


def test_none_leaves_libraries_alone_and_bad_limit_raises():
    before = blas_thread_counts()
    with limit_blas_threads(None):
        assert blas_thread_counts() == before
    with pytest.raises(ValueError, match=">= 1"):
        with limit_blas_threads(0):
            pass


def _small_config(**kw):
    cfg = dcca_config("paper")
    cfg.towers.visual_hidden = cfg.towers.semantic_hidden = (16,)
    cfg.towers.out_dim = 3
    cfg.batch_size, cfg.epochs, cfg.validation_fraction, cfg.patience = 100, 2, 0.0, 0
    cfg.update(kw)
    return cfg


def test_dcca_fit_runs_single_threaded_blas_and_same_result():
    x_v, x_s = correlated_views(300, 6, 5, latent=3, seed=0, dtype=np.float32)
    seen = []
    limited = DeepCCA(_small_config(blas_threads=1)).fit(
        x_v, x_s, callback=lambda step, metrics: seen.append(set(blas_thread_counts().values())))
    assert seen and all(s == {1} for s in seen)
    free = DeepCCA(_small_config(blas_threads=None)).fit(x_v, x_s)
    # The thread limit changes where LAPACK runs, not what the model learns.
    np.testing.assert_allclose(np.asarray(limited.correlations), np.asarray(free.correlations), atol=1e-5)
