"""The visual-view pipeline end to end on generated images with a tiny AlexNet (CPU-friendly)."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from PIL import Image

from experiments.studies import extract_features
from dcca_jax.visual import autoencoder


@pytest.fixture(autouse=True)
def _fast_compile():
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


def _dataset(root):
    rng = np.random.default_rng(0)
    ids = {"train": [f"10/{i}" for i in range(12)], "test": [f"20/{i}" for i in range(5)]}
    for split, names in ids.items():
        for name in names:
            p = root / f"{name}.jpeg"
            p.parent.mkdir(parents=True, exist_ok=True)
            if name == "20/2":
                p.write_bytes(b"\xff\xd8\xff\xe0 truncated")
            else:
                Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(p, quality=90)
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return ids


def test_pipeline_on_generated_images(tmp_path):
    from tests.visual.test_alexnet import random_state_dict

    ids = _dataset(tmp_path / "data")
    np.savez(tmp_path / "alex.npz", **random_state_dict("torchvision", 1 / 32, 6))
    cfg = extract_features.extract_features_config()
    cfg.data.root = str(tmp_path / "data")
    cfg.data.train_list, cfg.data.test_list = "train.txt", "test.txt"
    cfg.model.backbone = "alexnet"
    cfg.model.alexnet.weights_path = str(tmp_path / "alex.npz")
    cfg.batch_size, cfg.shard_size = 4, 8
    cfg.autoencoder.hidden_sizes, cfg.autoencoder.code_dim, cfg.autoencoder.max_epochs = (16,), 3, 4
    cfg.autoencoder.batch_size = 4
    cfg.export_npz = str(tmp_path / "export.npz")
    work = tmp_path / "work"
    summary = extract_features.build_visual_view(cfg, str(work))

    f_tr, f_te = np.load(work / "features_train.npy"), np.load(work / "features_test.npy")
    assert f_tr.shape == (12, 128) and f_te.shape == (5, 128)
    ok_te = np.load(work / "ok_test.npy")
    assert ok_te.tolist() == [True, True, False, True, True]
    failed = json.loads((work / "failed.json").read_text())
    assert [(f["split"], f["index"]) for f in failed] == [("test", 2)]
    assert (work / "ids_train.txt").read_text().split() == ids["train"]
    codes = np.load(work / "codes_test.npy")
    assert codes.shape == (5, 3) and np.isnan(codes[2]).all() and np.isfinite(codes[ok_te]).all()
    model = autoencoder.TrainedAutoEncoder.load(work / "autoencoder" / "model")
    np.testing.assert_allclose(codes[ok_te], np.asarray(model.encode(f_te[ok_te])), rtol=1e-6)
    s = json.loads((work / "summary.json").read_text())
    assert s["splits"]["test"]["n_failed"] == 1 and s["autoencoder"]["code_dim"] == 3
    assert s == json.loads(json.dumps(summary))
    # the AE figures are the metric applied to the saved model (independent recomputation)
    x_tr = f_tr[np.load(work / "ok_train.npy")]
    want = autoencoder.reconstruction_metrics(f_te[ok_te], np.asarray(model.reconstruct(f_te[ok_te])),
                                              mean=x_tr.astype(np.float64).mean(0))
    np.testing.assert_allclose(s["autoencoder"]["test"]["mse"], want["mse"], rtol=1e-6)
    with np.load(tmp_path / "export.npz") as z:
        np.testing.assert_array_equal(z["train"], f_tr)
        assert z["test_ids"].tolist() == ids["test"]

    again = extract_features.build_visual_view(cfg, str(work))  # resumes: nothing recomputed
    assert again["splits"]["train"]["n_computed"] == 0 and again["splits"]["test"]["n_computed"] == 0


def test_corel5k_config_is_consistent():
    from experiments.configs import extract_corel5k

    cfg = extract_corel5k.get_config()
    default = extract_features.extract_features_config()
    assert set(cfg.keys()) == set(default.keys())  # no typo'd fields
    assert cfg.model.backbone == "mobilenet_v2" and cfg.model.mobilenet_v2.tflite_path.endswith(".tflite")
    assert cfg.data.root.endswith("corel5k") and cfg.autoencoder.code_dim == 300
    assert cfg.autoencoder.architecture in autoencoder.ARCHITECTURES
