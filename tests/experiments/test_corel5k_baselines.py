"""The Corel5k baseline study end to end on a tiny dataset in the Corel5k layout, and on the real labels."""
import json
import pathlib

import numpy as np
import pytest
import scipy.io
from PIL import Image

from tests.conftest import shared_path
from dcca_jax.tagging import metrics
from experiments.configs import corel5k_baselines as study_config
from experiments.studies import corel5k_baselines as corel5k


def _fixture(root: pathlib.Path, n_train=80, n_test=16, n_words=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_words, 12))
    def make(n):
        y = (rng.random((n, n_words)) < 0.3).astype(np.uint16)
        y[np.arange(n), rng.integers(0, n_words, n)] = 1
        x = y @ centres + 0.5 * rng.normal(size=(n, 12))
        return y, x
    y_tr, x_tr = make(n_train)
    y_te, x_te = make(n_test)
    ids = [f"{100 + i // 50}/{i}" for i in range(n_train + n_test)]
    for i, name in enumerate(ids):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((16, 24, 3)) * 255).astype(np.uint8)).save(root / f"{name}.jpeg")
    (root / "corel5k_train_list.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "corel5k_test_list.txt").write_text("\n".join(ids[n_train:]) + "\n")
    (root / "corel5k_words.txt").write_text("\n".join(f"word{w}" for w in range(n_words)) + "\n")
    scipy.io.savemat(root / "corel5k_train_annot.mat", {"annot1": y_tr})
    scipy.io.savemat(root / "corel5k_test_annot.mat", {"annot2": y_te})
    np.savez(root / "feats.npz", train=x_tr, test=x_te)
    return y_tr.astype(float), y_te.astype(float), x_tr, x_te


def _tiny_config(root: pathlib.Path):
    c = study_config.get_config()
    c.data_dir = str(root)
    c.features_path = str(root / "feats.npz")
    c.features_ready = ""
    c.wait_features_s = 1.0
    c.jec_cache = str(root / "jec.npz")
    c.val_size = 20
    c.n_tags = 3
    c.bootstrap_resamples = 50
    c.jec.k = [2, 3]
    c.raw_knn.k = [3, 5]
    c.general_cca.pca_dims = [0]
    c.general_cca.ridge_v = [0.1]
    c.general_cca.ridge_s = [0.1]
    c.general_cca.n_components = [3, 5]
    c.transfer_grids.knn = {"k": [3, 5], "against": ["visual"]}
    c.transfer_grids.freq = {"k": [5], "freq_power": [0.5]}
    c.transfer_grids.two_pass = {"method": ["2pknn"], "weighting": ["exp"], "k1": [1, 2], "temperature": [0.1]}
    c.transfer_grids.corr_power = {"k": [5], "corr_power": [2.0]}
    c.transfer_grids.two_pass_freq = {"method": ["2pknn"], "weighting": ["exp"], "k1": [1], "temperature": [0.1],
                                      "freq_power": [0.25], "against": ["semantic"]}
    c.cca_knn.seeds = [0, 1]
    c.cca_knn.w2v_dim = 6
    c.cca_knn.w2v_epochs = 5
    c.cca_knn.pca_dims = [0]
    c.cca_knn.ridge_v = [0.1]
    c.cca_knn.ridge_s = [0.01]
    c.cca_knn.n_components = [3]
    c.cca_knn.transfer = {"k": [5], "corr_power": [0.0, 4.0]}
    return c


@pytest.mark.slow
def test_study_runs_on_tiny_corel5k_layout(tmp_path):
    y_tr, y_te, x_tr, x_te = _fixture(tmp_path)
    c = _tiny_config(tmp_path)
    res = corel5k.run_corel5k_baselines(c, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["methods"]) == set(c.methods)
    assert "| general_cca+2pknn |" in (tmp_path / "out" / "results.md").read_text()
    for name, r in res["methods"].items():
        assert set(metrics.METRIC_KEYS) <= set(r["test"]), name
        if name != c.reference:
            assert "per_word/F1" in r["bootstrap_vs_general_cca"]
    # independent oracle for two rows: most frequent tags, and cosine kNN at the chosen K
    freq_pred = np.zeros_like(y_te)
    freq_pred[:, np.argsort(-y_tr.sum(0), kind="stable")[:3]] = 1
    want = metrics.to_python(metrics.evaluate(freq_pred, y_te))
    assert res["methods"]["most_frequent"]["test"] == pytest.approx(want)
    k = res["methods"]["raw_knn"]["hyperparameters"]["k"]
    a = x_te / np.linalg.norm(x_te, axis=1, keepdims=True)
    b = x_tr / np.linalg.norm(x_tr, axis=1, keepdims=True)
    s = a @ b.T
    nn = np.argsort(-s, axis=1, kind="stable")[:, :k]
    votes = np.einsum("qk,qkv->qv", np.maximum(np.take_along_axis(s, nn, 1), 0), y_tr[nn])
    pred = np.zeros_like(y_te)
    np.put_along_axis(pred, np.argsort(-votes, axis=1, kind="stable")[:, :3], 1, axis=1)
    assert res["methods"]["raw_knn"]["test"] == pytest.approx(metrics.to_python(metrics.evaluate(pred, y_te)))
    assert (tmp_path / "jec.npz").exists()
    ccs = res["methods"]["general_cca"]["correlation_score_curve"]
    assert 0 < ccs["test"][1] <= 1.0 + 1e-9 and 0 < ccs["train"][1] <= 1.0 + 1e-9


def test_load_corel5k_labels_real_split():
    root = shared_path("data", "corel5k")
    d = corel5k.load_corel5k_labels(root)
    assert d.train_labels.shape == (4500, 260) and d.test_labels.shape == (499, 260)
    assert len(d.words) == 260 and d.train_ids[0] == "1000/1000" and "121000/121060" not in d.train_ids + d.test_ids
    # published figures (shared/README.md): 3.38 / 3.52 tags per image, 7 untagged training images
    assert d.train_labels.sum(1).mean() == pytest.approx(3.38, abs=0.005)
    assert d.test_labels.sum(1).mean() == pytest.approx(3.52, abs=0.005)
    assert int((d.train_labels.sum(1) == 0).sum()) == 7


def test_load_corel5k_labels_names_missing_file(tmp_path):
    with pytest.raises(ValueError, match="corel5k_words.txt"):
        corel5k.load_corel5k_labels(tmp_path)


def test_wait_for_file_names_missing_path(tmp_path):
    with pytest.raises(ValueError, match="never.npz"):
        corel5k.wait_for_file(tmp_path / "never.npz", timeout_s=0.0, poll_s=0.0)


def test_load_features_checks_id_order(tmp_path):
    y_tr, y_te, x_tr, x_te = _fixture(tmp_path, n_train=6, n_test=3)
    c = _tiny_config(tmp_path)
    data = corel5k.load_corel5k_labels(tmp_path)
    xtr, xte = corel5k.load_features(c, data)
    np.testing.assert_allclose(xtr, x_tr)
    np.savez(tmp_path / "feats.npz", train=x_tr, test=x_te, train_ids=np.array(data.train_ids[::-1]),
             test_ids=np.array(data.test_ids))
    with pytest.raises(ValueError, match="train_ids"):
        corel5k.load_features(c, data)
    np.savez(tmp_path / "feats.npz", train=x_tr[:5], test=x_te)
    with pytest.raises(ValueError, match=r"\(5, 12\)"):
        corel5k.load_features(c, data)


def _fake_pipeline_run(root: pathlib.Path, x_tr, y_tr, x_te, rng):
    """A finished pipeline run's layout: CNN features, a saved linear CCA, recommend-stage test scores."""
    from dcca_jax.models.cca import LinearCCA

    st = root / "run" / "stages"
    for d in ("cnn", "model_cca", "recommend"):
        (st / d).mkdir(parents=True)
        (st / d / "DONE").write_text("x\n")
    np.save(st / "cnn" / "train.npy", x_tr)
    np.save(st / "cnn" / "test.npy", x_te)
    cfg = LinearCCA.default_config()
    cfg.n_components, cfg.ridge_v, cfg.ridge_s = 4, 0.1, 0.1
    LinearCCA(cfg).fit(x_tr, y_tr).save(st / "model_cca" / "model")
    scores = rng.random((len(x_te), y_tr.shape[1]))
    np.save(st / "recommend" / "scores_cca.npy", scores)
    (st / "recommend" / "key.json").write_text(json.dumps(
        {"key": "k", "inputs": {"models": {"cca": "m"}, "recommend": {"k": 10}, "baselines": {}}}))
    return root / "run", scores


def test_side_by_side_rows_on_tiny_layout(tmp_path, fast_compiles):
    """TagProp (raw and in a pipeline model's space), pipeline rows, the fine-tuning row and the plot, in seconds."""
    from dcca_jax.tagging import recommend, tagprop
    from experiments.configs import corel5k_side_by_side

    y_tr, y_te, x_tr, x_te = _fixture(tmp_path)
    run, cca_scores = _fake_pipeline_run(tmp_path, x_tr, y_tr, x_te, np.random.default_rng(1))
    c = _tiny_config(tmp_path)
    assert "tagprop@dcca" in corel5k_side_by_side.get_config().methods
    c.methods = ["raw_knn", "tagprop", "pipeline:cca", "tagprop@cca", "dcca_pixels"]
    c.reference = "raw_knn"
    c.pipeline_dir = str(run)
    c.tagprop = {"k": [5], "weighting": ["rank", "distance"], "sigma_ml": [True], "l2": [0.0]}
    c.tagprop_base.epochs = 3
    c.tagprop_base.batch_size = 20
    c.finetune_preds = ""
    res = corel5k.run_corel5k_baselines(c, tmp_path / "out")
    assert "dcca_pixels" in res["not_run"] and "| dcca_pixels | not run" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "per_word_f1_vs_frequency.png").stat().st_size > 1000
    prior = recommend.tag_prior(y_tr)
    evaluate = lambda s: metrics.to_python(metrics.evaluate(recommend.select_tags(s, n=3, prior=prior).indicator, y_te))
    # independent recomputation of three rows
    assert res["methods"]["pipeline:cca"]["test"] == pytest.approx(evaluate(cca_scores))
    hp = res["methods"]["tagprop"]["hyperparameters"]
    assert set(hp) == {"k", "weighting", "sigma_ml", "l2"} and res["methods"]["tagprop"]["n_candidates"] == 2
    cfg = dict(c.tagprop_base) | hp
    m = tagprop.fit_tagprop(x_tr.astype(np.float32), y_tr.astype(np.float32), config=cfg)
    assert res["methods"]["tagprop"]["test"] == pytest.approx(evaluate(tagprop.tagprop_scores(m, x_te.astype(np.float32))))
    from dcca_jax.models.base import load_model
    cca = load_model(run / "stages" / "model_cca" / "model")
    z_tr, z_te = (np.asarray(cca.transform(x_v=x)[0], np.float32) for x in (x_tr, x_te))
    hp = res["methods"]["tagprop@cca"]["hyperparameters"]
    m = tagprop.fit_tagprop(z_tr, y_tr.astype(np.float32), config=dict(c.tagprop_base) | hp)
    assert res["methods"]["tagprop@cca"]["test"] == pytest.approx(evaluate(tagprop.tagprop_scores(m, z_te)))
    assert "per_word/F1" in res["methods"]["tagprop"]["bootstrap_vs_raw_knn"]

    # the fine-tuning row, from a test_preds.npz
    pred = np.zeros_like(y_te)
    pred[:, :3] = 1
    np.savez(tmp_path / "test_preds.npz", linear_cca=1 - pred, finetune_seed0=pred)
    c.finetune_preds = str(tmp_path / "test_preds.npz")
    c.methods = ["raw_knn", "dcca_pixels"]
    c.plot_top = 0
    res = corel5k.run_corel5k_baselines(c, tmp_path / "out2")
    assert res["methods"]["dcca_pixels"]["hyperparameters"]["run"] == "finetune_seed0"
    assert res["methods"]["dcca_pixels"]["test"] == pytest.approx(metrics.to_python(metrics.evaluate(pred, y_te)))


def test_load_features_from_a_cnn_stage_folder(tmp_path):
    y_tr, y_te, x_tr, x_te = _fixture(tmp_path, n_train=6, n_test=3)
    (tmp_path / "cnn").mkdir()
    np.save(tmp_path / "cnn" / "train.npy", x_tr)
    np.save(tmp_path / "cnn" / "test.npy", x_te[:2])
    c = _tiny_config(tmp_path)
    c.features_path = str(tmp_path / "cnn")
    with pytest.raises(ValueError, match=r"\(2, 12\)"):
        corel5k.load_features(c, corel5k.load_corel5k_labels(tmp_path))
    np.save(tmp_path / "cnn" / "test.npy", x_te)
    np.testing.assert_allclose(corel5k.load_features(c, corel5k.load_corel5k_labels(tmp_path))[1], x_te)
    import hashlib
    want = ",".join(hashlib.sha256((tmp_path / "cnn" / f).read_bytes()).hexdigest() for f in ("train.npy", "test.npy"))
    assert corel5k._sha256(tmp_path / "cnn") == want
