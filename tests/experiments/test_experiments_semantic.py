"""The semantic experiment mains run end to end on their test configs, in a temporary directory."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dcca_jax.data import datasets

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, *args], check=True, cwd=ROOT, env=env, timeout=300, capture_output=True)


@pytest.mark.slow  # two subprocesses importing jax: about 15 s
def test_make_synthetic_then_semantic_view(tmp_path):
    data = tmp_path / "synth"
    _run(["experiments/make_synthetic.py", "--config=experiments/configs/synthetic_test.py", f"--workdir={data}"], tmp_path)
    d = datasets.load_image_folder(data)
    assert len(d.train) + len(d.test) == 40
    work = tmp_path / "sem"
    _run(["experiments/semantic_view.py", "--config=experiments/configs/semantic_test.py",
          f"--config.dataset.root={data}", f"--workdir={work}"], tmp_path)
    train = np.load(work / "semantic_train.npy")
    test = np.load(work / "semantic_test.npy")
    assert train.shape == (len(d.train), 8) and test.shape == (len(d.test), 8)
    report = json.loads((work / "semantic_report.json").read_text())
    assert report["dim"] == 8 and report["rows"] == {"train": len(d.train), "test": len(d.test)}
    # Every training tag is in exactly one deep word.
    members = [t for group in report["deep_words"] for t in group]
    assert sorted(members) == sorted({t for tags in d.train.tags for t in tags})
    # Rows with a known tag have unit L2 norm (the default normalisation).
    norms = np.linalg.norm(train, axis=1)
    np.testing.assert_allclose(norms[norms > 0], 1.0, rtol=1e-5)
