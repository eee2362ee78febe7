"""The visual view end to end: image list files -> CNN features (cached) -> auto-encoder codes (section 2).

:func:`build_visual_view` reads a train and a test list (Corel5k style: ``<folder>/<id>`` per line, file =
root/id + suffix), extracts features with the configured backbone (resumable cache under
``workdir/feature_cache``), trains the auto-encoder on the training features (early stopping on a held-out
part of them, checkpoints under ``workdir/autoencoder``), and writes to ``workdir``:

- ``features_{train,test}.npy`` (float32, list order; NaN rows for images that failed to decode),
  ``ok_{train,test}.npy`` (bool), ``ids_{train,test}.txt``, ``failed.json``;
- ``codes_{train,test}.npy`` (float32, ``code_dim`` wide; NaN rows where the image failed);
- ``autoencoder/model`` (reloadable with :meth:`TrainedAutoEncoder.load`);
- ``summary.json``: images/s, failures, and the auto-encoder's held-out reconstruction MSE and fraction of
  variance retained on the test images, next to PCA to the same dimension (numpy SVD) for reference.

Optionally ``export_npz`` writes ``train``/``test`` features and ``train_ids``/``test_ids`` to one ``.npz``
(atomically) for other tools.
"""
from __future__ import annotations

import os
import time

import ml_collections
import numpy as np
from absl import logging

from dcca_jax._io import atomic_save_npy, atomic_save_npz, atomic_write_json
from dcca_jax.visual import autoencoder as ae_lib
from dcca_jax.visual import extract
from dcca_jax.visual import images


def extract_features_config() -> ml_collections.ConfigDict:
    """Data, backbone, extraction and auto-encoder settings."""
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict()
    c.data.root = ""
    c.data.train_list = "corel5k_train_list.txt"
    c.data.test_list = "corel5k_test_list.txt"
    c.data.suffix = ".jpeg"
    c.model = extract.backbone_config()
    c.batch_size = 32
    c.shard_size = 512
    c.prefetch = 3
    c.autoencoder = ae_lib.autoencoder_config()
    c.train_autoencoder = True
    c.export_npz = ""
    return c


def build_visual_view(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = False) -> dict:
    """Run the whole visual-view pipeline (see the module docstring).

    Args:
        config: :func:`extract_features_config` fields.
        workdir: output directory (created); rerunning resumes from the feature cache and AE checkpoints.
        progress: tqdm bars on stderr.

    Returns:
        The summary dictionary also written to ``workdir/summary.json``.
    """
    os.makedirs(workdir, exist_ok=True)
    root = config.data.root
    if not root or not os.path.isdir(root):
        raise ValueError(f"config.data.root {root!r} is not a directory (point it at the Corel5k folder)")
    backbone = extract.build_backbone(config.model)
    summary: dict = {"backbone": backbone.fingerprint, "feature_dim": backbone.dim, "splits": {}}
    feats, oks, ids_by_split = {}, {}, {}
    all_failed = []
    for split in ("train", "test"):
        list_file = os.path.join(root, config.data[f"{split}_list"])
        ids, paths = images.read_list_file(list_file, image_root=root, suffix=config.data.suffix)
        t0 = time.perf_counter()
        res = extract.extract_features(paths, backbone=backbone, batch_size=config.batch_size,
                                       cache_dir=os.path.join(workdir, "feature_cache", split),
                                       shard_size=config.shard_size, progress=progress, prefetch=config.prefetch)
        wall = time.perf_counter() - t0
        feats[split], oks[split], ids_by_split[split] = res.features, res.ok, ids
        atomic_save_npy(os.path.join(workdir, f"features_{split}.npy"), res.features)
        atomic_save_npy(os.path.join(workdir, f"ok_{split}.npy"), res.ok)
        with open(os.path.join(workdir, f"ids_{split}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(ids) + "\n")
        all_failed += [{**f, "split": split} for f in res.failed]
        summary["splits"][split] = {"n": len(ids), "n_failed": len(res.failed), "n_computed": res.n_computed,
                                    "images_per_second": res.images_per_second, "wall_seconds": wall}
        logging.info("%s: %d images, %d failed, %.1f images/s", split, len(ids), len(res.failed),
                     res.images_per_second)
    atomic_write_json(os.path.join(workdir, "failed.json"), all_failed, indent=1)

    if config.export_npz:
        atomic_save_npz(config.export_npz, train=feats["train"], test=feats["test"],
                            train_ids=np.array(ids_by_split["train"]), test_ids=np.array(ids_by_split["test"]))
        logging.info("features exported to %s", config.export_npz)

    if config.train_autoencoder:
        x_tr, x_te = feats["train"][oks["train"]], feats["test"][oks["test"]]
        t0 = time.perf_counter()
        model = ae_lib.fit_autoencoder(x_tr, config=config.autoencoder, workdir=os.path.join(workdir, "autoencoder"))
        fit_s = time.perf_counter() - t0
        model.save(os.path.join(workdir, "autoencoder", "model"))
        for split, x in (("train", feats["train"]), ("test", feats["test"])):
            codes = np.full((len(x), config.autoencoder.code_dim), np.nan, np.float32)
            codes[oks[split]] = np.asarray(model.encode(x[oks[split]]), np.float32)
            atomic_save_npy(os.path.join(workdir, f"codes_{split}.npy"), codes)
        mean = x_tr.astype(np.float64).mean(0)  # the same baseline for the AE and PCA figures
        ae_test = ae_lib.reconstruction_metrics(x_te, np.asarray(model.reconstruct(x_te)), mean=mean)
        ae_train = ae_lib.reconstruction_metrics(x_tr, np.asarray(model.reconstruct(x_tr)), mean=mean)
        k = config.autoencoder.code_dim
        pca_test = ae_lib.reconstruction_metrics(x_te, ae_lib.pca_reconstruction(x_tr, x_te, n_components=k),
                                                 mean=x_tr.mean(0))
        summary["autoencoder"] = {
            "input_dim": int(x_tr.shape[1]), "code_dim": k, "dims_removed_fraction": 1 - k / x_tr.shape[1],
            "best_epoch": model.best_epoch, "epochs_run": len(model.history), "fit_seconds": fit_s,
            "test": ae_test, "train": ae_train, "pca_test": pca_test}
        logging.info("auto-encoder %d -> %d: held-out MSE %.5g, variance retained %.4f (PCA-%d: %.5g, %.4f)",
                     x_tr.shape[1], k, ae_test["mse"], ae_test["variance_retained"], k, pca_test["mse"],
                     pca_test["variance_retained"])
    atomic_write_json(os.path.join(workdir, "summary.json"), summary, indent=1)
    return summary
