"""TagProp: gradients, the leave-one-out likelihood against a numpy loop, metric learning on planted data."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from dcca_jax.tagging import recommend, tagprop

pytestmark = pytest.mark.usefixtures("fast_compiles")  # many small programs, each compiled once


def _data(n=14, d=3, v=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = (rng.random((n, v)) < 0.4).astype(float)
    return x, y


def _numpy_loo(x, y, params, *, k, weighting, sigma_ml, eps):
    """Direct loop: each image's K nearest other images, its weights, probabilities and log-likelihood."""
    n, v = y.shape
    groups = len(params["theta"]) if weighting == "distance" else 1
    blocks = np.array_split(np.arange(x.shape[1]), groups)
    nbs, dists = [], []
    for i in range(n):
        d2 = ((x - x[i]) ** 2).sum(1)
        d2[i] = np.inf
        nb = np.argsort(d2, kind="stable")[:k]
        nbs.append(nb)
        dists.append(np.array([[((x[i, b] - x[j, b]) ** 2).sum() for b in blocks] for j in nb]))
    scales = np.mean(dists, axis=(0, 1))
    total = 0.0
    for i in range(n):
        if weighting == "rank":
            g = np.exp(params["g"] - params["g"].max())
            pi = g / g.sum()
        else:
            dw = (dists[i] / scales) @ np.exp(params["theta"])
            e = np.exp(-(dw - dw.min()))
            pi = e / e.sum()
        for w in range(v):
            xw = sum(pi[r] * y[j, w] for r, j in enumerate(nbs[i]))
            if sigma_ml:
                p = 1.0 / (1.0 + np.exp(-(np.exp(params["log_alpha"][w]) * xw + params["beta"][w])))
            else:
                p = eps + (1 - 2 * eps) * xw
            total += np.log(p) if y[i, w] else np.log(1 - p)
    return total / (n * v), np.array(nbs)


def _random_params(weighting, k, groups, v, sigma_ml, seed=1):
    rng = np.random.default_rng(seed)
    p = {"g": rng.normal(size=k)} if weighting == "rank" else {"theta": rng.normal(size=groups)}
    if sigma_ml:
        p |= {"log_alpha": rng.normal(1.0, 0.5, size=v), "beta": rng.normal(-1.0, 0.5, size=v)}
    return {name: jnp.asarray(a) for name, a in p.items()}


@pytest.mark.parametrize("weighting,groups,sigma_ml", [("rank", 1, False), ("rank", 1, True),
                                                       ("distance", 1, False), ("distance", 3, True)])
def test_loo_likelihood_matches_numpy_loop(weighting, groups, sigma_ml):
    x, y = _data()
    k, eps = 4, 1e-3
    params = _random_params(weighting, k, groups, y.shape[1], sigma_ml)
    want, want_nb = _numpy_loo(x, y, {n: np.asarray(a) for n, a in params.items()}, k=k, weighting=weighting,
                               sigma_ml=sigma_ml, eps=eps)
    nb = tagprop.nearest_neighbours(x, x, k=k, exclude_self=True)
    np.testing.assert_array_equal(np.asarray(nb), want_nb)
    d = tagprop.base_distances(x, x, nb, groups=groups)
    d = d / d.mean(axis=(0, 1))
    ll = jax.jit(functools.partial(tagprop.log_likelihood, weighting=weighting, k=k, sigma_ml=sigma_ml, eps=eps))
    got = ll(params, d, jnp.asarray(y)[nb], jnp.asarray(y))
    assert float(got) == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("weighting,sigma_ml", [("rank", True), ("distance", True), ("distance", False)])
