"""Streaming linear CCA against the in-memory fit and numpy covariances."""
from __future__ import annotations

import numpy as np
import pytest

from dcca_jax.models import base
from dcca_jax.models.cca import fit_linear_cca
from dcca_jax.data.synthetic import correlated_views
from dcca_jax.models.streaming import (
    StreamingLinearCCA,
    chunk_stats,
    empty_stats,
    fit_streaming_cca,
    merge_stats,
    stats_from_arrays,
    stats_from_chunks,
    stats_from_npy,
)


def _assert_same_cca(a, b, tol):
    for f in ("mean_v", "mean_s", "proj_v", "proj_s", "correlations"):
        np.testing.assert_allclose(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)), atol=tol, rtol=tol, err_msg=f)


@pytest.fixture(scope="module")
def views():
    return correlated_views(3001, 12, 9, latent=5, noise=0.7, seed=3)


def test_stats_match_numpy_covariance(views):
    x_v, x_s = views
    st = stats_from_arrays(x_v, x_s, chunk_size=700)
    x = np.concatenate([x_v, x_s], axis=1)
    assert st.count == 3001 and st.d_v == 12 and st.d_s == 9
    np.testing.assert_allclose(st.mean, x.mean(0), rtol=1e-12, atol=1e-12)
    s_vv, s_ss, s_vs = st.covariances(ridge_v=0.5, ridge_s=0.25)
    c = np.cov(x, rowvar=False)
    np.testing.assert_allclose(s_vv, c[:12, :12] + 0.5 * np.eye(12), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(s_ss, c[12:, 12:] + 0.25 * np.eye(9), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(s_vs, c[:12, 12:], rtol=1e-11, atol=1e-12)


def test_merge_is_exact_and_order_free(views):
    x_v, x_s = views
    parts = [(0, 5), (5, 1000), (1000, 1001), (1001, 3001)]
    stats = [chunk_stats(x_v[i:j], x_s[i:j]) for i, j in parts]
    fwd = empty_stats(12, 9)
    for s in stats:
        fwd = merge_stats(fwd, s)
    tree = merge_stats(merge_stats(stats[3], stats[1]), merge_stats(stats[2], stats[0]))
    whole = chunk_stats(x_v, x_s)
    for m in (fwd, tree):
        np.testing.assert_allclose(m.mean, whole.mean, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(m.comoment, whole.comoment, rtol=1e-11, atol=1e-9)
    with pytest.raises(ValueError, match=r"\(d_v, d_s\) = \(12, 9\) and \(3, 9\)"):
        merge_stats(fwd, chunk_stats(x_v[:4, :3], x_s[:4]))


@pytest.mark.parametrize("chunk_size", [256, 1000, 5000])
def test_streaming_equals_in_memory_arrays(views, chunk_size):
    x_v, x_s = views
    ref = fit_linear_cca(x_v, x_s, n_components=6, ridge_v=1e-3, ridge_s=1e-3)
    got = fit_streaming_cca(x_v, x_s, n_components=6, ridge_v=1e-3, ridge_s=1e-3, chunk_size=chunk_size)
    _assert_same_cca(got, ref, 1e-9)


def test_streaming_equals_in_memory_ragged_iterator(views):
    x_v, x_s = views
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, 3001), size=11, replace=False))
    bounds = [0, *cuts.tolist(), 3001]
    chunks = ((x_v[i:j], x_s[i:j]) for i, j in zip(bounds[:-1], bounds[1:]))
    ref = fit_linear_cca(x_v, x_s, n_components=9)
    got = fit_streaming_cca(chunks=chunks, n_components=9, chunk_size=512)
    _assert_same_cca(got, ref, 1e-9)


def test_streaming_equals_in_memory_mmap_npy(views, tmp_path):
    x_v, x_s = views
    pv, ps = tmp_path / "v.npy", tmp_path / "s.npy"
    np.save(pv, x_v)
    np.save(ps, x_s)
    ref = fit_linear_cca(x_v, x_s, n_components=5, ridge_v=1e-2)
    _assert_same_cca(fit_streaming_cca(str(pv), ps, n_components=5, ridge_v=1e-2, chunk_size=400), ref, 1e-9)
    mm_v, mm_s = np.load(pv, mmap_mode="r"), np.load(ps, mmap_mode="r")
    _assert_same_cca(fit_streaming_cca(mm_v, mm_s, n_components=5, ridge_v=1e-2, chunk_size=999), ref, 1e-9)
    # Rows [start, stop) of the files, as one host of a multi-host run reads them.
    part = stats_from_npy(pv, ps, chunk_size=300, start=1000, stop=2000)
    whole = chunk_stats(x_v[1000:2000], x_s[1000:2000])
    np.testing.assert_allclose(part.comoment, whole.comoment, rtol=1e-11, atol=1e-9)


