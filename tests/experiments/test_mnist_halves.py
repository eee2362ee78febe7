"""MNIST halves experiment: the split, the table, and the whole run on the test config (generated digits)."""
import json

import numpy as np
import pytest

from experiments.studies.mnist_halves import results_markdown, run_mnist_halves, validation_split


def test_markdown_rows():
    md = results_markdown([
        {"model": "linear CCA", "objective": "closed form", "train_total": 28.9, "test_total": 27.69, "fit_s": 1.0},
    ])
    assert "| linear CCA | closed form | 28.90 | 27.69 | 1.0 | - |" in md


def test_experiment_runs_on_test_config(tmp_path):
    # Generated "digits": strokes shared by the two halves, so the views are correlated.
    rng = np.random.default_rng(0)
    n = 1600
    base = rng.random((n, 28, 1)) * rng.random((1, 1, 28))
    imgs = (255 * np.clip(base + 0.2 * rng.random((n, 28, 28)), 0, 1)).astype(np.uint8)
    labels = np.zeros(n, np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=imgs[:1200], x_test=imgs[1200:], y_train=labels[:1200], y_test=labels[1200:])
    from experiments.configs import mnist_halves_test

    cfg = mnist_halves_test.get_config()
    cfg.data_path = str(tmp_path / "mnist.npz")
    cfg.n_val = 200
    out = run_mnist_halves(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["model"] for r in saved["rows"]] == ["linear CCA", "DCCA"]
    lin, deep = saved["rows"]
    # 5 components: each correlation is at most 1, and training totals are positive
    assert 0 < lin["train_total"] <= 5 and 0 < deep["train_total"] <= 5
    assert deep["objective"] == "trace_norm" and deep["epochs"] == 1
    assert (tmp_path / "run" / "results.md").read_text().count("|") > 10
    assert out["rows"] == saved["rows"]


def test_validation_split():
    fit, val = validation_split(100, 30, seed=1)
    assert len(fit) == 70 and len(val) == 30
    assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(100))
    assert np.array_equal(val, validation_split(100, 30, seed=1)[1])
    with pytest.raises(ValueError, match="n_val=100 must be between 1 and n - 1 = 99"):
        validation_split(100, 100)