def test_gradient_matches_finite_differences(weighting, sigma_ml):
    x, y = _data(n=10, d=4, v=3)
    k = 3
    params = _random_params(weighting, k, 2, y.shape[1], sigma_ml)
    nb = tagprop.nearest_neighbours(x, x, k=k, exclude_self=True)
    d = tagprop.base_distances(x, x, nb, groups=2)
    f = lambda p: tagprop.log_likelihood(p, d, jnp.asarray(y)[nb], jnp.asarray(y), weighting=weighting, k=k,
                                         sigma_ml=sigma_ml, eps=1e-3)
    check_grads(f, (params,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_learned_distance_weights_recover_planted_feature():
    # Feature 0 decides the tags (which of 4 bins it falls in); features 1-4 are noise of the same scale.
    rng = np.random.default_rng(0)
    n, d = 400, 5
    x = rng.uniform(size=(n, d))
    y = np.eye(4)[np.minimum((x[:, 0] * 4).astype(int), 3)]
    model = tagprop.fit_tagprop(x, y, config={"k": 20, "weighting": "distance", "feature_groups": d,
                                              "normalize": False, "sigma_ml": False, "epochs": 40,
                                              "batch_size": 100, "learning_rate": 0.1})
    w = np.asarray(tagprop.distance_weights(model))
    assert w.shape == (d,) and (w >= 0).all()
    assert w[0] > 10 * w[1:].max(), w
    assert model.history[-1] < model.history[0]
    # and the learned model tags held-out points by their planted feature
    xq = rng.uniform(size=(50, d))
    yq = np.eye(4)[np.minimum((xq[:, 0] * 4).astype(int), 3)]
    pred = recommend.select_tags(tagprop.tagprop_scores(model, xq), n=1, prior=recommend.tag_prior(y)).indicator
    assert (np.asarray(pred) * yq).sum() >= 45


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighting", ["rank", "distance"])
def test_fit_and_scores_in_both_precisions(dtype, weighting):
    x, y = _data(n=40, d=6, v=5)
    cfg = {"k": 5, "weighting": weighting, "feature_groups": 2, "epochs": 3, "batch_size": 16}
    model = tagprop.fit_tagprop(x.astype(dtype), y.astype(dtype), config=cfg)
    s = tagprop.tagprop_scores(model, x[:7].astype(dtype))
    assert s.dtype == dtype and s.shape == (7, 5)
    assert np.isfinite(np.asarray(s)).all() and ((np.asarray(s) > 0) & (np.asarray(s) < 1)).all()
    if dtype == np.float32:  # same run in float64 agrees to float32 accuracy
        m64 = tagprop.fit_tagprop(x, y, config=cfg)
        np.testing.assert_allclose(np.asarray(s), np.asarray(tagprop.tagprop_scores(m64, x[:7])), atol=2e-4)


def test_rank_weights_positive_and_normalised():
    pi = tagprop.neighbour_weights({"g": jnp.array([2.0, 0.0, -1.0])}, None, weighting="rank", k=3)
    e = np.exp([2.0, 0.0, -1.0])
    np.testing.assert_allclose(np.asarray(pi)[0], e / e.sum(), rtol=1e-12)


def test_errors_name_shapes():
    x, y = _data(n=10)
    with pytest.raises(ValueError, match=r"\(10, 3\).*\(9, 4\)"):
        tagprop.fit_tagprop(x, y[:9])
    with pytest.raises(ValueError, match="K=10"):
        tagprop.fit_tagprop(x, y, config={"k": 10})
    with pytest.raises(ValueError, match="weighting"):
        tagprop.fit_tagprop(x, y, config={"k": 3, "weighting": "nope"})
    model = tagprop.fit_tagprop(x, y, config={"k": 3, "epochs": 1})
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(10, 3\)"):
        tagprop.tagprop_scores(model, np.ones((2, 5)))
    with pytest.raises(ValueError, match="K=4"):
        tagprop.log_likelihood({"g": jnp.zeros(4)}, None, jnp.zeros((10, 3, 4)), jnp.zeros((10, 4)),
                               weighting="rank", k=4, sigma_ml=False, eps=1e-3)


def test_non_finite_loss_raises():
    x, y = _data(n=20)
    with pytest.raises(ValueError, match="non-finite"):
        tagprop.fit_tagprop(x, y, config={"k": 3, "epochs": 2, "learning_rate": float("nan")})
