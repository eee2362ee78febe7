"""Covariance and matrix square roots against numpy/scipy, and finite gradients on degenerate input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.test_util import check_grads

from dcca_jax import linalg


def _spd(rng, d, repeat=False):
    a = rng.standard_normal((d, d))
    s = a @ a.T + d * np.eye(d)
    if repeat:  # force an exactly repeated eigenvalue
        w, u = np.linalg.eigh(s)
        w[1] = w[0]
        s = (u * w) @ u.T
    return s


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_covariance_matches_numpy(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5)).astype(dtype)
    y = rng.standard_normal((40, 3)).astype(dtype)
    c = linalg.covariance(x, ridge=0.5)
    assert c.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, np.cov(x, rowvar=False) + 0.5 * np.eye(5), rtol=tol, atol=tol)
    cxy = linalg.covariance(x, y)
    np.testing.assert_allclose(cxy, np.cov(x, y, rowvar=False)[:5, 5:], rtol=tol, atol=tol)


def test_covariance_jits():
    x = np.random.default_rng(1).standard_normal((10, 3))
    np.testing.assert_allclose(jax.jit(lambda a: linalg.covariance(a, ridge=0.1))(x), linalg.covariance(x, ridge=0.1))


@pytest.mark.parametrize("repeat", [False, True])
def test_inv_sqrtm_and_sqrtm_match_scipy(repeat):
    s = _spd(np.random.default_rng(2), 6, repeat=repeat)
    w = linalg.inv_sqrtm(s)
    np.testing.assert_allclose(w, np.linalg.inv(scipy.linalg.sqrtm(s)).real, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(w @ s @ w, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(linalg.sqrtm_psd(s), scipy.linalg.sqrtm(s).real, rtol=1e-9, atol=1e-10)


def test_inv_sqrtm_float32():
    s = _spd(np.random.default_rng(3), 5).astype(np.float32)
    w = linalg.inv_sqrtm(s)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w @ s @ w, np.eye(5), atol=1e-4)


@pytest.mark.parametrize("fn", [linalg.inv_sqrtm, linalg.sqrtm_psd])
@pytest.mark.parametrize("repeat", [False, True])
def test_square_root_gradients(fn, repeat):
    s = _spd(np.random.default_rng(4), 4, repeat=repeat)
    c = np.random.default_rng(5).standard_normal((4, 4))

    def f(m):
        m = 0.5 * (m + m.T)  # perturbations stay symmetric, like covariances
        return jnp.sum(fn(m) * c)

    check_grads(f, (s,), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


def test_inv_sqrtm_gradient_finite_at_identity_where_eigh_is_not():
    # The identity has one eigenvalue repeated d times: eigh's own JVP divides by zero there.
    eye = jnp.eye(4)
    c = np.arange(16.0).reshape(4, 4)
    naive = jax.grad(lambda m: jnp.sum(_naive_inv_sqrtm(m) * c))(eye)
    ours = jax.grad(lambda m: jnp.sum(linalg.inv_sqrtm(m) * c))(eye)
    assert not np.all(np.isfinite(naive))
    assert np.all(np.isfinite(ours))
    # d/dS of S^{-1/2} at I is -1/2 dS: the gradient of <S^{-1/2}, C> is -1/2 sym(C).
    np.testing.assert_allclose(ours, -0.25 * (c + c.T), atol=1e-12)


def _naive_inv_sqrtm(s):
    w, u = jnp.linalg.eigh(s)
    return (u / jnp.sqrt(w)) @ u.T


def test_cholesky_whitener():
    s = _spd(np.random.default_rng(6), 5)
    li = linalg.cholesky_whitener(s)
    np.testing.assert_allclose(li @ s @ li.T, np.eye(5), atol=1e-10)
    np.testing.assert_allclose(np.triu(li, 1), 0.0)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.ones(5), r"2-D array .* shape \(5,\)"),
        (np.ones((1, 3)), r"at least 2 samples; got x of shape \(1, 3\)"),
        (np.array([[1.0, np.nan], [2.0, 3.0]]), r"non-finite value nan at row 0, column 1"),
        (np.array([[1.0, 2.0], [np.inf, 3.0]]), r"non-finite value inf at row 1, column 0"),
    ],
)
def test_covariance_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        linalg.covariance(bad)


def test_cross_covariance_row_mismatch():
    with pytest.raises(ValueError, match=r"\(4, 2\) and \(5, 2\)"):
        linalg.covariance(np.ones((4, 2)), np.ones((5, 2)))


def test_non_square_rejected():
    with pytest.raises(ValueError, match=r"square .* \(2, 3\)"):
        linalg.inv_sqrtm(np.ones((2, 3)))
