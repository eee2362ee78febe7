"""Semantic view: bag of deep words against hand computations, baselines, awkward input, the entry point."""
from __future__ import annotations

import numpy as np
import pytest

from dcca_jax.semantic import deepwords as dw
from dcca_jax.semantic import skipgram

# Hand-placed word vectors: three obvious directions, so the 3 clusters are {sky, cloud}, {sea, wave}, {tiger}.
_WORDS = ("sky", "cloud", "sea", "wave", "tiger")
_VECS = np.array([[1.0, 0.1], [0.9, -0.1], [0.05, 1.0], [-0.05, 0.8], [-1.0, -1.0]], np.float32)


def _wv():
    return skipgram.WordVectors(_WORDS, _VECS, np.array([3, 1, 2, 1, 1]))


def _vocab():
    return dw.build_deep_words(_wv(), n_clusters=3, seed=0, n_init=5)


_TOY = [["sky", "sea", "cloud"], ["tiger"], [], ["sky", "unicorn"], [b"\xff\xfe", "wave"]]


def test_deep_word_clusters_are_the_obvious_ones():
    v = _vocab()
    a = dict(zip(v.words, v.assignment.tolist()))
    assert a["sky"] == a["cloud"] and a["sea"] == a["wave"]
    assert len({a["sky"], a["sea"], a["tiger"]}) == 3
    assert sorted(v.members(a["sea"])) == ["sea", "wave"]


def test_bag_of_deep_words_counts_by_hand():
    v = _vocab()
    a = dict(zip(v.words, v.assignment.tolist()))
    s, w, t = a["sky"], a["sea"], a["tiger"]
    m, rep = dw.bag_of_deep_words(_TOY, v, weighting="count", norm="none")
    expect = np.zeros((5, 3))
    expect[0, s], expect[0, w] = 2, 1  # sky + cloud share one deep word
    expect[1, t] = 1
    expect[3, s] = 1  # "unicorn" dropped
    expect[4, w] = 1  # undecodable bytes dropped, "wave" kept
    np.testing.assert_array_equal(m, expect)
    assert rep.empty_rows == [2]
    assert rep.unknown["unicorn"] == 1 and rep.n_unknown == 2  # unicorn + the U+FFFD tag
    assert rep.decode_error_rows == [4]
    assert "unicorn" in rep.message() and "U+FFFD" in rep.message()
    # L2 and L1 normalisation by hand on row 0: (2, 1) / sqrt(5) and (2, 1) / 3; the empty row stays zero.
    m2, _ = dw.bag_of_deep_words(_TOY, v, norm="l2")
    np.testing.assert_allclose(m2[0, [s, w]], np.array([2, 1]) / np.sqrt(5))
    np.testing.assert_array_equal(m2[2], 0)
    m1, _ = dw.bag_of_deep_words(_TOY, v, norm="l1")
    np.testing.assert_allclose(m1[0, [s, w]], [2 / 3, 1 / 3])
    mb, _ = dw.bag_of_deep_words(_TOY, v, weighting="binary", norm="none")
    assert mb[0, s] == 1


def test_tfidf_by_hand():
    v = _vocab()
    a = dict(zip(v.words, v.assignment.tolist()))
    s, w, t = a["sky"], a["sea"], a["tiger"]
    counts, _ = dw.bag_of_deep_words(_TOY, v, weighting="count", norm="none")
    idf = dw.idf_weights(counts)
    # N = 5 annotations; the sky and sea deep words occur in 2 of them, tiger in 1.
    np.testing.assert_allclose(idf[[s, w, t]], [np.log(6 / 3) + 1, np.log(6 / 3) + 1, np.log(6 / 2) + 1])
    m, _ = dw.bag_of_deep_words(_TOY, v, weighting="tfidf", norm="l1", idf=idf)
    row = np.array([2 * (np.log(2) + 1), np.log(2) + 1])
    np.testing.assert_allclose(m[0, [s, w]], row / row.sum())
    with pytest.raises(ValueError, match=r"idf of shape \(3,\)"):
        dw.bag_of_deep_words(_TOY, v, weighting="tfidf")


