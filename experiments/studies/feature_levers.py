"""Feature levers of the same MobileNetV2 on Corel5k: multi-scale blocks, flip averaging, the fine-tuned network.

Each lever is a setting of :func:`dcca_jax.visual.extract.backbone_config` (``mobilenet_v2.pool_blocks`` /
``block_norm``, ``tta``, ``finetuned_checkpoint`` + ``input_size``).  To extract each image as few times as
possible, the study runs the network in *passes* that pool every candidate block at once (``block_norm="none"``):

* ``plain``: the TFLite weights on the image (its ``Conv_1`` part is the baseline 1280-d feature);
* ``mirror``: the same on the horizontally mirrored image (``tta="flip"`` = the mean of the two passes, the
  identity :func:`dcca_jax.visual.mobilenet.make_feature_fn` implements and ``tests`` check);
* ``finetuned``: the network fine-tuned inside DCCA (``experiments/finetune_corel5k.py``) at its input size.

Every candidate feature set is then assembled from the pooled blocks exactly as the backbone option would
(:func:`dcca_jax.visual.mobilenet.concat_blocks`) and scored by one fixed downstream, general CCA + kNN
(each feature set scaled to unit mean per-dimension variance on the fitting images, then a small grid of
ridge, K and the kNN's neighbour view chosen on validation).  Per lever the candidate with the best
validation per-word F1 is chosen on the 4000/500 split (seed 0, the split of the baselines and of the
fine-tuning study), refitted on the 4,500 training images and evaluated once on the 499 test images, by
general CCA + kNN and by general CCA + 2PKNN (its own grid, in the space the kNN chose), with paired
bootstrap intervals against the baseline features under the same downstream.

Caveat for the fine-tuned lever: its network was trained on the 4000 fitting images and early-stopped on the
500 validation images, so its validation figures are optimistic; test is clean.

Entry point: :func:`run_feature_levers` (``experiments/feature_levers.py``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from dcca_jax import _io
from dcca_jax.data import datasets
from dcca_jax.tagging import metrics
from dcca_jax.tagging import recommend
from dcca_jax.visual import extract, mobilenet
from experiments.studies.corel5k_baselines import _eval_scores, _grid, _select, _SpaceCache, _Split

PASSES = ("plain", "mirror", "finetuned")


def pass_backbone(config: ml_collections.ConfigDict, name: str) -> extract.Backbone:
    """The backbone of one extraction pass (every candidate block pooled, no normalisation)."""
    if name not in PASSES:
        raise ValueError(f"unknown pass {name!r}; one of {PASSES}")
    c = extract.backbone_config()
    c.mobilenet_v2.tflite_path = config.tflite_path
    c.crop_fraction = float(config.crop_fraction)
    c.mobilenet_v2.pool_blocks = tuple(config.blocks)
    if name == "finetuned":
        c.mobilenet_v2.finetuned_checkpoint = config.finetuned_checkpoint
        c.mobilenet_v2.input_size = int(config.finetuned_input_size)
        c.crop_fraction = float(config.finetuned_crop_fraction)
    bb = extract.build_backbone(c)
    if name == "mirror":
        apply = bb.apply
        bb = dataclasses.replace(bb, apply=lambda x: apply(x[:, :, ::-1, :]), fingerprint={**bb.fingerprint,
                                                                                           "mirrored": True})
    return bb


def extract_pass(config: ml_collections.ConfigDict, name: str, paths: list[str], workdir: pathlib.Path
                 ) -> dict[str, np.ndarray]:
    """Pooled blocks ``{block: (n, width)}`` of one pass, cached in ``workdir/passes/<name>.npz`` (+ shards)."""
    out = workdir / "passes" / f"{name}.npz"
    if out.exists():
        with np.load(out) as z:
            return {b: z[b] for b in config.blocks}
    bb = pass_backbone(config, name)
    t0 = time.time()
    load0 = os.getloadavg()
    res = extract.extract_features(paths, backbone=bb, batch_size=int(config.batch_size),
                                   cache_dir=workdir / "passes" / f"shards_{name}")
    if not res.ok.all():
        raise ValueError(f"{len(res.failed)} Corel5k images failed to decode, e.g. {res.failed[:2]}")
    widths = np.cumsum([0] + [mobilenet.POOLABLE[b] for b in config.blocks])
    blocks = {b: res.features[:, widths[i]:widths[i + 1]] for i, b in enumerate(config.blocks)}
    _io.atomic_save_npz(out, **blocks)
    _io.atomic_write_json(workdir / "passes" / f"{name}.json",
                          {"seconds": time.time() - t0, "images_per_second": res.images_per_second,
                           "loadavg_start": load0, "loadavg_end": os.getloadavg(), "n": len(paths),
                           "fingerprint": bb.fingerprint})
    return blocks


def candidates(config: ml_collections.ConfigDict, passes: dict[str, dict[str, np.ndarray]]
               ) -> dict[str, list[tuple[dict[str, Any], np.ndarray]]]:
    """Per lever, ``[(settings, features (n, d))]``; every lever's list includes the baseline first."""
    plain = passes["plain"]
    base = ({"pool_blocks": ["Conv_1"], "block_norm": "none", "tta": "none"}, plain["Conv_1"])
    out: dict[str, list] = {"baseline": [base]}
    multi = [base]
    for blocks in config.block_sets:
        for norm in config.block_norms:
            if list(blocks) == ["Conv_1"] and norm == "none":
                continue
            multi.append(({"pool_blocks": list(blocks), "block_norm": norm, "tta": "none"},
                          np.asarray(mobilenet.concat_blocks(plain, blocks, block_norm=norm))))
    out["multi_scale"] = multi
    if "mirror" in passes:
        flip = {b: (plain[b] + passes["mirror"][b]) / 2 for b in config.blocks}
        out["flip"] = [base, ({"pool_blocks": ["Conv_1"], "block_norm": "none", "tta": "flip"}, flip["Conv_1"])]
    if "finetuned" in passes:
        ft = passes["finetuned"]
        out["finetuned"] = [base, ({"finetuned": True, "pool_blocks": ["Conv_1"], "block_norm": "none",
                                    "tta": "none"}, ft["Conv_1"])]
    return out


