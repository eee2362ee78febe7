r"""Corel5k study: DCCA from pixels (fine-tuned MobileNetV2) against frozen-feature DCCA and linear CCA.

Protocol (the one of :mod:`experiments.studies.corel5k_baselines`): the 4,500 training images are split 4000/500 with
``default_rng(split_seed)`` (seed 0, 500 validation images: the baselines' split).  For every method:

1. train on the 4000 (the DCCA variants early-stop on validation per-word F1 of tag transfer,
   :func:`dcca_jax.finetune.fit_finetune`);
2. with the trained towers, the final CCA (Eq. 8) on the 4000 training outputs and the transfer
   hyperparameters (``config.transfer_grid``: kNN and 2PKNN, against the visual or the semantic projections)
   are chosen on the 500 validation images by per-word F1;
3. test once: the final CCA is refitted on the tower outputs of all 4,500 training images, which are also the
   label-transfer items, and the 499 test images are tagged (top 5).

Methods (all on the same MobileNetV2 float model at ``augment.size``, centre-crop evaluation view):

- ``linear_cca``: linear CCA of the frozen pooled features and the tag vectors (the DCCA towers' starting
  point; ridges ``cca_init_ridge_*``, ``out_dim`` directions);
- ``frozen_dcca``: the same residual-CCA towers trained on the frozen features (``trainable_from="none"``);
- ``finetune``: the towers with the CNN's last layers trained end to end from augmented pixels.

The DCCA rows run for every seed of ``config.seeds`` (initialisation of the residual MLPs, data order,
augmentation); per seed a paired bootstrap over test images (:func:`dcca_jax.tagging.metrics.paired_bootstrap`) gives
the difference of each pair of methods; the summary gives mean +/- sd over seeds.
Entry point: :func:`run_finetune_corel5k` (``experiments/finetune_corel5k.py``).
"""
from __future__ import annotations

import itertools
import json
import pathlib
import time
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dcca_jax import finetune
from dcca_jax import training
from dcca_jax.data import datasets
from dcca_jax.tagging import metrics
from dcca_jax.visual import mobilenet
from dcca_jax.tagging import recommend
from dcca_jax.visual.augment import DecodedImages
from dcca_jax.blas import limit_blas_threads
from dcca_jax.models.cca import fit_linear_cca, project

__all__ = ["split_indices", "protocol_metrics", "run_finetune_corel5k", "results_markdown"]

METHODS = ("linear_cca", "frozen_dcca", "finetune")


