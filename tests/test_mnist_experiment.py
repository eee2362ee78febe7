"""MNIST halves experiment: the split, the table, and the whole run on the test config (generated digits)."""
import json

import numpy as np
import pytest

from dcca_jax.mnist_experiment import results_markdown, run_mnist_halves, split_halves


def test_split_halves_left_and_right_columns():
    img = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    left, right = split_halves(img)
    assert left.shape == right.shape == (2, 392) and left.dtype == np.float32
    # row-major: the first 14 entries are row 0's columns 0..13, the next 14 row 1's columns 0..13
    np.testing.assert_array_equal(left[0, :14] * 255, img[0, 0, :14])
    np.testing.assert_array_equal(left[0, 14:28] * 255, img[0, 1, :14])
    np.testing.assert_array_equal(right[1, :14] * 255, img[1, 0, 14:])
    with pytest.raises(ValueError, match=r"\(n, 28, 28\)"):
        split_halves(np.zeros((2, 28, 27)))


def test_markdown_rows():
    md = results_markdown([
        {"model": "linear CCA", "objective": "closed form", "train_total": 28.9, "test_total": 27.69, "fit_s": 1.0},
        {"model": "KCCA", "objective": "-", "skipped": "not importable"},
    ])
    assert "| linear CCA | closed form | 28.90 | 27.69 | 1.0 | - |" in md
    assert "skipped: not importable" in md


def test_experiment_runs_on_test_config(tmp_path):
    # Generated "digits": strokes shared by the two halves, so the views are correlated.
    rng = np.random.default_rng(0)
    n = 1600
    base = rng.random((n, 28, 1)) * rng.random((1, 1, 28))
    imgs = (255 * np.clip(base + 0.2 * rng.random((n, 28, 28)), 0, 1)).astype(np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=imgs[:1200], x_test=imgs[1200:])
    from experiments.configs import mnist_halves_test

    cfg = mnist_halves_test.get_config()
    cfg.data_path = str(tmp_path / "mnist.npz")
    cfg.workdir = str(tmp_path / "run")
    cfg.n_val = 200
    out = run_mnist_halves(cfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["model"] for r in saved["rows"]] == ["linear CCA", "DCCA"]
    lin, deep = saved["rows"]
    # 5 components: each correlation is at most 1, and training totals are positive
    assert 0 < lin["train_total"] <= 5 and 0 < deep["train_total"] <= 5
    assert deep["objective"] == "trace_norm" and deep["epochs"] == 1
    assert (tmp_path / "run" / "results.md").read_text().count("|") > 10
    assert out["rows"] == saved["rows"]
