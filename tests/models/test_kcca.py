"""Kernel CCA against independent numpy/scipy oracles, linear CCA, and its approximations."""
import jax
import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist, pdist

from dcca_jax.models import kcca
from dcca_jax.models.base import load_model
from dcca_jax.models.cca import LinearCCA
from dcca_jax.data.synthetic import correlated_views


def _split(x_v, x_s, n_fit):
    return (x_v[:n_fit], x_s[:n_fit]), (x_v[n_fit:], x_s[n_fit:])


def _abs_close(a, b, **kw):
    """Equal up to the sign of each column."""
    a, b = np.asarray(a), np.asarray(b)
    sign = np.sign(np.sum(a * b, axis=0))
    np.testing.assert_allclose(a * sign, b, **kw)


def _rbf_np(x, y, sigma):
    return np.exp(-cdist(x, y, "sqeuclidean") / (2 * sigma**2))


def _oracle_kcca(x_v, x_s, xt_v, xt_s, sigma_v, sigma_s, r_v, r_s, k):
    """cca-zoo's route: eigendecompose each centred kernel, linear CCA (scipy gen. eigh) on U sqrt(lam)."""
    n = len(x_v)
    h = np.eye(n) - 1.0 / n
    out = []
    feats, maps = [], []
    for x, xt, sigma in ((x_v, xt_v, sigma_v), (x_s, xt_s, sigma_s)):
        kk = _rbf_np(x, x, sigma)
        kc = h @ kk @ h
        lam, u = np.linalg.eigh(kc)
        keep = lam > lam.max() * n * 1e-14
        lam, u = lam[keep], u[:, keep]
        kt = _rbf_np(xt, x, sigma)
        ktc = kt - kk.mean(0)[None] - kt.mean(1, keepdims=True) + kk.mean()
        feats.append(u * np.sqrt(lam))
        maps.append(ktc @ (u / np.sqrt(lam)))
    f_v, f_s = feats
    s_vv = f_v.T @ f_v / (n - 1) + r_v * np.eye(f_v.shape[1])
    s_ss = f_s.T @ f_s / (n - 1) + r_s * np.eye(f_s.shape[1])
    s_vs = f_v.T @ f_s / (n - 1)
    w, p = scipy.linalg.eigh(s_vs @ np.linalg.solve(s_ss, s_vs.T), s_vv)
    order = np.argsort(w)[::-1][:k]
    rho = np.sqrt(w[order])
    p = p[:, order]
    q = np.linalg.solve(s_ss, s_vs.T @ p) / rho
    out = rho, maps[0] @ p, maps[1] @ q
    return out


def test_kernel_matrix_chunks_match_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((37, 5)), rng.standard_normal((11, 5))
    spec = kcca.KernelSpec("rbf", bandwidth=1.7)
    np.testing.assert_allclose(kcca.kernel_matrix(x, y, spec=spec, chunk_size=8), _rbf_np(x, y, 1.7), rtol=1e-12)
    spec = kcca.KernelSpec("poly", gamma=0.3, coef0=0.5, degree=3)
    np.testing.assert_allclose(kcca.kernel_matrix(x, y, spec=spec, chunk_size=10), (0.3 * x @ y.T + 0.5) ** 3, rtol=1e-12)
    spec = kcca.KernelSpec("linear")
    np.testing.assert_allclose(kcca.kernel_matrix(x, y, spec=spec, chunk_size=100), x @ y.T, rtol=1e-12)


def test_median_bandwidth_matches_pdist():
    x = np.random.default_rng(1).standard_normal((300, 4))
    assert kcca.median_bandwidth(x, subsample=1000) == pytest.approx(np.median(pdist(x)), rel=1e-8)
    sub = kcca.median_bandwidth(x, subsample=100, seed=3)
    idx = np.random.default_rng(3).choice(300, 100, replace=False)
    assert sub == pytest.approx(np.median(pdist(x[idx])), rel=1e-8)


def test_test_kernel_centring_equals_explicit_feature_centring():
    # (x.y + c)^2 has the explicit feature map [vec(x x^T), sqrt(2c) x, c]: centring those features
    # with the training mean must give the centred train and test kernels.
    rng = np.random.default_rng(2)
    x, xt, c0 = rng.standard_normal((40, 3)), rng.standard_normal((9, 3)), 0.7

    def phi(a):
        return np.concatenate([np.einsum("ni,nj->nij", a, a).reshape(len(a), -1), np.sqrt(2 * c0) * a,
                               np.full((len(a), 1), c0)], axis=1)

    f, ft = phi(x), phi(xt)
    mu = f.mean(0)
    spec = kcca.KernelSpec("poly", gamma=1.0, coef0=c0, degree=2)
    kc, col, grand = kcca.center_kernel(kcca.kernel_matrix(x, x, spec=spec))
    np.testing.assert_allclose(kc, (f - mu) @ (f - mu).T, atol=1e-10)
    ktc = kcca.center_test_kernel(kcca.kernel_matrix(xt, x, spec=spec), col, grand)
    np.testing.assert_allclose(ktc, (ft - mu) @ (f - mu).T, atol=1e-10)