def test_float32_large_mean_keeps_precision():
    # Features with a mean 1e4 times their spread: the naive sum(x x^T) - n mu mu^T in float32 loses
    # every digit; the shifted chunks and the Chan merge keep float32-level accuracy.
    rng = np.random.default_rng(1)
    n = 200_000
    x_v = (1e4 + rng.standard_normal((n, 3))).astype(np.float32)
    x_s = (x_v[:, :2] - 1e4 + 0.5 * rng.standard_normal((n, 2))).astype(np.float32)
    st = stats_from_arrays(x_v, x_s, chunk_size=16384)
    x64 = np.concatenate([x_v, x_s], axis=1).astype(np.float64)
    c = np.cov(x64, rowvar=False)
    s_vv, s_ss, s_vs = st.covariances()
    np.testing.assert_allclose(s_vv, c[:3, :3], rtol=0, atol=2e-3)
    np.testing.assert_allclose(s_vs, c[:3, 3:], rtol=0, atol=2e-3)
    naive = (x64.T.astype(np.float32) @ x64.astype(np.float32) - n * np.outer(x64.mean(0), x64.mean(0))) / (n - 1)
    assert np.abs(naive[:3, :3] - c[:3, :3]).max() > 100 * np.abs(s_vv - c[:3, :3]).max()


def test_errors_name_the_problem(views, tmp_path):
    x_v, x_s = views
    bad = x_v.copy()
    bad[1234, 7] = np.nan
    with pytest.raises(ValueError, match="row 1234, column 7"):
        stats_from_arrays(bad, x_s, chunk_size=500)
    with pytest.raises(ValueError, match=r"\(3001, 12\) and \(3000, 9\)"):
        stats_from_arrays(x_v, x_s[:-1])
    with pytest.raises(ValueError, match="yielded no rows"):
        stats_from_chunks(iter([]))
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        stats_from_npy(tmp_path / "missing.npy", tmp_path / "s.npy")
    with pytest.raises(ValueError, match="n_components=13"):
        fit_streaming_cca(x_v, x_s, n_components=13)
    with pytest.raises(ValueError, match="singular"):
        fit_streaming_cca(np.c_[x_v, np.full(3001, 2.5)], x_s, n_components=2)


def test_model_fit_save_load(views, tmp_path):
    x_v, x_s = views
    np.save(tmp_path / "v.npy", x_v)
    np.save(tmp_path / "s.npy", x_s)
    m = StreamingLinearCCA(n_components=4, chunk_size=512).fit(tmp_path / "v.npy", tmp_path / "s.npy")
    ref = fit_linear_cca(x_v, x_s, n_components=4)
    _assert_same_cca(m.params, ref, 1e-9)
    m.save(tmp_path / "model")
    back = base.load_model(tmp_path / "model")
    assert isinstance(back, StreamingLinearCCA)
    np.testing.assert_allclose(np.asarray(back.score(x_v, x_s)), np.asarray(ref.correlations), atol=1e-9)


def test_feature_map_gives_streaming_nystrom_kcca(views):
    # Linear CCA of streamed Nystrom features = KernelCCA's in-memory Nystrom solver (same landmarks).
    from dcca_jax.models.kcca import KernelCCA, nystrom_features

    x_v, x_s = views
    model = KernelCCA(n_components=4, solver="nystrom", n_landmarks=40, bandwidth_v=3.0, bandwidth_s=3.0).fit(x_v, x_s)
    st, (spec_v, spec_s) = model.state, model.specs

    def fmap(a, b):
        return (nystrom_features(a, st["landmarks_v"], st["whitener_v"], spec=spec_v),
                nystrom_features(b, st["landmarks_s"], st["whitener_s"], spec=spec_s))

    got = fit_streaming_cca(x_v, x_s, feature_map=fmap, n_components=4, ridge_v=model.config.ridge_v,
                            ridge_s=model.config.ridge_s, chunk_size=700)
    np.testing.assert_allclose(np.asarray(got.correlations), np.asarray(st["correlations"]), atol=1e-9)
    np.testing.assert_allclose(np.asarray(got.proj_v), np.asarray(st["cca_proj_v"]), atol=1e-8)
    np.testing.assert_allclose(np.asarray(got.mean_s), np.asarray(st["cca_mean_s"]), atol=1e-10)
