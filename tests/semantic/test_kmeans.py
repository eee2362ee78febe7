"""k-means: hand-checked case, monotone objective, empty clusters, scipy oracle on separable blobs."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.cluster.vq import kmeans2

from dcca_jax.semantic import kmeans as km


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    # These tests compile many small programs; XLA's optimisations cost more than they save here.
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def test_hand_checked_case():
    # Two obvious groups on a line: {0, 1, 2} and {10, 12}; start from the two leftmost points.
    x = np.array([[0.0], [1.0], [2.0], [10.0], [12.0]])
    res = km.kmeans(x, k=2, init=np.array([[0.0], [1.0]]))
    # Iteration 1: labels [0,1,1,1,1] -> centroids 0 and 25/4; iteration 2: labels [0,0,0,1,1]
    # -> centroids 1 and 11; iteration 3: unchanged -> stop.
    np.testing.assert_array_equal(np.asarray(res.labels), [0, 0, 0, 1, 1])
    np.testing.assert_allclose(np.asarray(res.centroids), [[1.0], [11.0]])
    # Inertia by hand: (1 + 0 + 1) + (1 + 1) = 4.
    assert float(res.inertia) == pytest.approx(4.0)
    hist = np.asarray(res.inertia_history)
    # Inertia of each assignment step: before iteration 1, against centroids {0, 1}: 0 + 0 + 1 + 81 + 121;
    # before iteration 2, against {0, 25/4}: 0 + 1 + 4 + (10 - 25/4)^2 + (12 - 25/4)^2.
    before2 = 0 + 1 + 4 + (10 - 25 / 4) ** 2 + (12 - 25 / 4) ** 2
    np.testing.assert_allclose(hist[:4], [203.0, before2, 4.0, 4.0])
    assert int(res.n_iter) == 3 and bool(res.converged)


def test_kmeans_plus_plus_picks_data_points_and_spreads():
    x = np.array([[0.0, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0], [-5.0, 5.0]])
    for seed in range(5):
        c = np.asarray(km.kmeans_plus_plus(jax.random.key(seed), x, k=3))
        # Every centre is a row of x, and they are distinct rows.
        idx = [int(np.flatnonzero(np.all(x == row, axis=1))[0]) for row in c]
        assert len(set(idx)) == 3
    # With k = n distinct points every point must be chosen exactly once (zero-probability points never repeat).
    c = np.asarray(km.kmeans_plus_plus(jax.random.key(0), x, k=5))
    assert sorted(map(tuple, c.tolist())) == sorted(map(tuple, x.tolist()))


def test_objective_non_increasing_and_matches_recomputation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    res = km.kmeans(x, k=7, key=3, n_init=1, max_iter=50, tol=0.0)
    hist = np.asarray(res.inertia_history)
    hist = hist[~np.isnan(hist)]
    assert len(hist) >= 3
    assert np.all(np.diff(hist) <= 1e-9 * hist[0])
    # Final inertia equals an independent numpy computation from the returned centroids and labels.
    c = np.asarray(res.centroids)
    d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(np.asarray(res.labels), d.argmin(1))
    assert float(res.inertia) == pytest.approx(d.min(1).sum())
    # Centroids are the means of their points (a Lloyd fixed point).
    for j in range(7):
        np.testing.assert_allclose(c[j], x[np.asarray(res.labels) == j].mean(0), atol=1e-10)


def test_empty_cluster_is_reseeded_at_farthest_point():
    # Centroid 2 is far away from every point, so the first assignment leaves it empty.
    x = np.array([[0.0], [1.0], [2.0], [20.0]])
    new, labels, inertia, n_empty = km.lloyd_step(x, np.array([[0.5], [15.0], [1000.0]]))
    np.testing.assert_array_equal(np.asarray(labels), [0, 0, 0, 1])
    assert int(n_empty) == 1
    # Distances to own centroid: 0.25, 0.25, 2.25, 25 -> farthest point is 20.
    np.testing.assert_allclose(np.asarray(new)[:, 0], [1.0, 20.0, 20.0])
    assert float(inertia) == pytest.approx(0.25 + 0.25 + 2.25 + 25.0)
    res = km.kmeans(x, k=3, init=np.array([[0.5], [15.0], [1000.0]]))
    # Every cluster ends non-empty and the objective is the optimum for this data.
    assert set(np.asarray(res.labels).tolist()) == {0, 1, 2}
    assert int(res.n_reseeded) >= 1


def _best_partition_inertia(x, k):
    best = np.inf
    n = len(x)
    for lab in itertools.product(range(k), repeat=n):
        if len(set(lab)) < k:
            continue
        lab = np.array(lab)
        best = min(best, sum(((x[lab == j] - x[lab == j].mean(0)) ** 2).sum() for j in range(k)))
    return best


def test_restarts_reach_global_optimum_on_tiny_set():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 2))
    res = km.kmeans(x, k=3, key=0, n_init=20)
    assert float(res.inertia) == pytest.approx(_best_partition_inertia(x, 3), rel=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_scipy_on_separable_blobs(dtype):
    rng = np.random.default_rng(2)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10], [5, 20]], float)
    x = np.concatenate([c + rng.normal(scale=0.5, size=(40, 2)) for c in centres]).astype(dtype)
    truth = np.repeat(np.arange(5), 40)
    res = km.kmeans(x, k=5, key=0, n_init=5)
    assert np.asarray(res.centroids).dtype == dtype
    ours = np.asarray(res.labels)
    # Oracle: scipy's kmeans2 started from our final centroids must not move them, and its labels agree.
    c_sp, lab_sp = kmeans2(x.astype(np.float64), np.asarray(res.centroids, np.float64), minit="matrix", iter=20)
    np.testing.assert_allclose(np.asarray(res.centroids), c_sp, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(ours, lab_sp)
    # And the partition is the generating one (up to relabelling).
    for j in range(5):
        assert len(set(ours[truth == j])) == 1
    assert len(set(ours)) == 5
    inertia = sum(((x[ours == j] - x[ours == j].mean(0)) ** 2).sum() for j in range(5))
    assert float(res.inertia) == pytest.approx(inertia, rel=1e-4)


def test_deterministic_for_key_and_jittable():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(60, 3)))
    a = km.kmeans(x, k=4, key=11)
    b = km.kmeans(x, k=4, key=11)
    np.testing.assert_array_equal(np.asarray(a.centroids), np.asarray(b.centroids))
    lab, _ = jax.jit(km.assign)(x, a.centroids)
    np.testing.assert_array_equal(np.asarray(lab), np.asarray(a.labels))


def test_errors_name_shapes():
    with pytest.raises(ValueError, match=r"k=5 .*\(3, 2\)"):
        km.kmeans(np.zeros((3, 2)), k=5)
    with pytest.raises(ValueError, match="shape"):
        km.kmeans(np.zeros((3,)), k=1)
    with pytest.raises(ValueError, match="non-finite.*\\[1\\]"):
        km.kmeans(np.array([[0.0], [np.nan], [1.0]]), k=2)
    with pytest.raises(ValueError, match=r"init must have shape \(2, 1\)"):
        km.kmeans(np.zeros((3, 1)), k=2, init=np.zeros((3, 1)))