def test_linear_kernel_equals_linear_cca():
    x_v, x_s = correlated_views(330, 8, 6, latent=4, seed=0)
    (a_v, a_s), (b_v, b_s) = _split(x_v + 2.0, x_s - 1.0, 250)
    lin = LinearCCA(n_components=5, ridge_v=0.05, ridge_s=0.2).fit(a_v, a_s)
    ker = kcca.KernelCCA(n_components=5, kernel_v="linear", kernel_s="linear", ridge_v=0.05, ridge_s=0.2).fit(a_v, a_s)
    np.testing.assert_allclose(ker.correlations, lin.correlations, rtol=1e-8)
    for z_lin, z_ker in zip(lin.transform(b_v, b_s), ker.transform(b_v, b_s)):
        _abs_close(z_ker, z_lin, atol=1e-7)
    np.testing.assert_allclose(ker.score(b_v, b_s), lin.score(b_v, b_s), atol=1e-8)


def test_exact_matches_eigendecomposition_oracle():
    x_v, x_s = correlated_views(190, 5, 4, latent=3, nonlinear=True, seed=4)
    (a_v, a_s), (b_v, b_s) = _split(x_v, x_s, 150)
    model = kcca.KernelCCA(n_components=4, bandwidth_v=2.0, bandwidth_s=3.0, ridge_v=1e-2, ridge_s=3e-2).fit(a_v, a_s)
    rho, zt_v, zt_s = _oracle_kcca(a_v, a_s, b_v, b_s, 2.0, 3.0, 1e-2, 3e-2, 4)
    np.testing.assert_allclose(model.correlations, rho, rtol=1e-7)
    z_v, z_s = model.transform(b_v, b_s)
    _abs_close(z_v, zt_v, atol=1e-6)
    _abs_close(z_s, zt_s, atol=1e-6)
    # Descending, and the pairs' signs agree (positive training covariance).
    assert np.all(np.diff(np.asarray(model.correlations)) <= 0)
    assert np.all(np.asarray(model.score(a_v, a_s)) > 0)


def test_nystrom_converges_to_exact():
    x_v, x_s = correlated_views(400, 10, 10, latent=4, nonlinear=True, seed=5)
    (a_v, a_s), (b_v, b_s) = _split(x_v, x_s, 300)
    cfg = dict(n_components=5, bandwidth_v=4.0, bandwidth_s=4.0, ridge_v=1e-2, ridge_s=1e-2)
    exact = kcca.KernelCCA(solver="exact", **cfg).fit(a_v, a_s)
    errors = []
    for m in (25, 75, 300):
        approx = kcca.KernelCCA(solver="nystrom", n_landmarks=m, **cfg).fit(a_v, a_s)
        errors.append(float(np.max(np.abs(np.asarray(approx.correlations) - np.asarray(exact.correlations)))))
    assert errors[0] > errors[1] > errors[2]
    # With every training point a landmark the Nystrom kernel is the exact kernel.
    assert errors[2] < 1e-6
    for z_a, z_e in zip(approx.transform(b_v, b_s), exact.transform(b_v, b_s)):
        _abs_close(z_a, z_e, atol=1e-5)


@pytest.mark.slow
def test_random_fourier_features_approach_exact():
    x_v, x_s = correlated_views(300, 6, 6, latent=3, nonlinear=True, seed=6)
    cfg = dict(n_components=3, bandwidth_v=3.0, bandwidth_s=3.0, ridge_v=1e-2, ridge_s=1e-2)
    exact = np.asarray(kcca.KernelCCA(solver="exact", **cfg).fit(x_v, x_s).correlations)
    err = [np.max(np.abs(np.asarray(kcca.KernelCCA(solver="rff", n_features=d, **cfg).fit(x_v, x_s).correlations) - exact))
           for d in (40, 800)]
    assert err[1] < err[0] / 3 and err[1] < 0.03


