"""kNN transfer, 2PKNN, tag ranking and chunked top-k against numpy oracles and hand-built rare-word cases."""
import jax
import numpy as np
import pytest

from dcca_jax.tagging import recommend


def _dense_topk(q, it, k):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    it = it / np.linalg.norm(it, axis=1, keepdims=True)
    s = q @ it.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, axis=1), idx


@pytest.mark.parametrize("query_chunk,item_chunk", [(64, 100), (1000, 5000), (7, 3)])
def test_chunked_topk_matches_argsort(query_chunk, item_chunk):
    rng = np.random.default_rng(0)
    q, it = rng.normal(size=(300, 16)), rng.normal(size=(1000, 16))
    v, i = recommend.chunked_topk(q, it, k=7, query_chunk=query_chunk, item_chunk=item_chunk)
    ov, oi = _dense_topk(q, it, 7)
    np.testing.assert_array_equal(np.asarray(i), oi)
    np.testing.assert_allclose(np.asarray(v), ov, rtol=1e-10)


def test_chunked_topk_float32_and_inner_product():
    rng = np.random.default_rng(1)
    q, it = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(230, 8)).astype(np.float32)
    v, i = recommend.chunked_topk(q, it, k=5, query_chunk=16, item_chunk=64, cosine=False)
    assert v.dtype == np.float32
    s = q.astype(np.float64) @ it.T.astype(np.float64)
    oi = np.argsort(-s, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(np.asarray(i), oi)
    with pytest.raises(ValueError, match="k=231"):
        recommend.chunked_topk(q, it, k=231)
    with pytest.raises(ValueError, match=r"\(50, 8\).*\(230, 7\)"):
        recommend.chunked_topk(q, it[:, :7], k=3)


def test_knn_vote_scores_against_loop():
    rng = np.random.default_rng(2)
    q, it = rng.normal(size=(20, 6)), rng.normal(size=(80, 6))
    y = (rng.random((80, 9)) < 0.3).astype(float)
    s, i = recommend.chunked_topk(q, it, k=5)
    got = np.asarray(recommend.knn_vote_scores(s, i, y))
    ov, oi = _dense_topk(q, it, 5)
    want = np.zeros((20, 9))
    for a in range(20):
        for b in range(5):
            want[a] += max(ov[a, b], 0) * y[oi[a, b]]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_two_pass_knn_against_loop():
    rng = np.random.default_rng(3)
    q, it = rng.normal(size=(11, 5)), rng.normal(size=(60, 5))
    y = (rng.random((60, 7)) < 0.25).astype(float)
    y[:, 6] = 0
    y[4, 6] = 1  # a word with a single training item
    got = np.asarray(recommend.two_pass_knn_scores(q, it, y, k1=2, temperature=0.3, query_chunk=4))
    s = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (it / np.linalg.norm(it, axis=1, keepdims=True)).T
    want = np.zeros((11, 7))
    for a in range(11):
        union = set()
        for w in range(7):
            carriers = np.flatnonzero(y[:, w])
            union |= set(carriers[np.argsort(-s[a, carriers], kind="stable")[:2]].tolist())
        for j in union:
            want[a] += np.exp(-(1 - s[a, j]) / 0.3) * y[j]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert (got[:, 6] > 0).all()  # the one-item word is voted for in every query


def test_tag_ranking_against_numpy():
    rng = np.random.default_rng(4)
    q, t = rng.normal(size=(6, 4)), rng.normal(size=(9, 4))
    want = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T
    np.testing.assert_allclose(recommend.tag_ranking_scores(q, t), want, rtol=1e-12)
    cfg = recommend.transfer_config()
    cfg.method = "tag_ranking"
    np.testing.assert_allclose(recommend.transfer_scores(q, q, np.zeros((6, 9)), config=cfg, tag_z=t), want)


# Hand-built rare-word cases. Words: 0 sky, 1 water, 2 grass, 3 tiger (rare). Query along e0.
SKY, WATER, GRASS, TIGER = range(4)


def _unit(angle_deg, extra=()):
    a = np.deg2rad(angle_deg)
    return np.array([np.cos(a), np.sin(a), *extra])


def _two_pass_case():
    sims = [0.999, 0.998, 0.997, 0.996, 0.995, 0.99, 0.97, 0.96, 0.3]
    items = np.stack([_unit(np.rad2deg(np.arccos(s))) for s in sims])
    y = np.zeros((9, 4))
    y[:5, [SKY, WATER]] = 1
    y[5, [SKY, GRASS]] = 1
    y[6:8, TIGER] = 1
    y[8, GRASS] = 1
    return np.array([[1.0, 0.0]]), items, y


def test_two_pass_recovers_rare_word_that_knn_misses():
    q, items, y = _two_pass_case()
    cfg = recommend.transfer_config()
    cfg.k = 6
    plain = np.asarray(recommend.recommend_top_n(recommend.transfer_scores(q, items, y, config=cfg), n=3))[0]
    assert set(plain) == {SKY, WATER, GRASS}
    cfg.method, cfg.k1, cfg.weighting = "2pknn", 2, "exp"
    two = np.asarray(recommend.recommend_top_n(recommend.transfer_scores(q, items, y, config=cfg), n=3))[0]
    # hand computation: tiger = e^-0.3 + e^-0.4 = 1.41 > grass = e^-0.1 + e^-7 = 0.906
    assert set(two) == {SKY, WATER, TIGER}


def test_frequency_weighting_recovers_rare_word():
    # 6 sky+water items, 2 grass items and 1 tiger item among the 9 neighbours; 30 far grass items make grass
    # frequent in training, tiger is seen twice.
    near = np.stack([_unit(a) for a in (1, 2, 3, 4, 5, 6, 7, 8, 9)])
    far = np.stack([_unit(80 + a / 10) for a in range(31)])
    items = np.concatenate([near, far])
    y = np.zeros((40, 4))
    y[:6, [SKY, WATER]] = 1
    y[6:8, GRASS] = 1
    y[8, TIGER] = 1
    y[9:39, GRASS] = 1
    y[39, TIGER] = 1
    q = np.array([[1.0, 0.0]])
    cfg = recommend.transfer_config()
    cfg.k, cfg.weighting = 9, "uniform"
    plain = recommend.transfer_scores(q, items, y, config=cfg)
    assert set(np.asarray(recommend.recommend_top_n(plain, n=3))[0]) == {SKY, WATER, GRASS}
    cfg.freq_power = 1.0
    fw = np.asarray(recommend.transfer_scores(q, items, y, config=cfg))[0]
    freq = (1 + y.sum(0)) / 40
    np.testing.assert_allclose(fw, np.array([6, 6, 2, 1]) / freq)  # hand computation
    assert TIGER in np.asarray(recommend.recommend_top_n(fw[None], n=3))[0]


def test_correlation_power_recovers_rare_word():
    # third direction barely correlated (rho 0.05) but large: it decides plain cosine neighbours
    rho = np.array([0.9, 0.9, 0.05])
    q = np.array([[1.0, 0.0, 5.0]])
    items = np.array([[0.0, 1.0, 5.0], [0.1, 1.0, 4.0], [1.0, 0.0, -3.0]])
    y = np.zeros((3, 4))
    y[:2, SKY] = 1
    y[2, TIGER] = 1
    cfg = recommend.transfer_config()
    cfg.k = 1
    top = lambda c: int(np.asarray(recommend.recommend_top_n(
        recommend.transfer_scores(q, items, y, config=c, correlations=rho), n=1))[0, 0])
    assert top(cfg) == SKY
    cfg.corr_power = 4.0
    assert top(cfg) == TIGER
    np.testing.assert_allclose(recommend.scale_by_correlation(q, rho, power=4.0), q * rho ** 4)
    with pytest.raises(ValueError, match="correlations"):
        recommend.transfer_scores(q, items, y, config=cfg)


class _LinearModel:
    """A fixed linear correlation model: enough of the CorrelationModel API for recommend_from_model."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def transform(self, x_v=None, x_s=None):
        return (None if x_v is None else x_v @ self.a), (None if x_s is None else x_s @ self.b)


def test_recommend_from_model_matches_manual_projection():
    rng = np.random.default_rng(5)
    xv, xs = rng.normal(size=(40, 6)), (rng.random((40, 5)) < 0.4).astype(float)
    xq = rng.normal(size=(7, 6))
    model = _LinearModel(rng.normal(size=(6, 3)), rng.normal(size=(5, 3)))
    cfg = recommend.transfer_config()
    cfg.k, cfg.against, cfg.n_tags = 4, "semantic", 2
    idx, scores = recommend.recommend_from_model(model, xq, train_v=xv, train_s=xs, train_labels=xs, config=cfg)
    want = recommend.transfer_scores(xq @ model.a, xs @ model.b, xs, config=cfg)
    np.testing.assert_allclose(scores, want)
    assert idx.shape == (7, 2)
    # The package's one top-n rule: ties and empty places follow the training tag prior.
    want_idx, _ = _select_oracle(np.asarray(want), (xs > 0).sum(0), 2, "prior")
    np.testing.assert_array_equal(idx, want_idx)


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="'bogus'"):
        recommend.transfer_scores(np.ones((2, 2)), np.ones((3, 2)), np.ones((3, 2)), config={"method": "bogus"})


# ------------------------------------------------------------------------------------ the one top-n rule

def _select_oracle(scores, prior, n, fill):
    """Direct Python statement of the rule: positive scores by (score, prior, -index), then the prior."""
    out, flags = [], []
    for row in np.asarray(scores, float):
        cand = [w for w in range(len(row)) if np.isfinite(row[w]) and row[w] > 0]
        # stable prior order: larger prior first, then lower index
        prior_rank = {w: r for r, w in enumerate(sorted(range(len(row)), key=lambda w: (-prior[w], w)))}
        cand.sort(key=lambda w: (-row[w], prior_rank[w]))
        picks = cand[:n]
        f = [False] * len(picks)
        if fill == "prior":
            for w in sorted(range(len(row)), key=lambda w: prior_rank[w]):
                if len(picks) == n:
                    break
                if w not in picks:
                    picks.append(w)
                    f.append(True)
        out.append(picks + [-1] * (n - len(picks)))
        flags.append(f + [False] * (n - len(f)))
    return np.array(out), np.array(flags)


def test_select_tags_fills_from_the_prior_when_votes_cover_fewer_than_n():
    # Two neighbours vote for words 0 and 3 only; n = 4: two places come from the prior, most frequent first
    # (word 4, then word 1; word 3 is already chosen and is skipped).
    scores = np.array([[0.5, 0.0, 0.0, 0.9, 0.0, 0.0]])
    prior = np.array([1.0, 5.0, 3.0, 7.0, 9.0, 0.0])
    sel = recommend.select_tags(scores, n=4, prior=prior)
    np.testing.assert_array_equal(sel.indices, [[3, 0, 4, 1]])
    np.testing.assert_array_equal(sel.from_prior, [[False, False, True, True]])
    np.testing.assert_array_equal(sel.indicator, [[1, 1, 0, 1, 1, 0]])
    # The old rule (plain top-k) would have padded with the lowest-index zero-score words 1 and 2.
    none = recommend.select_tags(scores, n=4, prior=prior, fill="none")
    np.testing.assert_array_equal(none.indices, [[3, 0, -1, -1]])
    np.testing.assert_array_equal(none.indicator.sum(), 2)


def test_select_tags_breaks_ties_by_the_prior_not_the_word_index():
    # Words 0, 2 and 5 tie for the last place; the most frequent of them (5) wins, not word 0.
    scores = np.array([[0.2, 0.9, 0.2, 0.0, 0.0, 0.2]])
    prior = np.array([2.0, 1.0, 3.0, 0.0, 0.0, 8.0])
    np.testing.assert_array_equal(recommend.select_tags(scores, n=2, prior=prior).indices, [[1, 5]])


def test_select_tags_never_uses_minus_inf_or_nan_as_evidence():
    scores = np.array([[-np.inf, 3.0, np.nan, -1.0]])
    sel = recommend.select_tags(scores, n=3, prior=np.array([4.0, 1.0, 3.0, 2.0]))
    np.testing.assert_array_equal(sel.indices, [[1, 0, 2]])
    np.testing.assert_array_equal(sel.from_prior, [[False, True, True]])


@pytest.mark.parametrize("fill", ["prior", "none"])
def test_select_tags_matches_a_direct_oracle_on_tied_random_scores(fill):
    rng = np.random.default_rng(0)
    scores = rng.integers(-1, 3, size=(60, 9)).astype(float)  # many ties and many non-positive rows
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    prior = rng.integers(0, 4, size=9).astype(float)  # tied priors too
    for n in (1, 3, 9):
        want_idx, want_flags = _select_oracle(scores, prior, n, fill)
        sel = recommend.select_tags(scores, n=n, prior=prior, fill=fill, row_chunk=16)
        np.testing.assert_array_equal(sel.indices, want_idx)
        np.testing.assert_array_equal(sel.from_prior, want_flags)
        np.testing.assert_array_equal(sel.indicator, _indicator_of(want_idx, scores.shape))


def _indicator_of(indices, shape):
    """0/1 matrix of the tag indices of each row (-1 = an empty place)."""
    ind = np.zeros(shape)
    for r, row in enumerate(indices):
        ind[r, row[row >= 0]] = 1
    return ind


@pytest.mark.parametrize("fill", ["prior", "none"])
def test_first_places_of_the_widest_selection_equal_each_selection(fill):
    rng = np.random.default_rng(1)
    scores = rng.integers(-1, 3, size=(60, 9)).astype(float)  # ties, rows with 0..9 positive scores
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    prior = rng.integers(0, 4, size=9).astype(float)
    widest = recommend.select_tags(scores, n=9, prior=prior, fill=fill)
    for n in range(1, 10):
        want_idx, want_flags = _select_oracle(scores, prior, n, fill)
        got = recommend.first_places(widest, n)
        np.testing.assert_array_equal(got.indices, want_idx)
        np.testing.assert_array_equal(got.from_prior, want_flags)
        np.testing.assert_array_equal(got.indicator, _indicator_of(want_idx, scores.shape))
    with pytest.raises(ValueError, match="n=10"):
        recommend.first_places(widest, 10)


def test_select_tags_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_tags"):
        recommend.select_tags(np.zeros((2, 3)), n=4, prior=None)
    with pytest.raises(ValueError, match="prior"):
        recommend.select_tags(np.zeros((2, 3)), n=2, prior=np.ones(4))
