"""Linear CCA against a scipy generalised-eigenproblem oracle, and its defining properties."""
import jax
import numpy as np
import pytest
import scipy.linalg

from dcca_jax.models import cca
from dcca_jax.models.base import load_model


def _views(rng, n=300, d_v=8, d_s=6, latent=4):
    z = rng.standard_normal((n, latent))
    x_v = z @ rng.standard_normal((latent, d_v)) + 0.8 * rng.standard_normal((n, d_v)) + 3.0
    x_s = z @ rng.standard_normal((latent, d_s)) + 0.8 * rng.standard_normal((n, d_s)) - 1.0
    return x_v, x_s


def _oracle(x_v, x_s, k, r_v=0.0, r_s=0.0):
    c = np.cov(x_v, x_s, rowvar=False)
    d_v = x_v.shape[1]
    s_vv = c[:d_v, :d_v] + r_v * np.eye(d_v)
    s_ss = c[d_v:, d_v:] + r_s * np.eye(x_s.shape[1])
    s_vs = c[:d_v, d_v:]
    w, p = scipy.linalg.eigh(s_vs @ np.linalg.solve(s_ss, s_vs.T), s_vv)  # p^T S_vv p = I
    order = np.argsort(w)[::-1][:k]
    rho = np.sqrt(w[order])
    p = p[:, order]
    q = np.linalg.solve(s_ss, s_vs.T @ p) / rho
    return rho, p, q


def _align(a, b):
    return a * np.sign(np.sum(a * b, axis=0))


