"""The whole pipeline on the tiny test config (experiments/configs/test.py), in a temporary directory."""
import json

import numpy as np
import pytest
from tests.conftest import METHODS, tiny_pipeline_config

from dcca_jax import pipeline
from dcca_jax.tagging import metrics, recommend


def _table2_values(table2):
    return {m: r["metrics"] for m, r in table2.items()}


def test_outputs_parse_and_hold_sane_values(pipeline_run):
    workdir, results = pipeline_run
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["table2_recommendation"].keys() == METHODS
    assert set(on_disk["table1_correlation"]) == {"DMFR&CCA", "DMFR&KCCA", "DMFR&DCCA"}
    for model, row in on_disk["table1_correlation"].items():
        fit = np.diff(np.concatenate([[0.0], row["ccs"]["fit"]]))
        assert np.all(fit >= -1e-6) and np.all(fit <= 1 + 1e-6), (model, fit)  # training correlations
        for split in ("val", "test"):
            per = np.diff(np.concatenate([[0.0], row["ccs"][split]]))
            assert np.all(np.abs(per) <= 1 + 1e-6), (model, split, per)
    for method, m in _table2_values(on_disk["table2_recommendation"]).items():
        for key in ("per_word/P", "per_word/R", "per_word/F1", "per_image/AP", "per_image/AR", "per_image/AF"):
            assert 0.0 <= m[key] <= 1.0, (method, key, m[key])
        assert 0 <= m["per_word/N+"] <= on_disk["dataset"]["vocabulary"]
        # AF is the harmonic mean of AP and AR (Eq. 11): an independent recomputation.
        ap, ar = m["per_image/AP"], m["per_image/AR"]
        assert m["per_image/AF"] == pytest.approx(2 * ap * ar / (ap + ar), rel=1e-6)
    assert on_disk["versions"]["jax"] and on_disk["config"]["data"]["kind"] == "synthetic"
    retrieval = on_disk["retrieval"]
    assert retrieval["transfer"].keys() == METHODS
    assert set(retrieval["common_space"]) == {"DMFR&CCA", "DMFR&KCCA", "DMFR&DCCA"}
    for kind in ("transfer", "common_space"):
        for method, m in retrieval[kind].items():
            assert all(0.0 <= m[k] <= 1.0 for k in ("i2t/mAP", "t2i/mAP", "t2i/P@10")), (kind, method, m)
            assert m["i2t/n_queries"] + m["i2t/n_no_relevant"] == on_disk["dataset"]["n_test"]
            assert m["t2i/n_queries"] + m["t2i/n_no_relevant"] == on_disk["dataset"]["vocabulary"]
    assert on_disk["tagger"]["default_model"] in ("cca", "kcca", "dcca")
    assert (workdir / "tagger" / "manifest.json").exists()
    md = (workdir / "tables.md").read_text()
    assert all(m in md for m in METHODS)
    for png in ("table1_ccs.png", "ap_ar.png", "retrieval_per_word_ap.png"):
        assert (workdir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_every_stage(pipeline_run):
    workdir, results = pipeline_run
    p = pipeline.Pipeline(tiny_pipeline_config(), workdir)
    again = p.run()
    assert p.timings == {}  # nothing recomputed
    assert _table2_values(again["table2_recommendation"]) == _table2_values(results["table2_recommendation"])


def test_changed_input_redoes_downstream_only(pipeline_run, tmp_path):
    workdir, _ = pipeline_run
    cfg = tiny_pipeline_config()
    cfg.dcca.epochs = 2
    p = pipeline.Pipeline(cfg, workdir)
    p.stage_model("dcca")
    p.stage_model("cca")
    assert set(p.timings) == {"model_dcca"}


def test_killed_pipeline_resumes_to_the_same_results(pipeline_run, tmp_path):
    _, uninterrupted = pipeline_run
    cfg = tiny_pipeline_config()
    with pytest.raises(KeyboardInterrupt):
        pipeline.Pipeline(cfg, tmp_path, fail_after="model_kcca").run()
    assert not (tmp_path / "results.json").exists()
    resumed = pipeline.Pipeline(cfg, tmp_path)
    results = resumed.run()
    assert "model_cca" not in resumed.timings and "model_dcca" in resumed.timings
    assert _table2_values(results["table2_recommendation"]) == _table2_values(uninterrupted["table2_recommendation"])
    assert results["table1_correlation"]["DMFR&DCCA"]["ccs"] == uninterrupted["table1_correlation"]["DMFR&DCCA"]["ccs"]


def test_prior_fill_is_counted_and_only_fills_places_without_evidence(pipeline_run):
    workdir, results = pipeline_run
    pipe = pipeline.Pipeline(tiny_pipeline_config(), workdir)
    views = pipe.views()
    n = int(pipe.config.recommend.n_tags)
    titles = {**pipeline.BASELINE_TITLES, **pipeline.MODEL_TITLES}
    prior = views.labels["train"].sum(0)
    for name, scores in pipe.recommend_scores().items():
        m = results["table2_recommendation"][titles[name]]["metrics"]
        positive = np.sum(np.nan_to_num(scores, neginf=0.0) > 0, axis=1)
        # numpy oracle: every image gets n tags; the places beyond its positive-score tags come from the prior
        assert m["tags/from_prior"] == int(np.maximum(n - positive, 0).sum()), name
        assert m["tags/images_with_prior_fill"] == int((positive < n).sum()), name
        sel = recommend.select_tags(scores, n=n, prior=prior)
        idx = np.asarray(sel.indices)
        for r in np.flatnonzero(positive < n)[:20]:
            pos = set(np.flatnonzero(np.nan_to_num(scores[r], neginf=0.0) > 0))
            assert pos <= set(idx[r])  # all the evidence is kept
            filled = [w for w in idx[r] if w not in pos]
            ranked = [w for w in np.argsort(-prior, kind="stable") if w not in pos][: len(filled)]
            assert filled == ranked, (name, r)  # and the rest are the most frequent other words


def test_stage_timings_reads_each_stage_in_run_order(tmp_path):
    stages = tmp_path / "stages"
    for name, seconds in [("recommend", 7.5), ("cnn", 2.0), ("model_cca@d50", 1.0), ("autoencoder", 3.25)]:
        (stages / name).mkdir(parents=True)
        (stages / name / "timing.json").write_text(json.dumps({"seconds": seconds}))
    (stages / "semantic").mkdir()
    (stages / "semantic" / "timing.json").write_text("{broken")
    (stages / "recommend" / "results.json").write_text(json.dumps({"JEC": {"seconds": 5.0, "metrics": {}},
                                                                   "DMFR&CCA": {"seconds": 0.5}}))
    t = pipeline.stage_timings(tmp_path)
    assert list(t["stages"].items()) == [("cnn", 2.0), ("autoencoder", 3.25), ("recommend", 7.5), ("model_cca@d50", 1.0)]
    assert t["recommend_methods"] == {"JEC": 5.0, "DMFR&CCA": 0.5}
    assert set(t["finished_at"]) == set(t["stages"])


def test_tagprop_baseline_on_the_runs_cnn_features(pipeline_run):
    from dcca_jax.tagging import tagprop

    workdir, _ = pipeline_run
    cfg = tiny_pipeline_config()
    cfg.tagprop.k, cfg.tagprop.epochs = 5, 2
    pipe = pipeline.Pipeline(cfg, workdir)
    r = pipe.recommend_baseline("tagprop")
    cnn, rows, views = pipe.stage_cnn(), pipe.rows(), pipe.views()
    model = tagprop.fit_tagprop(cnn["train"][rows["train"]], views.labels["train"], config=cfg.tagprop)
    want = np.asarray(tagprop.tagprop_scores(model, cnn["test"][rows["test"]]))
    np.testing.assert_allclose(r["scores"], want, rtol=1e-6)
    sel = recommend.select_tags(want, n=int(pipe.config.recommend.n_tags), prior=views.labels["train"].sum(0))
    assert r["metrics"]["per_word/F1"] == pytest.approx(
        float(metrics.evaluate(sel.indicator, views.labels["test"])["per_word/F1"]))
    assert "tagprop" in pipeline.BASELINE_NAMES and "tagprop" not in pipeline.pipeline_config().baselines


def test_mobilenet_levers_enter_the_cnn_stage_key_only_when_set(tmp_path):
    c = pipeline.pipeline_config().visual
    assert pipeline._mobilenet_levers(c) == {}  # default: the keys of existing runs are unchanged
    c.mobilenet_v2.tta = "flip"
    c.mobilenet_v2.pool_blocks = ("expanded_conv_16", "Conv_1")
    assert pipeline._mobilenet_levers(c) == {"tta": "flip", "pool_blocks": ["expanded_conv_16", "Conv_1"]}
    (tmp_path / "ft.npz").write_bytes(b"weights")
    c.mobilenet_v2.finetuned_checkpoint = str(tmp_path / "ft.npz")
    import hashlib
    assert pipeline._mobilenet_levers(c)["finetuned_checkpoint"] == hashlib.sha256(b"weights").hexdigest()
