"""Metrics against hand-computed cases (words never predicted, images with no tag) and resampling oracles."""
import jax
import numpy as np
import pytest

from dcca_jax.tagging import metrics

# 4 images, 5 words. Image 2 has no ground-truth tag; word 3 is never predicted; word 4 never occurs in truth.
TRUTH = np.array([[1, 1, 0, 0, 0],
                  [0, 1, 0, 0, 0],
                  [0, 0, 0, 0, 0],
                  [0, 0, 1, 1, 0]])
PRED_IDX = np.array([[0, 2], [1, 0], [0, 1], [2, 4]])


def _pred():
    return metrics.top_n_indicator(PRED_IDX, n_words=5)


def test_per_image_hand_computed():
    m = metrics.per_image_metrics(_pred(), TRUTH)
    # precisions .5 .5 0 .5 over 4 images; recalls .5 1 - .5 over the 3 tagged images
    ap, ar = 1.5 / 4, 2.0 / 3
    np.testing.assert_allclose(m["per_image/AP"], ap)
    np.testing.assert_allclose(m["per_image/AR"], ar)
    np.testing.assert_allclose(m["per_image/AF"], 2 * ap * ar / (ap + ar))
    assert int(m["per_image/n_no_tag"]) == 1 and int(m["per_image/n_images"]) == 4
    assert int(m["per_image/n_no_prediction"]) == 0


def test_per_word_hand_computed():
    m = metrics.per_word_metrics(_pred(), TRUTH)
    # word 0: 1 hit / 3 predicted / 1 true; word 1: 1/2/2; word 2: 1/2/1; word 3: never predicted, 1 true.
    # word 4 is predicted once but never true: excluded from the averages.
    p = (1 / 3 + 1 / 2 + 1 / 2 + 0) / 4
    r = (1 + 1 / 2 + 1 + 0) / 4
    np.testing.assert_allclose(m["per_word/P"], p)
    np.testing.assert_allclose(m["per_word/R"], r)
    np.testing.assert_allclose(m["per_word/F1"], 2 * p * r / (p + r))
    assert int(m["per_word/N+"]) == 3
    assert int(m["per_word/n_words"]) == 4 and int(m["per_word/n_absent"]) == 1
    assert int(m["per_word/n_never_predicted"]) == 1


def test_word_scores_hand_computed():
    w = metrics.word_scores(_pred(), TRUTH)
    # the same counts as above, word by word
    p = np.array([1 / 3, 1 / 2, 1 / 2, 0, 0])
    r = np.array([1, 1 / 2, 1, 0, 0])
    np.testing.assert_allclose(w["P"], p)
    np.testing.assert_allclose(w["R"], r)
    np.testing.assert_allclose(w["F1"], [0.5, 0.5, 2 / 3, 0, 0])
    np.testing.assert_array_equal(w["present"], [True, True, True, True, False])


def test_no_prediction_counts_as_zero_precision():
    pred = np.zeros_like(TRUTH)
    m = metrics.evaluate(pred, TRUTH)
    assert float(m["per_image/AP"]) == 0 and float(m["per_image/AF"]) == 0
    assert int(m["per_image/n_no_prediction"]) == 4
    assert float(m["per_word/P"]) == 0 and int(m["per_word/N+"]) == 0 and float(m["per_word/F1"]) == 0


def test_top_n_from_scores_matches_argsort():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(7, 11))
    ind = np.asarray(metrics.top_n_indicator(s, n=3))
    oracle = np.zeros_like(ind)
    np.put_along_axis(oracle, np.argsort(-s, axis=1)[:, :3], 1, axis=1)
    np.testing.assert_array_equal(ind, oracle)


def test_labelled_keys_and_jit():
    m = jax.jit(metrics.evaluate)(_pred(), TRUTH)
    assert set(metrics.METRIC_KEYS) <= set(m)
    assert all(k.startswith(("per_word/", "per_image/")) for k in m)
    py = metrics.to_python(m)
    assert isinstance(py["per_word/N+"], int) and isinstance(py["per_image/AF"], float)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 4\)"):
        metrics.evaluate(_pred(), TRUTH[:, :4])


def test_bootstrap_resample_equals_explicit_duplication():
    rng = np.random.default_rng(1)
    truth = (rng.random((30, 8)) < 0.3).astype(float)
    pred = (rng.random((30, 8)) < 0.3).astype(float)
    rep = rng.integers(0, 30, size=30)
    counts = np.bincount(rep, minlength=30)[None].astype(float)
    got = metrics._bootstrap_all(jax.numpy.asarray(pred), jax.numpy.asarray(truth), jax.numpy.asarray(counts))
    want = metrics.evaluate(pred[rep], truth[rep])
    for k in metrics.METRIC_KEYS:
        np.testing.assert_allclose(np.asarray(got[k])[0], want[k], err_msg=k)