@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_matches_scipy_oracle(ridge):
    x_v, x_s = _views(np.random.default_rng(0))
    params = cca.fit_linear_cca(x_v, x_s, n_components=5, ridge_v=ridge, ridge_s=2 * ridge)
    rho, p, q = _oracle(x_v, x_s, 5, ridge, 2 * ridge)
    np.testing.assert_allclose(params.correlations, rho, rtol=1e-9)
    np.testing.assert_allclose(_align(np.asarray(params.proj_v), p), p, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(_align(np.asarray(params.proj_s), q), q, rtol=1e-6, atol=1e-9)


def test_identical_views_correlation_one():
    x = np.random.default_rng(1).standard_normal((100, 5))
    params = cca.fit_linear_cca(x, x, n_components=5)
    np.testing.assert_allclose(params.correlations, np.ones(5), atol=1e-10)


def test_correlations_sorted_in_unit_interval_and_variates_uncorrelated():
    x_v, x_s = _views(np.random.default_rng(2))
    params = cca.fit_linear_cca(x_v, x_s, n_components=6)
    rho = np.asarray(params.correlations)
    assert np.all(np.diff(rho) <= 1e-12) and 0 <= rho.min() and rho.max() <= 1
    z_v, z_s = cca.project(params, x_v, x_s)
    n = x_v.shape[0]
    np.testing.assert_allclose(np.cov(z_v, rowvar=False), np.eye(6), atol=1e-9)
    np.testing.assert_allclose(np.cov(z_s, rowvar=False), np.eye(6), atol=1e-9)
    cross = (z_v - z_v.mean(0)).T @ (z_s - z_s.mean(0)) / (n - 1)
    np.testing.assert_allclose(cross, np.diag(rho), atol=1e-9)


def test_invariance_to_invertible_linear_maps():
    rng = np.random.default_rng(3)
    x_v, x_s = _views(rng)
    a = rng.standard_normal((8, 8)) + 3 * np.eye(8)
    b = rng.standard_normal((6, 6)) + 3 * np.eye(6)
    p1 = cca.fit_linear_cca(x_v, x_s, n_components=4)
    p2 = cca.fit_linear_cca(x_v @ a, x_s @ b + 5.0, n_components=4)
    np.testing.assert_allclose(p1.correlations, p2.correlations, rtol=1e-9)
    z1, _ = cca.project(p1, x_v)
    z2, _ = cca.project(p2, x_v @ a)
    np.testing.assert_allclose(_align(np.asarray(z2), np.asarray(z1)), z1, atol=1e-7)


def test_zero_ridge_is_plain_cca_and_small_ridge_converges():
    x_v, x_s = _views(np.random.default_rng(4))
    plain = _oracle(x_v, x_s, 3)[0]
    np.testing.assert_allclose(cca.fit_linear_cca(x_v, x_s, n_components=3).correlations, plain, rtol=1e-10)
    near = cca.fit_linear_cca(x_v, x_s, n_components=3, ridge_v=1e-9, ridge_s=1e-9).correlations
    np.testing.assert_allclose(near, plain, rtol=1e-6)
    more = cca.fit_linear_cca(x_v, x_s, n_components=3, ridge_v=1.0, ridge_s=1.0).correlations
    assert np.all(np.asarray(more) < plain)  # a ridge shrinks every correlation


def test_float32():
    x_v, x_s = _views(np.random.default_rng(5))
    p32 = cca.fit_linear_cca(x_v.astype(np.float32), x_s.astype(np.float32), n_components=4)
    assert p32.proj_v.dtype == np.float32
    np.testing.assert_allclose(p32.correlations, _oracle(x_v, x_s, 4)[0], rtol=1e-4)


def test_model_api_score_curve_and_save_load(tmp_path):
    rng = np.random.default_rng(6)
    x_v, x_s = _views(rng, n=400)
    model = cca.LinearCCA(n_components=5, ridge_v=0.0, ridge_s=0.0).fit(x_v[:300], x_s[:300])
    # on the training data (no ridge), per-component correlations are the canonical correlations
    np.testing.assert_allclose(model.score(x_v[:300], x_s[:300]), model.correlations, rtol=1e-8)
    np.testing.assert_allclose(
        model.correlation_score_curve(x_v[:300], x_s[:300]), np.cumsum(model.correlations), rtol=1e-8
    )
    # held-out: numpy Pearson correlation of each projected pair
    z_v, z_s = model.transform(x_v[300:], x_s[300:])
    expect = [np.corrcoef(z_v[:, j], z_s[:, j])[0, 1] for j in range(5)]
    np.testing.assert_allclose(model.score(x_v[300:], x_s[300:]), expect, rtol=1e-9)
    model.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert isinstance(again, cca.LinearCCA) and again.config.n_components == 5
    np.testing.assert_allclose(again.transform(x_v=x_v[300:])[0], z_v, rtol=1e-12)
    assert again.transform(x_s=x_s[:3])[0] is None


def test_jit_fit():
    x_v, x_s = _views(np.random.default_rng(7))
    f = jax.jit(lambda a, b: cca.fit_linear_cca(a, b, n_components=3).correlations)
    np.testing.assert_allclose(f(x_v, x_s), _oracle(x_v, x_s, 3)[0], rtol=1e-9)


def test_bad_input():
    x_v, x_s = _views(np.random.default_rng(8), n=20)
    with pytest.raises(ValueError, match=r"n_components=7 .* min\(d_v, d_s\)=6"):
        cca.fit_linear_cca(x_v, x_s, n_components=7)
    with pytest.raises(ValueError, match=r"\(20, 8\) and \(19, 6\)"):
        cca.fit_linear_cca(x_v, x_s[:19], n_components=2)
    dup = x_v.copy()
    dup[:, 1] = dup[:, 0]
    with pytest.raises(ValueError, match="singular.*positive ridge"):
        cca.fit_linear_cca(dup, x_s, n_components=2)
    # ... which a ridge fixes
    assert np.all(np.isfinite(cca.fit_linear_cca(dup, x_s, n_components=2, ridge_v=1e-3).proj_v))
    with pytest.raises(ValueError, match="not fitted"):
        cca.LinearCCA().transform(x_v)
    model = cca.LinearCCA(n_components=2).fit(x_v, x_s)
    with pytest.raises(ValueError, match=r"x_v has 5 features \(shape \(20, 5\)\); the model was fitted on 8"):
        model.transform(x_v[:, :5])
    bad = x_s.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="x_s .* nan at row 3, column 2"):
        model.score(x_v, bad)