def split_indices(n_train: int, *, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The baselines' validation split: ``(fit_idx, val_idx)``, both sorted (``default_rng(seed)`` permutation)."""
    return training.validation_split(n_train, n_val=val_size, seed=seed)


def _expand_grid(grid) -> list[dict[str, Any]]:
    out = []
    for spec in grid:
        spec = dict(spec)
        keys = list(spec)
        out += [dict(zip(keys, v)) for v in itertools.product(*(list(spec[k]) for k in keys))]
    return out


def _cca(h_v, h_s, config):
    return fit_linear_cca(h_v, h_s, n_components=int(config.out_dim), ridge_v=float(config.final_cca_ridge_v),
                          ridge_s=float(config.final_cca_ridge_s))


def _scores(cca, h_query, h_items_v, h_items_s, items_labels, transfer):
    zq, _ = project(cca, h_query, None)
    zv, zs = project(cca, h_items_v, h_items_s)
    items = zv if transfer["against"] == "visual" else zs
    return recommend.transfer_scores(zq, items, items_labels, config=transfer, correlations=cca.correlations)


def protocol_metrics(config: ml_collections.ConfigDict, model_config: ml_collections.ConfigDict, h_v: np.ndarray,
                     h_s_train: np.ndarray, y_train: np.ndarray, y_test: np.ndarray, fit_idx: np.ndarray,
                     val_idx: np.ndarray) -> dict[str, Any]:
    """Steps 2-3 of the protocol from tower outputs.

    Args:
      config: the study config (``transfer_grid``, ``n_tags``).
      model_config: the model's :func:`dcca_jax.finetune.finetune_config` (``out_dim``, ``final_cca_ridge_*``).
      h_v: ``(n_train + n_test, o_v)`` visual tower outputs, training images first, then the test images.
      h_s_train: ``(n_train, o_s)`` semantic tower outputs of the training images' tags.
      y_train, y_test: 0/1 tags.
      fit_idx, val_idx: the validation split of the training images.

    Returns:
      ``{"transfer", "validation", "test", "test_pred" (n_test, V) 0/1, "n_candidates"}``.
    """
    n_tr = len(y_train)
    h_v, h_s_train = jnp.asarray(h_v), jnp.asarray(h_s_train)
    cca = _cca(h_v[fit_idx], h_s_train[fit_idx], model_config)
    base = dict(recommend.transfer_config())
    best, best_m = None, None
    cands = _expand_grid(config.transfer_grid)
    for cand in cands:
        t = base | cand
        s = _scores(cca, h_v[val_idx], h_v[fit_idx], h_s_train[fit_idx], y_train[fit_idx], t)
        pred_val = recommend.recommend_indicator(s, n=int(config.n_tags), prior=recommend.tag_prior(y_train[fit_idx]))
        m = metrics.to_python(metrics.evaluate(pred_val, y_train[val_idx]))
        if best_m is None or m["per_word/F1"] > best_m["per_word/F1"]:
            best, best_m = cand, m
    t = base | best
    cca_all = _cca(h_v[:n_tr], h_s_train, model_config)
    s = _scores(cca_all, h_v[n_tr:], h_v[:n_tr], h_s_train, y_train, t)
    pred = np.asarray(recommend.recommend_indicator(s, n=int(config.n_tags), prior=recommend.tag_prior(y_train)))
    test = metrics.to_python(metrics.evaluate(pred, y_test))
    return {"transfer": best, "validation": best_m, "test": test, "test_pred": pred, "n_candidates": len(cands)}


def _pooled_features(fns, frozen, images, indices, config) -> np.ndarray:
    return np.asarray(finetune.eval_boundary(fns, frozen, images, indices, config,
                                             num_workers=int(config.num_workers)))


def run_finetune_corel5k(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run the study (module docstring); writes ``results.json`` and ``results.md`` to ``workdir``.

    Per-seed training state goes to ``workdir/<method>_seed<k>/`` (checkpoints, ``metrics.jsonl``), so an
    interrupted study resumes; finished runs are kept in ``workdir/runs.json`` and not redone.
    """
    with limit_blas_threads(1):
        return _run(config, pathlib.Path(workdir))


def _run(config, workdir: pathlib.Path) -> dict[str, Any]:
    t_start = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    data = datasets.load_corel5k(config.data_dir)
    y_tr = np.asarray(data.train.labels, np.float32)
    y_te = np.asarray(data.test.labels, np.float32)
    if config.get("max_train"):
        y_tr = y_tr[:int(config.max_train)]
    if config.get("max_test"):
        y_te = y_te[:int(config.max_test)]
    n_tr, n_te = len(y_tr), len(y_te)
    fit_idx, val_idx = split_indices(n_tr, val_size=int(config.val_size), seed=int(config.split_seed))
    test_idx = np.arange(n_tr, n_tr + n_te)
    paths = list(data.train.image_paths)[:n_tr] + list(data.test.image_paths)[:n_te]
    t0 = time.time()
    images = DecodedImages(paths, on_error="raise", num_workers=int(config.num_workers) + 1)
    decode_s = time.time() - t0
    logging.info("decoded %d images in %.1f s (%.0f MB)", len(paths), decode_s, images.nbytes / 1e6)
    backbone = mobilenet.load_tflite_params(config.weights)["params"]
    backbone.pop("Logits", None)

    ft = ml_collections.ConfigDict(config.finetune.to_dict())
    fz = ml_collections.ConfigDict(config.finetune.to_dict())
    fz.trainable_from = "none"
    fz.batch_norm = "folded"

    runs_path = workdir / "runs.json"
    runs: dict[str, Any] = json.loads(runs_path.read_text()) if runs_path.exists() else {}
    preds: dict[str, np.ndarray] = {}
    if (workdir / "test_preds.npz").exists():
        with np.load(workdir / "test_preds.npz") as z:
            preds = {k: z[k] for k in z.files}

    def done(name, rec, pred):
        runs[name] = rec
        preds[name] = pred
        runs_path.write_text(json.dumps(runs, indent=1))
        np.savez_compressed(workdir / "test_preds.npz", **preds)
        logging.info("%s test: %s", name, {k: round(rec["test"][k], 4) for k in metrics.METRIC_KEYS})

    # ---- frozen pooled features of every image (evaluation view), shared by linear CCA and frozen DCCA
    feat_path = workdir / "frozen_features.npz"
    fns_frozen = finetune.functions_for(fz)
    if feat_path.exists():
        with np.load(feat_path) as z:
            feats = z["features"]
        feat_s = float(json.loads((workdir / "frozen_features.json").read_text())["seconds"])
    else:
        t0 = time.time()
        feats = _pooled_features(fns_frozen, backbone, images, np.arange(n_tr + n_te), fz)
        feat_s = time.time() - t0
        np.savez(feat_path, features=feats)
        (workdir / "frozen_features.json").write_text(json.dumps({"seconds": feat_s, "size": int(fz.augment.size)}))
    logging.info("frozen features %s in %.1f s", feats.shape, feat_s)

    methods = list(config.methods)
    if "linear_cca" in methods and "linear_cca" not in runs:
        t0 = time.time()
        r = protocol_metrics(config, config.finetune, feats, y_tr, y_tr, y_te, fit_idx, val_idx)
        done("linear_cca", {"method": "linear_cca", "seed": None, "features": "frozen", "transfer": r["transfer"],
                            "validation": r["validation"], "test": r["test"],
                            "train_seconds": time.time() - t0 + feat_s}, r["test_pred"])

    def dcca_outputs(model, b_train, b_test):
        h_v = np.concatenate([np.asarray(model.visual_outputs(b_train)), np.asarray(model.visual_outputs(b_test))])
        return h_v, np.asarray(model.semantic_outputs(y_tr))

    train_b = test_b = None
    for seed in config.seeds:
        for method in ("frozen_dcca", "finetune"):
            name = f"{method}_seed{seed}"
            if method not in methods or name in runs:
                continue
            c = ml_collections.ConfigDict((fz if method == "frozen_dcca" else ft).to_dict())
            c.seed = int(seed)
            t0 = time.time()
            if method == "frozen_dcca":
                res = finetune.fit_finetune(c, backbone_params=backbone, images=None, labels=y_tr, fit_idx=fit_idx,
                                            val_idx=val_idx, features=feats[:n_tr], workdir=workdir / name)
                b_train, b_test = jnp.asarray(feats[:n_tr]), jnp.asarray(feats[n_tr:])
                prep = 0.0
            else:
                fns = finetune.functions_for(c)
                frozen = finetune.slice_layers(backbone, 0, finetune.layer_index(c.trainable_from))
                tp = time.time()
                if train_b is None:
                    train_b = finetune.eval_boundary(fns, frozen, images, np.arange(n_tr), c,
                                                     num_workers=int(c.num_workers))
                    test_b = finetune.eval_boundary(fns, frozen, images, test_idx, c, num_workers=int(c.num_workers))
                prep = time.time() - tp
                res = finetune.fit_finetune(c, backbone_params=backbone, images=images, labels=y_tr, fit_idx=fit_idx,
                                            val_idx=val_idx, workdir=workdir / name, fit_boundary=train_b[fit_idx],
                                            val_boundary=train_b[val_idx])
                b_train, b_test = train_b, test_b
            if method == "finetune":  # the whole CNN, as the frozen pipeline's mobilenet_v2.finetuned_checkpoint
                mobilenet.save_backbone_params(workdir / name / "finetuned_backbone.npz",
                                               finetune.finetuned_backbone(res.model, backbone),
                                               meta={"seed": int(seed), "size": int(c.augment.size),
                                                     "trainable_from": c.trainable_from, "best_epoch": res.best_epoch})
            h_v, h_s = dcca_outputs(res.model, b_train, b_test)
            r = protocol_metrics(config, c, h_v, h_s, y_tr, y_te, fit_idx, val_idx)
            done(name, {"method": method, "seed": int(seed), "features": "frozen" if method == "frozen_dcca"
                        else "fine-tuned", "transfer": r["transfer"], "validation": r["validation"], "test": r["test"],
                        "early_stopping_val": res.best_val, "best_epoch": res.best_epoch,
                        "epoch_seconds": res.epoch_seconds, "train_seconds": res.train_seconds,
                        "prefix_seconds": prep, "wall_seconds": time.time() - t0, "history": res.history},
                 r["test_pred"])

    results = summarise(config, runs, preds, y_te)
    results["protocol"] = {
        "split": f"{len(fit_idx)}/{len(val_idx)} split of the {n_tr} training images (seed {config.split_seed}), "
                 f"test {n_te} images used once per run",
        "image_size": int(ft.augment.size), "trainable_from": ft.trainable_from, "batch_norm": ft.batch_norm,
        "effective_batch": int(ft.micro_batch) * int(ft.accumulate), "decode_seconds": decode_s,
        "frozen_feature_seconds": feat_s}
    results["config"] = json.loads(config.to_json())
    results["seconds"] = time.time() - t_start
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    (workdir / "results.md").write_text(results_markdown(results))
    return results


def summarise(config, runs: dict, preds: dict, y_te: np.ndarray) -> dict[str, Any]:
    """Mean +/- sd over seeds per method, and per-seed paired bootstrap differences between methods."""
    keys = ("per_word/F1", "per_word/N+", "per_image/AF")
    summary: dict[str, Any] = {}
    for method in METHODS:
        rs = [r for r in runs.values() if r["method"] == method]
        if not rs:
            continue
        summary[method] = {
            "n_runs": len(rs), "features": rs[0]["features"],
            "test_mean": {k: float(np.mean([r["test"][k] for r in rs])) for k in metrics.METRIC_KEYS},
            "test_sd": {k: float(np.std([r["test"][k] for r in rs], ddof=1)) if len(rs) > 1 else 0.0
                        for k in metrics.METRIC_KEYS},
            "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rs])),
            "epoch_seconds_mean": (float(np.mean([s for r in rs for s in r.get("epoch_seconds", [])]))
                                   if any(r.get("epoch_seconds") for r in rs) else None)}
    boots: dict[str, Any] = {}
    pairs = (("finetune", "linear_cca"), ("finetune", "frozen_dcca"), ("frozen_dcca", "linear_cca"))
    for seed in config.seeds:
        for a, b in pairs:
            na = f"{a}_seed{seed}"
            nb = b if b == "linear_cca" else f"{b}_seed{seed}"
            if na in preds and nb in preds:
                boots[f"{na} - {nb}"] = metrics.paired_bootstrap(
                    preds[na], preds[nb], y_te, n_resamples=int(config.bootstrap_resamples), seed=int(seed),
                    keys=keys)
    return {"summary": summary, "bootstrap": boots, "runs": runs}


def results_markdown(results: dict[str, Any]) -> str:
    """Markdown: per-run table, mean +/- sd per method, paired bootstrap intervals."""
    p = results["protocol"]
    lines = [f"Protocol: {p['split']}; every choice on validation per-word F1; images {p['image_size']} px, "
             f"CNN trained from `{p['trainable_from']}`, batch norm `{p['batch_norm']}`, effective batch "
             f"{p['effective_batch']}.", "",
             "| run | features | per-word P | R | F1 | N+ | per-image AP | AR | AF | transfer | best epoch | "
             "epoch s | train s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        t = r["test"]
        tr = ", ".join(f"{k}={v}" for k, v in r["transfer"].items())
        ep = r.get("epoch_seconds") or []
        lines.append(f"| {name} | {r['features']} | {t['per_word/P']:.3f} | {t['per_word/R']:.3f} | "
                     f"{t['per_word/F1']:.3f} | {t['per_word/N+']} | {t['per_image/AP']:.3f} | {t['per_image/AR']:.3f} "
                     f"| {t['per_image/AF']:.3f} | {tr} | {r.get('best_epoch', '')} | "
                     f"{np.mean(ep) if ep else float('nan'):.0f} | {r['train_seconds']:.0f} |")
    lines += ["", "Mean +/- sd over seeds:", "",
              "| method | features | runs | per-word F1 | N+ | per-image AF | mean train s |", "|---|---|---|---|---|---|---|"]
    for m, s in results["summary"].items():
        f = lambda k, d=3: f"{s['test_mean'][k]:.{d}f} +/- {s['test_sd'][k]:.{d}f}"
        lines.append(f"| {m} | {s['features']} | {s['n_runs']} | {f('per_word/F1')} | {f('per_word/N+', 1)} | "
                     f"{f('per_image/AF')} | {s['train_seconds_mean']:.0f} |")
    if results["bootstrap"]:
        lines += ["", "Paired bootstrap over test images (difference A - B, 95% percentile interval):", "",
                  "| A - B | per-word F1 | N+ | per-image AF |", "|---|---|---|---|"]
        for name, b in results["bootstrap"].items():
            ci = lambda k: f"{b[k]['diff']:+.3f} [{b[k]['low']:+.3f}, {b[k]['high']:+.3f}]"
            lines.append(f"| {name} | {ci('per_word/F1')} | {ci('per_word/N+')} | {ci('per_image/AF')} |")
    return "\n".join(lines) + "\n"


def compare_runs(runs: dict[str, tuple[str, str]], *, reference: str, data_dir: str, n_resamples: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """Compare finished runs of several study workdirs (e.g. one lever each) with a paired bootstrap.

    Args:
      runs: ``{label: (workdir, run name)}``, e.g. ``{"BN update": ("runs/bn", "finetune_seed0")}``; the run's
        test predictions are read from ``workdir/test_preds.npz`` and its record from ``workdir/runs.json``.
      reference: the label every other run is compared with (difference = run - reference).
      data_dir: Corel5k folder (the test labels).

    Returns:
      ``{label: {"test": metrics, "record": ..., "bootstrap": {...} (absent for the reference)}}``.
    """
    data = datasets.load_corel5k(data_dir, check_images=False)
    y_te = np.asarray(data.test.labels, np.float32)
    out, preds = {}, {}
    for label, (wd, name) in runs.items():
        wd = pathlib.Path(wd)
        rec = json.loads((wd / "runs.json").read_text())[name]
        with np.load(wd / "test_preds.npz") as z:
            preds[label] = z[name]
        out[label] = {"workdir": str(wd), "run": name, "test": rec["test"], "train_seconds": rec["train_seconds"],
                      "epoch_seconds": rec.get("epoch_seconds"), "best_epoch": rec.get("best_epoch"),
                      "validation_f1": rec["validation"]["per_word/F1"]}
    if reference not in preds:
        raise ValueError(f"reference {reference!r} is not one of the runs {list(runs)}")
    for label in runs:
        if label != reference:
            out[label]["bootstrap"] = metrics.paired_bootstrap(
                preds[label], preds[reference], y_te[:len(preds[label])], n_resamples=n_resamples, seed=seed,
                keys=("per_word/F1", "per_word/N+", "per_image/AF"))
    return out


def comparison_markdown(comparison: dict[str, Any], *, reference: str) -> str:
    """Markdown table of :func:`compare_runs`."""
    lines = [f"| run | val F1 (chosen transfer) | per-word P | R | F1 | N+ | per-image AF | F1 - {reference} [95% CI] | "
             f"AF - {reference} [95% CI] | best epoch | epoch s | train s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in comparison.items():
        t, b = r["test"], r.get("bootstrap")
        ci = lambda k: f"{b[k]['diff']:+.3f} [{b[k]['low']:+.3f}, {b[k]['high']:+.3f}]" if b else "(reference)"
        ep = r["epoch_seconds"] or []
        lines.append(f"| {label} | {r['validation_f1']:.3f} | {t['per_word/P']:.3f} | {t['per_word/R']:.3f} | "
                     f"{t['per_word/F1']:.3f} | {t['per_word/N+']} | {t['per_image/AF']:.3f} | {ci('per_word/F1')} | "
                     f"{ci('per_image/AF')} | {r['best_epoch'] if r['best_epoch'] is not None else ''} | "
                     f"{np.mean(ep) if ep else float('nan'):.0f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"