def test_kcca_beats_linear_cca_on_nonlinear_relation_held_out():
    x_v, x_s = correlated_views(900, 10, 10, latent=3, noise=0.3, nonlinear=True, seed=7)
    (a_v, a_s), (b_v, b_s) = _split(x_v, x_s, 600)
    lin = LinearCCA(n_components=3, ridge_v=1e-3, ridge_s=1e-3).fit(a_v, a_s)
    ker = kcca.KernelCCA(n_components=3, solver="nystrom", n_landmarks=200, ridge_v=1e-2, ridge_s=1e-2).fit(a_v, a_s)
    lin_held = float(np.sum(np.asarray(lin.score(b_v, b_s))))
    ker_held = float(np.sum(np.asarray(ker.score(b_v, b_s))))
    # Squared latents are uncorrelated with the latents: linear CCA finds nothing, KCCA most of it.
    assert lin_held < 0.5
    assert ker_held > 1.5


@pytest.mark.parametrize("solver", ["exact", "nystrom", "rff"])
def test_save_load_round_trip(tmp_path, solver):
    x_v, x_s = correlated_views(120, 4, 3, latent=2, seed=8)
    model = kcca.KernelCCA(n_components=2, solver=solver, n_landmarks=40, n_features=60, kernel_s="poly"
                           if solver != "rff" else "rbf").fit(x_v[:100], x_s[:100])
    loaded = load_model(model.save(tmp_path / solver))
    assert isinstance(loaded, kcca.KernelCCA)
    for a, b in zip(model.transform(x_v[100:], x_s[100:]), loaded.transform(x_v[100:], x_s[100:])):
        np.testing.assert_array_equal(a, b)


def test_float32_fit():
    x_v, x_s = correlated_views(200, 5, 5, latent=3, nonlinear=True, seed=9, dtype=np.float32)
    for solver in ("exact", "nystrom"):
        model = kcca.KernelCCA(n_components=3, solver=solver, n_landmarks=60, ridge_v=1e-2, ridge_s=1e-2).fit(x_v, x_s)
        z_v, _ = model.transform(x_v, None)
        assert z_v.dtype == np.float32 and np.all(np.isfinite(np.asarray(z_v)))
        ref = kcca.KernelCCA(n_components=3, solver=solver, n_landmarks=60, ridge_v=1e-2, ridge_s=1e-2).fit(
            x_v.astype(np.float64), x_s.astype(np.float64))
        np.testing.assert_allclose(model.correlations, ref.correlations, atol=2e-3)


def test_kernel_matrix_jits_and_fit_exact_is_pure():
    x = np.random.default_rng(10).standard_normal((20, 3))
    spec = kcca.KernelSpec("rbf", bandwidth=1.0)
    k = jax.jit(lambda a: kcca.kernel_matrix(a, a, spec=spec, chunk_size=7))(x)
    np.testing.assert_allclose(k, _rbf_np(x, x, 1.0), rtol=1e-12)


def test_bad_inputs():
    x_v, x_s = correlated_views(50, 4, 3, latent=2, seed=11)
    with pytest.raises(ValueError, match="unknown kernel_v 'gauss'"):
        kcca.KernelCCA(kernel_v="gauss").fit(x_v, x_s)
    with pytest.raises(ValueError, match="unknown solver"):
        kcca.KernelCCA(solver="lanczos").fit(x_v, x_s)
    with pytest.raises(ValueError, match=r"n_components=50 must be an integer between 1 and n - 1 \(the rank of a centred kernel\) = 49"):
        kcca.KernelCCA(n_components=50).fit(x_v, x_s)
    with pytest.raises(ValueError, match="n_components=30 must be an integer between 1 and n_landmarks = 20"):
        kcca.KernelCCA(n_components=30, solver="nystrom", n_landmarks=20).fit(x_v, x_s)
    with pytest.raises(ValueError, match="n_landmarks=60 must be between 1 and n=50"):
        kcca.KernelCCA(solver="nystrom", n_landmarks=60).fit(x_v, x_s)
    with pytest.raises(ValueError, match=r"same number of samples.*\(50, 4\) and \(49, 3\)"):
        kcca.KernelCCA().fit(x_v, x_s[:49])
    with pytest.raises(ValueError, match="ridge_s=0.0 must be > 0"):
        kcca.KernelCCA(ridge_s=0.0).fit(x_v, x_s)
    with pytest.raises(ValueError, match="'rff' approximates the RBF kernel only"):
        kcca.KernelCCA(solver="rff", kernel_v="poly").fit(x_v, x_s)
    with pytest.raises(ValueError, match="median heuristic failed"):
        kcca.KernelCCA().fit(np.ones((50, 4)), x_s)
    model = kcca.KernelCCA(n_components=2).fit(x_v, x_s)
    with pytest.raises(ValueError, match=r"x_s has 4 features \(shape \(5, 4\)\); the model was fitted on 3"):
        model.transform(x_s=np.ones((5, 4)))
    with pytest.raises(ValueError, match="not fitted"):
        kcca.KernelCCA().transform(x_v)
