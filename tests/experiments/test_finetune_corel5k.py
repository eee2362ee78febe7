"""The Corel5k fine-tuning study end to end on its tiny test config (real images and weights; slow)."""
import json

import numpy as np
import pytest
from tests.conftest import shared_path

from dcca_jax.tagging import metrics
from experiments.configs import finetune_corel5k_test
from experiments.studies import finetune_corel5k


def test_split_matches_the_baselines_split():
    fit, val = finetune_corel5k.split_indices(4500, val_size=500, seed=0)
    perm = np.random.default_rng(0).permutation(4500)  # corel5k_baselines' split code
    np.testing.assert_array_equal(val, np.sort(perm[:500]))
    np.testing.assert_array_equal(fit, np.sort(perm[500:]))


@pytest.mark.slow
def test_study_runs_on_test_config(tmp_path):
    c = finetune_corel5k_test.get_config()
    c.data_dir = str(shared_path("data", "corel5k"))
    c.weights = str(shared_path("models", "mobilenet_v2_1.0_224_quant", "mobilenet_v2_1.0_224_quant.tflite"))
    res = finetune_corel5k.run_finetune_corel5k(c, str(tmp_path))
    assert set(res["runs"]) == {"linear_cca", "frozen_dcca_seed0", "frozen_dcca_seed1", "finetune_seed0",
                                "finetune_seed1"}
    preds = np.load(tmp_path / "test_preds.npz")
    from experiments.studies.corel5k_baselines import load_corel5k_labels
    y_te = load_corel5k_labels(c.data_dir).test_labels[:60]
    for name, r in res["runs"].items():
        assert preds[name].shape == (60, 260) and (preds[name].sum(1) == 5).all()
        # the stored metrics are those of the stored predictions (independent recomputation)
        m = metrics.to_python(metrics.evaluate(preds[name], y_te))
        assert m["per_word/F1"] == pytest.approx(r["test"]["per_word/F1"])
    assert "finetune_seed1 - linear_cca" in res["bootstrap"]
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["finetune"]["n_runs"] == 2
    assert "| finetune |" in (tmp_path / "results.md").read_text()
    # the fine-tuned CNN is exported for the frozen pipeline: trained layers changed, frozen ones not
    from dcca_jax.visual import mobilenet
    ft = mobilenet.load_backbone_params(tmp_path / "finetune_seed0" / "finetuned_backbone.npz")["params"]
    pre = mobilenet.load_tflite_params(c.weights)["params"]
    np.testing.assert_allclose(ft["Conv"]["conv"]["kernel"], pre["Conv"]["conv"]["kernel"], rtol=1e-6)
    trained = res["runs"]["finetune_seed0"]["best_epoch"] >= 0  # -1: the starting point was kept
    assert np.allclose(ft["Conv_1"]["conv"]["kernel"], pre["Conv_1"]["conv"]["kernel"]) != trained
    # a rerun resumes: nothing is retrained, the results are the same
    again = finetune_corel5k.run_finetune_corel5k(c, str(tmp_path))
    assert again["runs"]["finetune_seed0"]["test"] == res["runs"]["finetune_seed0"]["test"]
