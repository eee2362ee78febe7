"""Size rules (dcca_jax.sizes) against hand-computed limits, and one error that lists every impossible size."""
import numpy as np
import pytest

from dcca_jax import pipeline, sizes

# A hand-made split: 12 training images (fit rows 0-8, validation 9-11), 6 words, words 3-5 never in the fit part.
LABELS = np.array([
    [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0],
    [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0],
    [1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 1]], np.uint8)
FIT, VAL = np.arange(9), np.arange(9, 12)


def _shape(visual_dim=6, **kw):
    return sizes.DataShape.from_labels(LABELS, fit_rows=FIT, val_rows=VAL, n_test=5, visual_dim=visual_dim, **kw)


def test_data_shape_counts_by_hand():
    s = _shape()
    assert (s.n_train, s.n_fit, s.n_val, s.n_test, s.vocabulary, s.visual_dim) == (12, 9, 3, 5, 6, 6)
    assert s.fit_word_counts == (5, 4, 3, 0, 0, 0) and s.n_fit_tagged == 8
    assert s.words_with_vectors(1) == 3 and s.words_with_vectors(4) == 2
    per_image = LABELS.sum(1)  # 1 2 1 2 1 3 1 1 0 2 2 2
    assert s.tags_per_image == pytest.approx(per_image.mean()) == pytest.approx(18 / 12)
    assert (s.tags_min, s.tags_max, s.untagged) == (0, 3, 1)
    assert s.single_tag_share == pytest.approx(5 / 12)
    kept = sizes.DataShape.from_labels(LABELS, fit_rows=FIT[:-1], val_rows=VAL, n_test=5, visual_dim=6,
                                       train_rows=np.arange(11))
    assert kept.n_train == 11 and kept.n_fit == 8 and kept.tags_per_image == pytest.approx(16 / 11)


def test_auto_sizes_follow_the_rules_by_hand():
    res = sizes.resolve(pipeline.pipeline_config(), _shape())
    assert res.ok, res.problems
    v = res.values
    # d = 6, n_fit = 9, n_val = 3, n_train = 12, V = 6, W = 3, targets of targets_config().
    assert v["visual.autoencoder.code_dim"] == 6  # min(300, d = 6, n_fit - 1 = 8)
    assert v["visual.autoencoder.batch_size"] == 9  # min(128, n_fit)
    assert v["semantic.n_clusters"] == 2  # min(100, W - 1 = 2)
    assert v["cca.n_components"] == 2  # min(100, d_v = 6, d_s = 2, n_fit - 1)
    assert v["kcca.n_components"] == 2  # exact solver: min(100, d_v, d_s, n_fit - 1)
    assert "kcca.n_landmarks" not in v  # unused by the exact solver
    assert v["dcca.batch_size"] == 9  # min(1000, n_fit)
    assert v["dcca.towers.out_dim"] == 2  # min(100, d_v, d_s, min(batch, n_val) - 1 = 2)
    assert v["recommend.k"] == 10 and v["jec.k"] == 5  # below n_train = 12
    assert v["recommend.n_tags"] == 5  # the paper's protocol is not auto
    assert v["general_cca.pca_dims"] == 6 and v["general_cca.n_components"] == 6  # min(100, 6, V = 6)
    assert v["cca_knn.pca_dims"] == 6  # min(300, d, n_fit_tagged - 1 = 7)
    assert v["cca_knn.word2vec_dim"] == 100  # the skip-gram size
    assert v["cca_knn.n_components"] == 6  # min(100, V = 6, pca 6, word2vec 100)
    # Every used size is reported with its limit; "auto" is gone from the resolved config only.
    assert set(res.auto) == set(v) - {"recommend.n_tags"}
    assert res.config.cca.n_components == 2 and pipeline.pipeline_config().cca.n_components == "auto"
    d = res.to_dict()
    assert d["resolved"]["cca.n_components"] == {"value": 2, "auto": True, "min": 1, "max": 2,
                                                 "limit": "min(d_v = 6, d_s = 2)"}


def test_targets_and_limits_of_a_larger_split():
    rng = np.random.default_rng(0)
    labels = (rng.random((3000, 50)) < 0.1).astype(np.uint8)
    shape = sizes.DataShape.from_labels(labels, fit_rows=np.arange(2500), val_rows=np.arange(2500, 3000), n_test=9,
                                        visual_dim=1280)
    cfg = pipeline.pipeline_config()
    cfg.kcca.solver = "nystrom"
    cfg.recommend.n_tags = "auto"
    res = sizes.resolve(cfg, shape)
    v = res.values
    assert v["visual.autoencoder.code_dim"] == 300 and v["semantic.n_clusters"] == 49  # W - 1
    assert v["cca.n_components"] == 49  # d_s
    assert v["kcca.n_landmarks"] == 1000 and v["kcca.n_components"] == 49
    assert v["dcca.batch_size"] == 1000 and v["dcca.towers.out_dim"] == 49
    assert v["general_cca.n_components"] == 50  # min(100, pca 300, V = 50)
    assert v["cca_knn.n_components"] == 50  # min(100, V = 50, pca 300, word2vec 100)
    assert v["recommend.n_tags"] == round(labels.sum(1).mean())  # 5 of 50 words at 10%: about 5


