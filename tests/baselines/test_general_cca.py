"""General CCA baseline: PCA and CCA against numpy closed forms, truncation, transfer through the model."""
import numpy as np

from dcca_jax.tagging import recommend
from dcca_jax.baselines import general_cca


def _views(seed=0, n=400):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    xv = np.concatenate([z, rng.normal(size=(n, 5))], 1) @ rng.normal(size=(8, 8))
    xs = np.concatenate([z + 0.5 * rng.normal(size=(n, 3)), rng.normal(size=(n, 3))], 1) @ rng.normal(size=(6, 6))
    return xv, xs


def _numpy_cca_correlations(a, b):
    a, b = a - a.mean(0), b - b.mean(0)
    n = a.shape[0] - 1
    saa, sbb, sab = a.T @ a / n, b.T @ b / n, a.T @ b / n
    wa = np.linalg.inv(np.linalg.cholesky(saa))
    wb = np.linalg.inv(np.linalg.cholesky(sbb))
    return np.linalg.svd(wa @ sab @ wb.T, compute_uv=False)


def test_pca_matches_covariance_eigenvalues():
    xv, _ = _views()
    pca = general_cca.fit_pca(xv, n_components=4)
    z = np.asarray(pca(xv))
    ev = np.sort(np.linalg.eigvalsh(np.cov(xv.T)))[::-1][:4]
    np.testing.assert_allclose(np.var(z, axis=0, ddof=1), ev, rtol=1e-8)
    _, _, vt = np.linalg.svd(xv - xv.mean(0), full_matrices=False)  # the SVD's axes, up to sign
    np.testing.assert_allclose(np.abs(np.sum(np.asarray(pca.components) * vt[:4].T, 0)), 1.0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(general_cca.fit_pca(xv, n_components=0)(xv)), xv - xv.mean(0), atol=1e-12)


def test_general_cca_correlations_and_truncation():
    xv, xs = _views()
    m = general_cca.fit_general_cca(xv, xs, pca_dims=0, n_components=5, ridge_v=0.0, ridge_s=0.0)
    np.testing.assert_allclose(m.correlations, _numpy_cca_correlations(xv, xs)[:5], rtol=1e-7)
    t = general_cca.truncate(m, 2)
    zv, zs = t.transform(x_v=xv, x_s=xs)
    assert zv.shape == (400, 2)
    np.testing.assert_allclose(zv, np.asarray(m.transform(x_v=xv)[0])[:, :2])
    np.testing.assert_allclose([np.corrcoef(zv[:, j], zs[:, j])[0, 1] for j in range(2)], m.correlations[:2],
                               rtol=1e-7)
    # PCA to 6 of 8 dims then CCA: same as CCA on the numpy PCA scores
    mp = general_cca.fit_general_cca(xv, xs, pca_dims=6, n_components=3, ridge_v=0.0, ridge_s=0.0)
    c = xv - xv.mean(0)
    scores = c @ np.linalg.svd(c, full_matrices=False)[2][:6].T
    np.testing.assert_allclose(mp.correlations, _numpy_cca_correlations(scores, xs)[:3], rtol=1e-7)


def test_recommend_from_model_uses_canonical_correlations():
    xv, xs = _views(1)
    y = (xs > 0.5).astype(float)
    m = general_cca.fit_general_cca(xv, y, pca_dims=0, n_components=4, ridge_v=1e-3, ridge_s=1e-3)
    cfg = recommend.transfer_config()
    cfg.k, cfg.corr_power = 7, 2.0
    _, scores = recommend.recommend_from_model(m, xv[:20], train_v=xv, train_s=y, train_labels=y, config=cfg)
    rho = np.asarray(m.correlations)
    zq = np.asarray(m.transform(x_v=xv[:20])[0]) * rho ** 2
    zt = np.asarray(m.transform(x_v=xv)[0]) * rho ** 2
    zq /= np.linalg.norm(zq, axis=1, keepdims=True)
    zt /= np.linalg.norm(zt, axis=1, keepdims=True)
    s = zq @ zt.T
    nn = np.argsort(-s, axis=1, kind="stable")[:, :7]
    want = np.einsum("qk,qkv->qv", np.maximum(np.take_along_axis(s, nn, 1), 0), y[nn])
    np.testing.assert_allclose(scores, want, rtol=1e-8)