def _scaled(x_fit: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Divide by the root mean per-dimension variance of ``x_fit`` (so one ridge grid suits every feature set)."""
    s = float(np.sqrt(np.mean(np.var(x_fit, axis=0))))
    return [np.asarray(a, np.float64) / s for a in (x_fit, *others)]


class Downstream:
    """The fixed downstream: general CCA (scaled features) + kNN, and 2PKNN in the chosen space."""

    def __init__(self, config, y_tr, y_te, fit_idx, val_idx):
        self.config, self.y_tr, self.y_te, self.fit_idx, self.val_idx = config, y_tr, y_te, fit_idx, val_idx
        self.n_tags, self.sel = int(config.n_tags), config.select_metric
        self.eye = np.eye(y_tr.shape[1])
        self.base_t = dict(recommend.transfer_config())

    def _split_hp(self, c):
        space = {k: c[k] for k in ("pca_dims", "ridge_v", "ridge_s", "n_components")}
        return space, self.base_t | {k: v for k, v in c.items() if k not in space}

    def validate(self, x_train: np.ndarray, transfer: str = "knn", space: dict | None = None
                 ) -> tuple[dict, dict, int]:
        """Best downstream setting on the validation part: (hyperparameters, validation metrics, n candidates).

        ``space``: fix the CCA space (``ridge_v``, ``ridge_s``, ``n_components``; e.g. the kNN's choice) and
        search only the transfer's grid (how 2PKNN is tuned, as in the baselines study's second stage).
        """
        xf, xv = _scaled(x_train[self.fit_idx], x_train[self.val_idx])
        split = _Split(xf, self.y_tr[self.fit_idx], xv, self.y_tr[self.val_idx])
        g = self.config.downstream
        cache = _SpaceCache(split, lambda y: y, max(g.n_components), "binary")
        space = ([{"pca_dims": 0, **{k: space[k] for k in ("ridge_v", "ridge_s", "n_components")}}] if space else
                 _grid({"pca_dims": [0], "ridge_v": g.ridge_v, "ridge_s": g.ridge_s, "n_components": g.n_components}))
        cands = [s | t for s in space for t in _grid(g.knn if transfer == "knn" else g.two_pass)]
        return _select(transfer, cands, lambda c: cache.scores(*self._split_hp(c), self.eye), split,
                       n_tags=self.n_tags, select_metric=self.sel)

    def test(self, x_train: np.ndarray, x_test: np.ndarray, hp: dict) -> tuple[dict, np.ndarray]:
        """Refit on all training images with ``hp``; test metrics and 0/1 predictions."""
        xf, xt = _scaled(x_train, x_test)
        split = _Split(xf, self.y_tr, xt, self.y_te)
        cache = _SpaceCache(split, lambda y: y, int(hp["n_components"]), "binary")
        return _eval_scores(cache.scores(*self._split_hp(hp), self.eye), self.y_te, self.n_tags, self.y_tr)


def run_feature_levers(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Extract the passes, choose each lever on validation, test once; writes results.{json,md} and features.

    ``workdir/features/<lever>.npz`` holds the chosen feature set of each lever (``train`` (4500, d), ``test``
    (499, d), ``train_ids``, ``test_ids``, ``settings`` as JSON), for other heads (TagProp etc.).
    """
    t_start = time.time()
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = datasets.load_corel5k(config.data_dir)
    y_tr, y_te = np.asarray(data.train.labels, np.float32), np.asarray(data.test.labels, np.float32)
    n_tr = len(y_tr)
    paths = list(data.train.image_paths) + list(data.test.image_paths)
    if config.get("max_images"):  # tests
        n_tr = min(n_tr, int(config.max_images))
        y_tr, y_te = y_tr[:n_tr], y_te[:int(config.max_images)]
        paths = list(data.train.image_paths)[:n_tr] + list(data.test.image_paths)[:len(y_te)]
    perm = np.random.default_rng(int(config.split_seed)).permutation(n_tr)
    val_idx, fit_idx = np.sort(perm[:int(config.val_size)]), np.sort(perm[int(config.val_size):])

    passes = {}
    for name in config.passes:
        if name == "finetuned":  # last: its weights may come from a fine-tuning run still in progress
            continue
        passes[name] = extract_pass(config, name, paths, workdir)
        logging.info("pass %s done", name)
    if config.get("baseline_check"):  # the plain pass's Conv_1 against the existing pipeline's cnn stage
        ref = np.concatenate([np.load(pathlib.Path(config.baseline_check) / f"{s}.npy") for s in ("train", "test")])
        got = passes["plain"]["Conv_1"]
        logging.info("baseline check: max |diff| %.3g", float(np.abs(ref[:len(got)] - got).max()))

    down = Downstream(config, y_tr, y_te, fit_idx, val_idx)
    cands = candidates(config, passes)
    if "finetuned" in config.passes:
        cands["finetuned"] = None  # extracted when its turn comes
    results: dict[str, Any] = {"protocol": {
        "split": f"{len(fit_idx)}/{len(val_idx)} validation split of the {n_tr} training images (seed "
                 f"{config.split_seed}); test {len(y_te)} images used once per feature set",
        "select_metric": config.select_metric, "n_tags": int(config.n_tags),
        "downstream": json.loads(config.downstream.to_json())}, "levers": {}}
    test_preds: dict[str, dict[str, np.ndarray]] = {}
    val_cache: dict[str, tuple] = {}
    for lever, cand in cands.items():
        t0 = time.time()
        if cand is None:
            if not pathlib.Path(config.finetuned_checkpoint).exists() and config.get("finetuned_run_dir"):
                meta = export_checkpoint_backbone(config.finetuned_run_dir, config.tflite_path,
                                                  config.finetuned_checkpoint)
                logging.info("exported the interim fine-tuned backbone %s", meta)
            passes["finetuned"] = extract_pass(config, "finetuned", paths, workdir)
            cand = candidates(config, passes)["finetuned"]
        scored = []
        for settings, feats in cand:
            key = json.dumps(settings, sort_keys=True)
            if key not in val_cache:
                val_cache[key] = down.validate(feats[:n_tr])
            hp, val_m, _ = val_cache[key]
            scored.append((val_m[config.select_metric], settings, feats, hp, val_m))
            logging.info("%s %s: validation %s %.4f", lever, settings, config.select_metric, scored[-1][0])
        best = max(range(len(scored)), key=lambda i: (scored[i][0], -i))
        _, settings, feats, hp, val_m = scored[best]
        rec = {"chosen": settings, "dim": int(feats.shape[1]),
               "validation_all": [{"settings": s[1], config.select_metric: s[0],
                                   "per_image/AF": s[4]["per_image/AF"]} for s in scored],
               "downstreams": {}}
        preds = {}
        for transfer in ("knn", "two_pass"):
            if transfer == "knn":
                t_hp, t_val = hp, val_m
            else:
                t_hp, t_val, _ = down.validate(feats[:n_tr], transfer, space=hp)
            test_m, pred = down.test(feats[:n_tr], feats[n_tr:], t_hp)
            preds[transfer] = pred
            rec["downstreams"][transfer] = {"hyperparameters": t_hp, "validation": t_val, "test": test_m}
        test_preds[lever] = preds
        rec["seconds"] = round(time.time() - t0, 1)
        results["levers"][lever] = rec
        _io.atomic_save_npz(workdir / "features" / f"{lever}.npz", train=feats[:n_tr].astype(np.float32),
                            test=feats[n_tr:].astype(np.float32), train_ids=np.array(data.train.ids[:n_tr]),
                            test_ids=np.array(data.test.ids[:len(y_te)]),
                            settings=np.array(json.dumps(settings)))
        logging.info("%s: chose %s (%.1f s)", lever, settings, rec["seconds"])
    for lever, preds in test_preds.items():
        if lever == "baseline":
            continue
        for transfer, pred in preds.items():
            results["levers"][lever]["downstreams"][transfer]["bootstrap_vs_baseline"] = metrics.paired_bootstrap(
                pred, test_preds["baseline"][transfer], y_te, n_resamples=int(config.bootstrap_resamples),
                seed=int(config.split_seed), keys=("per_word/F1", "per_word/N+", "per_image/AF"))
    results["passes"] = {p: json.loads((workdir / "passes" / f"{p}.json").read_text())
                         for p in config.passes if (workdir / "passes" / f"{p}.json").exists()}
    if "finetuned" in config.passes:
        with np.load(config.finetuned_checkpoint) as z:
            results["finetuned_checkpoint"] = {"path": str(config.finetuned_checkpoint),
                                               "sha256": _io.file_sha256(config.finetuned_checkpoint),
                                               "meta": json.loads(str(z["__meta__"]))}
    results["config"] = json.loads(config.to_json())
    results["seconds"] = round(time.time() - t_start, 1)
    _io.atomic_write_json(workdir / "results.json", _io.jsonable(results), indent=1)
    _io.atomic_write_text(workdir / "results.md", results_markdown(results))
    return results


def results_markdown(results: dict[str, Any]) -> str:
    """One row per lever and downstream: chosen setting, test metrics, paired bootstrap against the baseline."""
    lines = [f"Protocol: {results['protocol']['split']}; each lever's feature set chosen by validation "
             f"{results['protocol']['select_metric']} under general CCA + kNN; top {results['protocol']['n_tags']} "
             "tags per image.", "",
             "| lever | downstream | chosen features | dim | per-word P | R | F1 | N+ | per-image AP | AR | AF "
             "| F1 - baseline [95% CI] | AF - baseline [95% CI] |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    names = {"knn": "general CCA + kNN", "two_pass": "general CCA + 2PKNN"}
    for lever, r in results["levers"].items():
        for transfer, d in r["downstreams"].items():
            t, b = d["test"], d.get("bootstrap_vs_baseline")
            ci = lambda k: f"{b[k]['diff']:+.3f} [{b[k]['low']:+.3f}, {b[k]['high']:+.3f}]" if b else "(baseline)"
            chosen = ", ".join(f"{k}={v}" for k, v in r["chosen"].items())
            lines.append(f"| {lever} | {names[transfer]} | {chosen} | {r['dim']} | {t['per_word/P']:.3f} | "
                         f"{t['per_word/R']:.3f} | {t['per_word/F1']:.3f} | {t['per_word/N+']} | "
                         f"{t['per_image/AP']:.3f} | {t['per_image/AR']:.3f} | {t['per_image/AF']:.3f} | "
                         f"{ci('per_word/F1')} | {ci('per_image/AF')} |")
    lines += ["", "Validation per-word F1 (general CCA + kNN) of every candidate:", ""]
    for lever, r in results["levers"].items():
        for v in r["validation_all"]:
            s = ", ".join(f"{k}={x}" for k, x in v["settings"].items())
            lines.append(f"- {lever}: {s}: F1 {v['per_word/F1']:.4f}, AF {v['per_image/AF']:.4f}")
    return "\n".join(lines) + "\n"


def export_checkpoint_backbone(run_dir: str | os.PathLike, tflite_path: str, out: str | os.PathLike) -> dict:
    """Export the best-so-far CNN of a (possibly still running) fine-tuning run from its latest orbax checkpoint.

    The study itself writes ``finetuned_backbone.npz`` when a run ends; this reads ``run_dir/checkpoints/<step>``
    (the train state and the best parameters by validation F1 so far) for an interim backbone.  Returns the
    checkpoint's metadata (``best_epoch``, ``best_f1``, ``step``) as written into the npz.
    """
    import orbax.checkpoint as ocp

    ckpt = pathlib.Path(run_dir) / "checkpoints"
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []
    if not steps:
        raise ValueError(f"no finished checkpoint in {ckpt}; wait for the first epoch of the fine-tuning run")
    step = steps[-1]
    tree = ocp.PyTreeCheckpointer().restore((ckpt / str(step) / "tree").resolve())
    info = json.loads((ckpt / str(step) / "meta" / "metadata").read_text()) \
        if (ckpt / str(step) / "meta" / "metadata").exists() else {}
    pretrained = mobilenet.load_tflite_params(tflite_path)["params"]
    params = {k: v for k, v in pretrained.items() if k != "Logits"}
    params.update(tree["best"]["params"]["visual"].get("backbone", {}))
    meta = {"step": step, "best_epoch": info.get("best_epoch"), "best_f1": info.get("best_f1"),
            "interim": True, "run_dir": str(run_dir)}
    mobilenet.save_backbone_params(out, params, meta=meta)
    return meta