def test_bag_of_words_and_mean_vectors_by_hand():
    m, rep = dw.bag_of_words(_TOY, ["tiger", "sky", "sea", "cloud", "wave"])
    np.testing.assert_array_equal(
        m, [[0, 1, 1, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 1]]
    )
    assert rep.empty_rows == [2] and rep.unknown["unicorn"] == 1
    mv, rep = dw.mean_word_vectors(_TOY, _wv())
    np.testing.assert_allclose(mv[0], (_VECS[0] + _VECS[2] + _VECS[1]) / 3, rtol=1e-6)
    np.testing.assert_allclose(mv[3], _VECS[0])
    np.testing.assert_array_equal(mv[2], 0)
    with pytest.raises(ValueError, match="duplicate"):
        dw.bag_of_words(_TOY, ["sky", "sky"])


def test_clean_tag_lists_rules_and_errors():
    lists, rep = dw.clean_tag_lists([[" Sky ", "sky", "", "SEA"], ["caf\u00e9".encode()]], lowercase=True)
    assert lists == [["sky", "sea"], ["caf\u00e9"]]
    assert rep.decode_error_rows == []
    with pytest.raises(ValueError, match=r"test\[1\] is a single string"):
        dw.clean_tag_lists([["a"], "a b"], name="test")
    with pytest.raises(ValueError, match=r"tags\[0\] holds a int tag"):
        dw.clean_tag_lists([[3]])
    with pytest.raises(ValueError, match="n_clusters=9"):
        dw.build_deep_words(_wv(), n_clusters=9)


def _corpus(seed, n):
    rng = np.random.default_rng(seed)
    groups = [["sky", "cloud", "sun"], ["sea", "wave", "beach"], ["tiger", "cat", "grass"], ["car", "road", "city"]]
    out = []
    for _ in range(n):
        g = groups[rng.integers(4)]
        out.append([str(t) for t in rng.choice(g, size=rng.integers(1, 4), replace=False)])
    return out


def test_semantic_view_entry_point_and_round_trip(tmp_path):
    cfg = dw.semantic_config()
    cfg.n_clusters = 4
    cfg.skipgram.vector_size = 16
    cfg.skipgram.epochs = 10
    cfg.weighting = "tfidf"
    train = _corpus(0, 300)
    test = _corpus(1, 40) + [["zebra"], []]
    view = dw.semantic_view(train, test, config=cfg, names=["train", "test"])
    assert view.train.shape == (300, 4) and view.others[0].shape == (42, 4)
    assert str(view.train.dtype) == "float32"
    np.testing.assert_allclose(np.linalg.norm(np.asarray(view.train), axis=1), 1.0, rtol=1e-5)
    assert view.reports[1].unknown == {"zebra": 1} and view.reports[1].empty_rows == [40, 41]
    # The clusters recover the four co-occurrence groups.
    v = view.encoder.deep_words
    a = dict(zip(v.words, v.assignment.tolist()))
    for g in (["sky", "cloud", "sun"], ["sea", "wave", "beach"], ["tiger", "cat", "grass"], ["car", "road", "city"]):
        assert len({a[t] for t in g}) == 1
    assert len(set(a.values())) == 4
    # A single tag's vector is the unit vector of its deep word.
    tv, rep = view.encoder.tag_vectors(["sky", "zebra"])
    expect = np.zeros(4)
    expect[a["sky"]] = 1.0
    np.testing.assert_allclose(np.asarray(tv[0]), expect)
    assert rep.empty_rows == [1]
    back = dw.SemanticEncoder.load(view.encoder.save(tmp_path / "enc"))
    np.testing.assert_array_equal(np.asarray(back.encode(test)[0]), np.asarray(view.others[0]))
    # The other representations through the same entry point.
    cfg.representation = "bag_of_words"
    bow = dw.semantic_view(train, test, config=cfg)
    vocab = sorted({t for x in train for t in x})
    assert bow.encoder.vocabulary == tuple(vocab)
    expect = np.array([[float(w in x) for w in vocab] for x in train], np.float32)
    np.testing.assert_array_equal(np.asarray(bow.train), expect)  # raw binary vector by default
    cfg.representation = "mean_vectors"
    mv = dw.semantic_view(train, config=cfg, word_vectors=view.encoder.word_vectors)
    assert mv.train.shape == (300, 16) and mv.others == ()
    cfg.representation = "nope"
    with pytest.raises(ValueError, match="representation must be one of"):
        dw.semantic_view(train, config=cfg)