def test_n_tags_auto_is_the_rounded_mean_and_few_tags_warn():
    single = np.eye(6, dtype=np.uint8)[np.arange(30) % 6]
    shape = sizes.DataShape.from_labels(single, fit_rows=np.arange(24), val_rows=np.arange(24, 30), n_test=3,
                                        visual_dim=10)
    cfg = pipeline.pipeline_config()
    res = sizes.resolve(cfg, shape)
    assert res.values["recommend.n_tags"] == 5 and len(res.warnings) == 1
    assert "1.00 tags on average" in res.warnings[0] and "n_tags=auto" in res.warnings[0]
    cfg.recommend.n_tags = "auto"
    res = sizes.resolve(cfg, shape)
    assert res.values["recommend.n_tags"] == 1 and not res.warnings
    assert res.values["general_cca.transfer.n_tags"] == 1  # the baselines follow


def test_every_impossible_explicit_size_in_one_error():
    cfg = pipeline.pipeline_config()
    cfg.visual.autoencoder.code_dim = 300  # d = 6
    cfg.semantic.n_clusters = 100  # W = 3
    cfg.cca.n_components = 50
    cfg.kcca.solver = "nystrom"
    cfg.kcca.n_landmarks = 1500  # n_fit = 9
    cfg.recommend.k = 40  # n_train = 12
    cfg.recommend.n_tags = 7  # V = 4
    cfg.general_cca.pca_dims = 64
    cfg.dcca.towers.out_dim = "many"
    res = sizes.resolve(cfg, _shape())
    got = {p.flag: p for p in res.problems}
    assert set(got) == {"visual.autoencoder.code_dim", "semantic.n_clusters", "cca.n_components", "kcca.n_landmarks",
                        "recommend.k", "recommend.n_tags", "general_cca.pca_dims", "dcca.towers.out_dim"}
    assert str(got["visual.autoencoder.code_dim"]) == (
        "--config.visual.autoencoder.code_dim=300: must be between 1 and min(d = 6, n_fit - 1 = 8) = 6")
    assert str(got["kcca.n_landmarks"]) == "--config.kcca.n_landmarks=1500: must be between 1 and n_fit = 9"
    assert str(got["recommend.n_tags"]) == "--config.recommend.n_tags=7: must be between 1 and V (vocabulary words) = 6"
    assert "= 3" in str(got["semantic.n_clusters"]) and "must be an integer or auto" in str(got["dcca.towers.out_dim"])
    # Later rules read the best valid value of a field that does not fit (d_v = 6, d_s = W = 3), so a problem that
    # remains whatever the fix of the earlier fields is reported in the same pass.
    assert str(got["cca.n_components"]) == "--config.cca.n_components=50: must be between 1 and min(d_v = 6, d_s = 3) = 3"
    with pytest.raises(sizes.SizeError) as e:
        res.raise_if_problems()
    msg = str(e.value)
    assert msg.startswith("8 size(s) do not fit the data (train 12 = fit 9 + validation 3, test 5, vocabulary 6")
    for flag in got:
        assert f"--config.{flag}=" in msg
    assert len(e.value.problems) == 8


def test_explicit_sizes_that_fit_are_kept_and_strings_parse():
    cfg = pipeline.pipeline_config()
    cfg.cca.n_components = "2"  # what a str field would get from the command line
    cfg.semantic.n_clusters = 3  # = W: allowed explicitly (the plain bag of words), never chosen by auto
    cfg.dcca.batch_size = 0  # full batch
    res = sizes.resolve(cfg, _shape())
    assert res.ok, res.problems
    assert res.values["cca.n_components"] == 2 and "cca.n_components" not in res.auto
    assert res.values["semantic.n_clusters"] == 3 and res.values["dcca.batch_size"] == 0
    assert res.values["dcca.towers.out_dim"] == 2  # min(batch = n_fit 9, n_val 3) - 1


def test_auto_with_no_valid_value_is_a_problem():
    cfg = pipeline.pipeline_config()
    shape = sizes.DataShape.from_labels(LABELS, fit_rows=np.arange(11), val_rows=[11], n_test=5, visual_dim=6)
    res = sizes.resolve(cfg, shape)
    assert [str(p) for p in res.problems] == [
        "--config.dcca.towers.out_dim=auto: no value fits: must be 1 .. min(dcca.batch_size = 11, n_val = 1) - 1 = 0"]


def test_size_fields_parse_ints_and_auto():
    c = pipeline.pipeline_config()
    c.cca.n_components = 7
    assert c.cca.n_components == 7
    c.cca.n_components = "auto"
    c.recommend.n_tags = "auto"
    assert c.recommend.n_tags == "auto"
    assert all(sizes._has(c, f) for f in sizes.SIZE_FIELDS)
    assert c.sizes.components == 100