def test_paired_bootstrap_intervals():
    rng = np.random.default_rng(2)
    truth = (rng.random((200, 20)) < 0.2).astype(float)
    noise = (rng.random((200, 20)) < 0.2).astype(float)
    good = np.clip(truth * (rng.random((200, 20)) < 0.8) + 0 * noise, 0, 1)
    bad = noise
    same = metrics.paired_bootstrap(good, good, truth, n_resamples=200)
    assert same["per_word/F1"] == {"diff": 0.0, "low": 0.0, "high": 0.0, "p_le_0": 1.0, "boot_mean": 0.0}
    res = metrics.paired_bootstrap(good, bad, truth, n_resamples=200, keys=("per_image/AF", "per_word/F1"))
    for k, v in res.items():
        full = float(metrics.evaluate(good, truth)[k] - metrics.evaluate(bad, truth)[k])
        np.testing.assert_allclose(v["diff"], full)
        assert 0 < v["low"] <= v["diff"] <= v["high"] and v["p_le_0"] == 0.0


def test_top_n_skips_minus_infinity():
    s = np.array([[0.3, -np.inf, 0.1, -np.inf], [1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(metrics.top_n_indicator(s, n=3), [[1, 0, 1, 0], [0, 1, 1, 1]])


# ------------------------------------------------------------------------------------- cross-modal retrieval
# 3 images x 4 words; image 2 has no tag (no relevant word: excluded from i2t), word 3 no image (excluded from t2i).
R_SCORES = np.array([[.9, .6, .1, .3],
                     [.5, .4, .6, .0],
                     [.7, .6, .1, .2]])
R_TRUTH = np.array([[1, 0, 1, 0],
                    [0, 1, 0, 0],
                    [0, 0, 0, 0]])


def test_retrieval_hand_computed():
    m = metrics.retrieval_metrics(R_SCORES, R_TRUTH, k=2)
    # image 0 ranks w0 (hit), w1, w3, w2 (hit): AP = (1/1 + 2/4) / 2; image 1 ranks w2, w0, w1 (hit): AP = 1/3.
    assert m["i2t/mAP"] == pytest.approx((0.75 + 1 / 3) / 2)
    assert (m["i2t/n_queries"], m["i2t/n_no_relevant"]) == (2, 1)
    # w0: image 0 first (AP 1); w1: images 0 and 2 tie at .6 and keep their order, image 1 third (AP 1/3);
    # w2: image 1, then image 0 (tied with image 2 at .1, earlier) second (AP 1/2). P@2: 1/2, 0, 1/2.
    assert m["t2i/mAP"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    assert m["t2i/P@2"] == pytest.approx(1 / 3)
    assert (m["t2i/n_queries"], m["t2i/n_no_relevant"]) == (3, 1)
    ap = np.asarray(metrics.average_precision(R_SCORES, R_TRUTH))
    assert np.isnan(ap[2]) and ap[0] == pytest.approx(0.75)
    np.testing.assert_allclose(jax.jit(metrics.average_precision)(R_SCORES, R_TRUTH), ap)


def test_retrieval_nan_and_inf_rank_last_and_p_at_k_is_capped():
    s = np.array([[np.nan, -np.inf, 0.1]])
    assert float(metrics.average_precision(s, np.array([[0, 0, 1]]))[0]) == 1.0
    assert float(metrics.precision_at_k(s, np.array([[1, 1, 1]]), k=10)[0]) == 1.0


def test_random_ranking_ap_against_enumeration():
    import itertools

    for n, r in ((5, 2), (6, 1), (6, 3), (4, 4)):
        rel = np.array([1] * r + [0] * (n - r))
        perms = np.array([rel[list(p)] for p in itertools.permutations(range(n))])
        scores = np.broadcast_to(-np.arange(n, dtype=float), perms.shape)  # rank = position
        brute = np.asarray(metrics.average_precision(scores, perms)).mean()
        assert metrics.random_ranking_ap(n, r) == pytest.approx(brute, rel=1e-6), (n, r)


def test_paired_bootstrap_map():
    rng = np.random.default_rng(0)
    a = rng.random(200)
    a[:5] = np.nan  # queries without a relevant item: dropped
    b = a + 0.1
    out = metrics.paired_bootstrap_map({"a": a, "b": b}, reference="a", n_boot=500)
    assert out["a"]["diff"] == 0 and out["a"]["diff_lo"] == 0 and out["a"]["diff_hi"] == 0
    assert out["b"]["diff"] == pytest.approx(0.1) and out["b"]["diff_lo"] == pytest.approx(0.1)
    assert out["a"]["mAP"] == pytest.approx(np.nanmean(a))
    assert out["a"]["mAP_lo"] < out["a"]["mAP"] < out["a"]["mAP_hi"]
    # the percentile interval of a mean of 195 uniforms: about +/- 1.96 * 0.289 / sqrt(195) = +/- .041
    assert out["a"]["mAP_hi"] - out["a"]["mAP_lo"] == pytest.approx(2 * 1.96 * np.nanstd(a) / np.sqrt(195), rel=0.2)
    with pytest.raises(ValueError, match="reference"):
        metrics.paired_bootstrap_map({"a": a}, reference="c")
