"""The whole pipeline of the paper (Fig. 1), stage by stage, cached and resumable.

images + tags -> visual view (CNN features -> auto-encoder, section 2) and semantic view (skip-gram ->
deep textual words, section 2) -> correlation models (CCA, KCCA, DCCA; section 3) -> tag recommendation
(kNN label transfer in the common space) -> metrics (per-image AP/AR/AF, Eq. 9-11; per-word P/R/F1/N+;
the cross-modal correlation score of Table 1) beside the baselines (JEC, general CCA, CCA-KNN).

Each stage writes into ``workdir/stages/<stage>/`` together with ``key.json``, the part of the config
and the upstream keys it depends on, ``manifest.json`` (size and SHA-256 of each of its files, written after
them) and a ``DONE`` marker written last. A rerun skips a stage whose key matches, whose ``DONE`` exists and
whose files match its manifest; a stage with a missing, truncated or corrupt file is logged as a warning naming
the file and recomputed (and when its new files differ from the recorded ones, or no manifest recorded them,
the stages computed from it are removed and recomputed too); a stage written before manifests existed is reused
when its ``.npy``, ``.npz`` and ``.json`` files decode, and its manifest is recorded then. A stage whose inputs changed is redone (and so
is everything downstream, since their keys contain its key). An interrupted stage resumes from its own checkpoints
(feature shards, auto-encoder and DCCA orbax checkpoints).

Protocol (no test leakage): the training split is divided into a *fit* part and a *validation* part
(``data.validation_fraction``). Models are fitted on the fit part; DCCA and the auto-encoder stop early
on the validation part; the training items used for label transfer are the whole training split; the
test split is used once, for the reported numbers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import time
from typing import Any, Callable

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dcca_jax import sizes as sizes_lib
from dcca_jax.visual import autoencoder as ae_lib
from dcca_jax.data import datasets as data_lib
from dcca_jax.semantic import deepwords
from dcca_jax.visual import extract as extract_lib
from dcca_jax.visual import handcrafted as handcrafted_lib
from dcca_jax.visual import images as images_lib
from dcca_jax.tagging import metrics as metrics_lib
from dcca_jax.tagging import recommend as rec_lib
from dcca_jax.tagging import tagprop as tagprop_lib
from dcca_jax.data import synthetic
from dcca_jax.models.base import CorrelationModel, correlation_score_curve, load_model
from dcca_jax.baselines import cca_knn as cca_knn_lib
from dcca_jax.baselines import general_cca as general_cca_lib
from dcca_jax.baselines import jec as jec_lib
from dcca_jax.models.cca import LinearCCA
from dcca_jax._io import (atomic_save_npy, atomic_save_npz, atomic_write_json, atomic_write_text, config_key,
                          decode_problem, file_manifest, file_sha256, jsonable, listed_files, manifest_problems,
                          package_versions)

__all__ = [
    "pipeline_config",
    "PipelineError",
    "Pipeline",
    "run_pipeline",
    "MODEL_NAMES",
    "BASELINE_NAMES",
    "model_classes",
    "package_versions",
    "STAGE_ORDER",
    "stage_timings",
]

MODEL_NAMES = ("cca", "kcca", "dcca")
BASELINE_NAMES = ("jec", "general_cca", "cca_knn", "tagprop")
DEFAULT_BASELINES = ("jec", "general_cca", "cca_knn")  # "tagprop" is optional: --config.baselines=(...,'tagprop')
STAGE_VERSION = 1
MANIFEST = "manifest.json"
# Not in a stage's manifest: the bookkeeping files, and "train/" (the resume state of a trained model, whose
# checkpoints Checkpoints.restore_or_init checks itself; the finished stage never reads it).
_UNLISTED = ("key.json", "DONE", MANIFEST, "train")



def _backbone_config(visual: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The :func:`~dcca_jax.visual.extract.backbone_config` of ``config.visual`` for the CNN backbone ``name``."""
    b = extract_lib.backbone_config()
    b.backbone = name
    b.engine = visual.engine if name == "mobilenet_v2" else "auto"
    b.mobilenet_v2.tflite_path = visual.tflite_path
    b.mobilenet_v2.update(dict(visual.get("mobilenet_v2", {})))
    b.alexnet.weights_path = visual.alexnet_weights
    b.alexnet.layout = visual.alexnet_layout
    b.crop_fraction = visual.crop_fraction
    return b


def _mobilenet_levers(visual: ml_collections.ConfigDict) -> dict:
    """The non-default MobileNetV2 levers of ``config.visual`` (fine-tuned weights by content hash)."""
    out = extract_lib.changed_levers(visual.get("mobilenet_v2", ml_collections.ConfigDict()))
    if out.get("finetuned_checkpoint") and pathlib.Path(out["finetuned_checkpoint"]).is_file():
        out["finetuned_checkpoint"] = file_sha256(out["finetuned_checkpoint"])
    return out


class PipelineError(RuntimeError):
    """A user-facing failure (bad path, bad config): the message says what to change."""


def model_classes() -> dict[str, type[CorrelationModel]]:
    """The correlation model classes by config name: ``{"cca": LinearCCA, "kcca": KernelCCA, "dcca": DeepCCA}``."""
    # Imported lazily: kernel and deep CCA pull in more of flax/optax/orbax than the rest needs.
    from dcca_jax.models.dcca import DeepCCA
    from dcca_jax.models.kcca import KernelCCA

    return {"cca": LinearCCA, "kcca": KernelCCA, "dcca": DeepCCA}


def pipeline_config() -> ml_collections.ConfigDict:
    """The main job's configuration: the embedded synthetic dataset, end to end, on 2 CPU cores.

    Every size is ``"auto"``: resolved from the data after the split, towards the targets in ``c.sizes``
    (:mod:`dcca_jax.sizes`); an integer set instead must fit the data.
    """
    classes = model_classes()
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.kind = "synthetic"  # synthetic | corel5k | image_folder | nus_wide | features
    c.data.root = ""  # dataset folder (for synthetic: where to generate; default workdir/stages/data)
    c.data.options = ml_collections.ConfigDict()  # extra keyword arguments of the loader
    c.data.synthetic = synthetic.synthetic_config()
    c.data.validation_fraction = 0.15
    c.data.max_train = 0  # 0 = all; else a seeded subsample (quick trials)

    c.visual = ml_collections.ConfigDict()
    c.visual.backbone = "auto"  # auto | mobilenet_v2 | alexnet | handcrafted | precomputed
    # MobileNetV2 TFLite file; "" = none (backbone "auto" then uses the hand-crafted features). The library reads
    # no environment: experiments/configs/default.py fills in $DCCA_MOBILENET_TFLITE or ../shared.
    c.visual.tflite_path = ""
    c.visual.alexnet_weights = ""
    c.visual.alexnet_layout = "torchvision"
    c.visual.batch_size = 32
    # MobileNetV2's engine: auto | litert | jax (visual.extract.backbone_config: LiteRT on a CPU when installed).
    c.visual.engine = "auto"
    # Centre crop as a fraction of the shorter side before resizing (ImageNet convention 0.875; 1.0 keeps the
    # whole centre square, which suits Corel's 3:2 photos better, see FINDINGS.md).
    c.visual.crop_fraction = 0.875
    # Images whose declared size has more pixels are refused (named in results.json) before decoding, on
    # every backbone and in JEC; larger ones are decoded at reduced size (visual.images.open_image).
    c.visual.max_pixels = images_lib.DEFAULT_MAX_PIXELS
    # MobileNetV2 feature levers (visual.extract.backbone_config's mobilenet_v2 fields; JAX port only): pooled
    # outputs of several layers, per-block L2, horizontal-flip averaging, the fine-tuned network's weights.
    c.visual.mobilenet_v2 = ml_collections.ConfigDict(dict(extract_lib.LEVER_DEFAULTS))
    c.visual.use_autoencoder = True
    c.visual.autoencoder = ae_lib.autoencoder_config()

    c.semantic = deepwords.semantic_config()

    c.models = MODEL_NAMES
    c.cca = classes["cca"].default_config()
    c.cca.ridge_v = 1e-2
    c.cca.ridge_s = 1e-2
    c.kcca = classes["kcca"].default_config()
    c.dcca = classes["dcca"].default_config()

    c.baselines = DEFAULT_BASELINES
    c.general_cca = general_cca_lib.general_cca_config()
    c.cca_knn = cca_knn_lib.cca_knn_config()
    c.cca_knn.word2vec_dim = sizes_lib.size_field()
    c.jec = ml_collections.ConfigDict({"k": 5})
    c.tagprop = tagprop_lib.tagprop_config()  # on the raw CNN features (results/corel5k_side_by_side)

    c.recommend = rec_lib.transfer_config()
    c.eval = ml_collections.ConfigDict({"ccs_top_k": 20, "ap_ar_max_tags": 10})
    c.sizes = sizes_lib.targets_config()
    return sizes_lib.use_auto(c)


# ----------------------------------------------------------------------------------------------- helpers
def _recorded_key(key_file: pathlib.Path) -> str | None:
    """The key recorded in a stage's ``key.json``; None when the file is missing or cannot be read."""
    try:
        key = json.loads(key_file.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def _read_manifest(d: pathlib.Path) -> dict | None:
    try:
        files = json.loads((d / MANIFEST).read_text())["files"]
        return files if isinstance(files, dict) and all(
            isinstance(v, dict) and {"size", "sha256"} <= set(v) for v in files.values()) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _outputs(manifest: dict | None) -> dict:
    """The part of a manifest that later stages depend on (the timing changes on every run)."""
    return {k: v for k, v in (manifest or {}).items() if k != "timing.json"}


@dataclasses.dataclass
class Views:
    """The two views of every split, aligned row by row with ``labels``."""

    v: dict[str, np.ndarray]
    s: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


class Pipeline:
    """Runs (or reloads) the stages of the pipeline in ``workdir``.

    Each ``stage_*`` method returns the stage's outputs, computing them only when the cached ones are
    missing or stale. ``run()`` runs everything and writes ``results.json``, ``tables.md`` and figures.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, progress: bool = False,
                 fail_after: str | None = None, variant: str = ""):
        # The config as given ("auto" sizes) and, once the data is loaded, with every size resolved.
        self.requested_config = config
        self.config = config
        self.sizes: sizes_lib.Resolution | None = None
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        # Test hook: raise right after this stage completes, to simulate a killed job.
        self._fail_after = fail_after
        # A variant (e.g. "d50" in a dimension sweep) keeps its own model/recommend stages beside the
        # shared data and feature stages, so sweeping does not overwrite the main run.
        self.variant = variant
        self._cache: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self._validate_config()

    # ------------------------------------------------------------------------------------- machinery
    def _validate_config(self) -> None:
        c = self.config
        bad = [m for m in c.models if m not in MODEL_NAMES]
        if bad:
            raise PipelineError(f"config.models has unknown entries {bad}; choose from {MODEL_NAMES}.")
        bad = [b for b in c.baselines if b not in BASELINE_NAMES]
        if bad:
            raise PipelineError(f"config.baselines has unknown entries {bad}; choose from {BASELINE_NAMES}.")
        if c.data.kind not in ("synthetic",) + tuple(data_lib.LOADERS):
            raise PipelineError(
                f"config.data.kind={c.data.kind!r} is not one of {('synthetic',) + tuple(data_lib.LOADERS)}."
            )
        if c.data.kind != "synthetic" and not c.data.root:
            raise PipelineError(f"config.data.root is empty: set --config.data.root=/path/to/{c.data.kind}.")
        if c.data.kind != "synthetic" and not pathlib.Path(c.data.root).exists():
            raise PipelineError(f"config.data.root={c.data.root} does not exist: point it at the dataset folder.")

    def stage_dir(self, name: str) -> pathlib.Path:
        if self.variant and (name.startswith("model_") or name == "recommend"):
            name = f"{name}@{self.variant}"
        return self.workdir / "stages" / name

    def _run_stage(self, name: str, key_payload: dict, compute: Callable[[pathlib.Path], None]) -> tuple[pathlib.Path, str]:
        key = config_key({"stage": name, "version": STAGE_VERSION, **key_payload})
        d = self.stage_dir(name)
        key_file, done = d / "key.json", d / "DONE"
        recorded = _recorded_key(key_file)
        damaged, old_manifest = False, None
        if done.exists() and recorded == key:
            problems = self._stage_problems(d)
            if not problems:
                logging.info("stage %s: up to date (key %s), skipped", name, key)
                return d, key
            logging.warning("stage %s in %s is damaged and is recomputed: %s", name, d, "; ".join(problems[:10])
                            + (f"; and {len(problems) - 10} more" if len(problems) > 10 else ""))
            damaged, old_manifest = True, _read_manifest(d)
            shutil.rmtree(d)
        elif key_file.exists() and recorded is None:
            logging.warning("stage %s: %s cannot be read; recomputing the stage.", name, key_file)
            damaged, old_manifest = True, _read_manifest(d)
            shutil.rmtree(d)
        elif key_file.exists() and recorded != key:
            logging.info("stage %s: inputs changed, recomputing", name)
            shutil.rmtree(d)
        elif d.exists():
            logging.info("stage %s: resuming an unfinished run", name)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(key_file, json.dumps({"key": key, "inputs": jsonable(key_payload)}, indent=2))
        t0 = time.perf_counter()
        compute(d)
        self.timings[name] = time.perf_counter() - t0
        atomic_write_text(d / "timing.json", json.dumps({"seconds": self.timings[name]}))
        manifest = self._write_manifest(d)
        done.write_text(key + "\n")
        logging.info("stage %s: done in %.1f s", name, self.timings[name])
        # Without a recorded manifest (an older stage) nothing says the new files equal the old: be safe.
        if damaged and (old_manifest is None or _outputs(old_manifest) != _outputs(manifest)):
            self._drop_downstream(key, d)
        if self._fail_after == name:
            raise KeyboardInterrupt(f"simulated interruption after stage {name}")
        return d, key

    def _write_manifest(self, d: pathlib.Path) -> dict:
        """Records the size and SHA-256 of every file of the finished stage ``d`` in ``manifest.json`` (written
        after the stage's files, before ``DONE``)."""
        manifest = file_manifest(d, exclude=_UNLISTED)
        atomic_write_json(d / MANIFEST, {"files": manifest})
        return manifest

    def _stage_problems(self, d: pathlib.Path) -> list[str]:
        """What is wrong with the files of the finished stage ``d`` (one line each, naming the path); [] when
        they match its manifest. A stage written before manifests existed is accepted when its ``.npy``,
        ``.npz`` and ``.json`` files decode, and its manifest is recorded then."""
        if not (d / MANIFEST).exists():
            problems = [m for m in map(decode_problem, (d / rel for rel in listed_files(d, exclude=_UNLISTED))) if m]
            if not problems:
                self._write_manifest(d)
                logging.info("stage %s: no manifest (written before manifests existed); its files decode, manifest "
                             "recorded", d.name)
            return problems
        manifest = _read_manifest(d)
        if manifest is None:
            return [f"{d / MANIFEST}: cannot be read"]
        return manifest_problems(d, manifest)

    def _drop_downstream(self, key: str, d: pathlib.Path) -> None:
        """Removes every stage whose key was computed from ``key`` (recursively): the recomputed stage ``d``
        differs from what they were computed from, or may (a stage that recomputes to the files its manifest
        recorded keeps them)."""
        todo = [key]
        while todo:
            k = todo.pop()
            for other in sorted((self.workdir / "stages").glob("*/key.json")):
                if other.parent == d or not other.parent.exists():
                    continue
                text = other.read_text(errors="replace")
                if k in text:
                    logging.warning("stage %s: computed from the old files of %s, which recomputed differently (or "
                                    "had no manifest to compare); removed, it is recomputed when needed.",
                                    other.parent.name, d.name)
                    todo.append(_recorded_key(other) or "")
                    shutil.rmtree(other.parent)
                    stage = other.parent.name.split("@")[0]
                    self._cache.pop({"autoencoder": "ae"}.get(stage, stage), None)
            todo = [t for t in todo if t]

    # ------------------------------------------------------------------------------------------ data
    def stage_data(self, *, resolve: bool = True):
        """Loads the dataset (generating the synthetic one first) and splits train into fit/val.

        With ``resolve`` (the default) the sizes are resolved from the split first (:meth:`resolve_sizes`), so no
        stage runs on ``"auto"`` or on sizes that cannot fit.
        """
        if "data" not in self._cache:
            self._cache["data"] = self._load_split()
        if resolve and self.sizes is None:
            self.resolve_sizes()
        return self._cache["data"]

    def _load_split(self) -> dict:
        c = self.config
        if c.data.kind == "synthetic":
            root = pathlib.Path(c.data.root) if c.data.root else self.stage_dir("data") / "synthetic"

            def gen(d):
                synthetic.generate(root, config=c.data.synthetic)

            _, gen_key = self._run_stage("data", {"synthetic": c.data.synthetic, "root": str(root)}, gen)
            ds = data_lib.load_image_folder(root, name="synthetic")
        else:
            try:
                ds = data_lib.load_dataset(c.data.kind, c.data.root, **dict(c.data.options))
            except FileNotFoundError as e:
                raise PipelineError(f"cannot load {c.data.kind} from {c.data.root}: {e}") from e
        train = ds.train
        if c.data.max_train and c.data.max_train < len(train):
            idx = np.sort(np.random.default_rng(c.seed).permutation(len(train))[: c.data.max_train])
            train = train.subset(idx)
        fit, val = data_lib.train_validation_split(train, fraction=c.data.validation_fraction, seed=c.seed)
        fingerprint = config_key({
            "name": ds.name, "vocabulary": ds.vocabulary,
            "train": [train.ids, train.tags], "test": [ds.test.ids, ds.test.tags],
            "features": [None if s.features is None else hashlib.sha256(np.ascontiguousarray(s.features)).hexdigest()
                         for s in (train, ds.test)],
        })
        out = {"dataset": ds, "train": train, "fit": fit, "val": val, "test": ds.test, "fingerprint": fingerprint}
        # Row positions of fit/val inside train (train_validation_split keeps order, ids are unique).
        pos = {i: k for k, i in enumerate(train.ids)}
        out["fit_rows"] = np.array([pos[i] for i in fit.ids], np.int64)
        out["val_rows"] = np.array([pos[i] for i in val.ids], np.int64)
        return out

    def visual_dim(self) -> int:
        """Width of the visual features, known before extraction (the CNN stage's output once it exists)."""
        if "cnn" in self._cache:
            return int(self._cache["cnn"]["train"].shape[1])
        name = self._backbone_name()
        if name == "precomputed":
            return int(self.stage_data(resolve=False)["train"].features.shape[1])
        if name == "handcrafted":
            return handcrafted_lib.DIM
        if name == "alexnet":
            from dcca_jax.visual import alexnet

            return alexnet.layer_sizes(layout=self.config.visual.alexnet_layout)["fc7"]
        from dcca_jax.visual import mobilenet

        return mobilenet.NUM_FEATURES

    def data_shape(self, rows: dict | None = None) -> sizes_lib.DataShape:
        """What the size rules read: counts of the split (``rows``: the kept train/fit/val/test rows; default
        all), the vocabulary, the tags per image, and the visual width."""
        data = self.stage_data(resolve=False)
        if rows is None:
            rows = {"train": None, "fit": data["fit_rows"], "val": data["val_rows"], "test": data["test"].ids}
        return sizes_lib.DataShape.from_labels(
            data["train"].labels, train_rows=rows["train"], fit_rows=rows["fit"], val_rows=rows["val"],
            n_test=len(rows["test"]), visual_dim=self.visual_dim())

    def resolve_sizes(self, rows: dict | None = None) -> sizes_lib.Resolution:
        """Resolves every ``"auto"`` size from the split (:func:`dcca_jax.sizes.resolve`) into ``self.config``.

        Called when the data is loaded, before any expensive stage, and again after the CNN stage with the rows
        whose features exist. Raises :class:`dcca_jax.sizes.SizeError` listing every size that cannot fit.
        """
        res = sizes_lib.resolve(self.requested_config, self.data_shape(rows))
        res.raise_if_problems()
        if self.sizes is None or res.values != self.sizes.values:
            for w in res.warnings:
                logging.warning("%s", w)
            logging.info("sizes: %s", ", ".join(f"{k}={v}{' (auto)' if k in res.auto else ''}"
                                                for k, v in res.values.items()))
        self.sizes, self.config = res, res.config
        return res

    # ------------------------------------------------------------------------------------ visual view
    def _jec_cache(self, split: str) -> pathlib.Path:
        # JEC features serve both the JEC baseline and the hand-crafted backbone; the file records a hash
        # of its image list and is recomputed when that changes.
        return self.workdir / "stages" / "jec_features" / f"{split}.npz"

    def _backbone_name(self) -> str:
        c = self.config.visual
        data = self.stage_data(resolve=False)
        if c.backbone != "auto":
            return c.backbone
        if data["train"].features is not None:
            return "precomputed"
        if c.tflite_path and pathlib.Path(c.tflite_path).exists():
            return "mobilenet_v2"
        logging.warning(
            "MobileNetV2 weights not found at %s: using the hand-crafted colour+texture backbone. Set "
            "--config.visual.tflite_path (or $DCCA_MOBILENET_TFLITE) to the TFLite file for CNN features.",
            c.tflite_path,
        )
        return "handcrafted"

    def stage_cnn(self):
        """CNN (or hand-crafted / precomputed) features of every train and test image."""
        if "cnn" in self._cache:
            return self._cache["cnn"]
        data = self.stage_data()
        c = self.config.visual
        name = self._backbone_name()
        payload = {"data": data["fingerprint"], "backbone": name}
        if name == "handcrafted":
            payload["standardise"] = "train"  # Gabor statistics of the training split, saved for the tagger
        if name != "precomputed":
            payload["max_pixels"] = int(c.max_pixels)
        if name in ("mobilenet_v2", "alexnet"):
            payload["crop_fraction"] = c.crop_fraction
        if name == "mobilenet_v2":
            payload["weights"] = c.tflite_path
            # the engines' features differ slightly
            payload["engine"] = extract_lib.resolve_engine(_backbone_config(c, name))[0]
            levers = _mobilenet_levers(c)
            if levers:  # only when set, so the keys of runs without levers stay the same
                payload["levers"] = levers
        elif name == "alexnet":
            payload["weights"] = [c.alexnet_weights, c.alexnet_layout]
        splits = {"train": data["train"], "test": data["test"]}

        def compute(d):
            info = {"backbone": name, "failed": []}
            hc_stats = None
            if name == "handcrafted":
                train_jec = jec_lib.compute_jec_features(splits["train"].image_paths, cache_path=self._jec_cache("train"),
                                                         max_pixels=int(c.max_pixels))
                hc_stats = handcrafted_lib.gabor_statistics(train_jec, train_jec.ok)
                atomic_save_npz(d / "handcrafted_stats.npz", gabor_mean=hc_stats[0], gabor_std=hc_stats[1])
            for split_name, split in splits.items():
                if name == "precomputed":
                    feats = np.asarray(split.features, np.float32)
                    ok = np.isfinite(feats).all(1)
                elif name == "handcrafted":
                    feats, ok, failed = handcrafted_features(split.image_paths, cache_path=self._jec_cache(split_name),
                                                             stats=hc_stats, max_pixels=int(c.max_pixels))
                    info["failed"] += [{**f, "split": split_name} for f in failed]
                else:
                    bcfg = _backbone_config(c, name)
                    if name == "mobilenet_v2" and not pathlib.Path(c.tflite_path).exists():
                        raise PipelineError(f"MobileNetV2 TFLite file not found: {c.tflite_path}; set "
                                            "--config.visual.tflite_path or $DCCA_MOBILENET_TFLITE.")
                    backbone = extract_lib.build_backbone(bcfg)
                    backbone.preprocess = dataclasses.replace(backbone.preprocess, max_pixels=int(c.max_pixels))
                    res = extract_lib.extract_features(
                        split.image_paths, backbone=backbone, batch_size=c.batch_size,
                        cache_dir=d / f"shards_{split_name}", progress=self.progress)
                    feats, ok = res.features, res.ok
                    info[f"images_per_second_{split_name}"] = res.images_per_second
                    info["engine"] = backbone.engine
                    info["failed"] += [{**f, "split": split_name} for f in res.failed]
                atomic_save_npy(d / f"{split_name}.npy", feats.astype(np.float32))
                atomic_save_npy(d / f"{split_name}_ok.npy", ok)
                info[f"n_{split_name}"] = int(len(feats))
                info[f"n_failed_{split_name}"] = int((~ok).sum())
            atomic_write_text(d / "info.json", json.dumps(jsonable(info), indent=2))

        d, key = self._run_stage("cnn", payload, compute)
        out = {"key": key, "info": json.loads((d / "info.json").read_text())}
        for s in ("train", "test"):
            out[s] = np.load(d / f"{s}.npy")
            out[f"{s}_ok"] = np.load(d / f"{s}_ok.npy")
        for f in out["info"]["failed"]:
            logging.warning("image skipped: %s (%s)", f.get("path"), f.get("reason"))
        self._cache["cnn"] = out
        self.resolve_sizes(self.rows())  # the rows and width the later stages really get
        return out

    def rows(self):
        """Rows kept in each split (images whose features could be computed) and fit/val inside train."""
        data, cnn = self.stage_data(), self.stage_cnn()
        keep_train, keep_test = cnn["train_ok"], cnn["test_ok"]
        fit = data["fit_rows"][keep_train[data["fit_rows"]]]
        val = data["val_rows"][keep_train[data["val_rows"]]]
        return {"train": np.flatnonzero(keep_train), "test": np.flatnonzero(keep_test), "fit": fit, "val": val}

    def stage_autoencoder(self):
        """Auto-encoder codes (section 2) of the CNN features; fitted on the fit part, stopped on val."""
        if "ae" in self._cache:
            return self._cache["ae"]
        cnn, rows = self.stage_cnn(), self.rows()
        c = self.config.visual
        if not c.use_autoencoder:
            out = {"key": cnn["key"], "train": cnn["train"], "test": cnn["test"], "metrics": None}
            self._cache["ae"] = out
            return out

        def compute(d):
            x_fit, x_val = cnn["train"][rows["fit"]], cnn["train"][rows["val"]]
            model = ae_lib.fit_autoencoder(x_fit, config=c.autoencoder, workdir=str(d / "train"), x_val=x_val)
            model.save(d / "model")
            codes = {s: np.zeros((len(cnn[s]), c.autoencoder.code_dim), np.float32) for s in ("train", "test")}
            for s in ("train", "test"):
                ok = rows[s]
                codes[s][ok] = np.asarray(model.encode(cnn[s][ok]))
                atomic_save_npy(d / f"{s}.npy", codes[s])
            rec = np.asarray(model.reconstruct(cnn["test"][rows["test"]]))
            held = ae_lib.reconstruction_metrics(cnn["test"][rows["test"]], rec, mean=model.mean)
            pca = ae_lib.pca_reconstruction(x_fit, cnn["test"][rows["test"]], n_components=c.autoencoder.code_dim)
            held_pca = ae_lib.reconstruction_metrics(cnn["test"][rows["test"]], pca, mean=model.mean)
            m = {"held_out": held, "held_out_pca_same_dim": held_pca, "best_epoch": model.best_epoch,
                 "input_dim": int(cnn["train"].shape[1]), "code_dim": int(c.autoencoder.code_dim)}
            atomic_write_text(d / "metrics.json", json.dumps(jsonable(m), indent=2))

        d, key = self._run_stage("autoencoder", {"cnn": cnn["key"], "ae": c.autoencoder}, compute)
        out = {"key": key, "train": np.load(d / "train.npy"), "test": np.load(d / "test.npy"),
               "metrics": json.loads((d / "metrics.json").read_text())}
        self._cache["ae"] = out
        return out

    # ---------------------------------------------------------------------------------- semantic view
    def stage_semantic(self):
        """Skip-gram vectors and deep textual words learned on the fit part; every split encoded."""
        if "semantic" in self._cache:
            return self._cache["semantic"]
        data, rows = self.stage_data(), self.rows()
        c = self.config.semantic
        vocab = data["dataset"].vocabulary

        def compute(d):
            fit_tags = [data["train"].tags[i] for i in rows["fit"]]
            view = deepwords.semantic_view(fit_tags, data["train"].tags, data["test"].tags, config=c,
                                           vocabulary=vocab, names=["fit", "train", "test"])
            atomic_save_npy(d / "train.npy", np.asarray(view.others[0], np.float32))
            atomic_save_npy(d / "test.npy", np.asarray(view.others[1], np.float32))
            tag_s, _ = view.encoder.encode_numpy([[w] for w in vocab], name="vocabulary")
            atomic_save_npy(d / "tags.npy", np.asarray(tag_s, np.float32))
            view.encoder.save(d / "encoder")
            atomic_write_text(d / "reports.json", json.dumps([r.to_dict() for r in view.reports], indent=2))

        d, key = self._run_stage("semantic", {"data": data["fingerprint"], "rows": config_key(rows), "semantic": c}, compute)
        out = {"key": key, "train": np.load(d / "train.npy"), "test": np.load(d / "test.npy"),
               "tags": np.load(d / "tags.npy"), "reports": json.loads((d / "reports.json").read_text())}
        self._cache["semantic"] = out
        return out

    def views(self) -> Views:
        """The DMFR views (AE codes, bags of deep words) of the fit/val/train/test rows, with labels."""
        data, rows, ae, sem = self.stage_data(), self.rows(), self.stage_autoencoder(), self.stage_semantic()
        lab_train, lab_test = data["train"].labels, data["test"].labels
        v = {"fit": ae["train"][rows["fit"]], "val": ae["train"][rows["val"]], "train": ae["train"][rows["train"]],
             "test": ae["test"][rows["test"]]}
        s = {"fit": sem["train"][rows["fit"]], "val": sem["train"][rows["val"]],
             "train": sem["train"][rows["train"]], "test": sem["test"][rows["test"]]}
        labels = {"fit": lab_train[rows["fit"]], "val": lab_train[rows["val"]], "train": lab_train[rows["train"]],
                  "test": lab_test[rows["test"]]}
        return Views(v, s, labels)

    # ------------------------------------------------------------------------------------------ models
    def stage_model(self, name: str) -> tuple[CorrelationModel, dict]:
        """Fits one correlation model (``cca``, ``kcca`` or ``dcca``) on the DMFR views of the fit part."""
        key_ = f"model_{name}"
        if key_ in self._cache:
            return self._cache[key_]
        ae, sem = self.stage_autoencoder(), self.stage_semantic()
        mcfg = self.config[name]
        views = self.views()
        cls = model_classes()[name]

        def compute(d):
            model = cls(mcfg)
            t0 = time.perf_counter()
            if name == "dcca":
                model.fit(views.v["fit"], views.s["fit"], validation=(views.v["val"], views.s["val"]),
                          workdir=d / "train")
            else:
                model.fit(views.v["fit"], views.s["fit"])
            fit_s = time.perf_counter() - t0
            model.save(d / "model")
            t0 = time.perf_counter()
            curves = {}
            for split in ("fit", "val", "test"):
                z_v, z_s = model.transform(views.v[split], views.s[split])
                curves[split] = np.asarray(correlation_score_curve(z_v, z_s)).tolist()
            transform_s = time.perf_counter() - t0
            info = {"fit_seconds": fit_s, "transform_seconds": transform_s, "ccs": curves,
                    "n_components": int(len(curves["fit"])), "config": jsonable(mcfg)}
            if name == "dcca":
                info["objective"] = mcfg.objective
            atomic_write_text(d / "info.json", json.dumps(info, indent=2))

        d, _ = self._run_stage(key_, {"ae": ae["key"], "semantic": sem["key"], "model": mcfg}, compute)
        out = (load_model(d / "model"), json.loads((d / "info.json").read_text()))
        self._cache[key_] = out
        return out

    # ------------------------------------------------------------------------------- recommendations
    def _evaluate(self, scores, truth, n_tags: int, train_labels) -> dict:
        """Metrics of the tags that :func:`rec_lib.select_tags` (the package's one top-n rule) picks."""
        fill = self.config.recommend.get("fill", "prior")
        prior = rec_lib.tag_prior(train_labels)
        n_curve = min(self.config.eval.ap_ar_max_tags, truth.shape[1])
        # One selection with the most places serves every n (the rule is prefix-consistent): one compile, not 11.
        widest = rec_lib.select_tags(scores, n=max(n_tags, n_curve), prior=prior, fill=fill)
        sel = rec_lib.first_places(widest, n_tags)
        m = metrics_lib.to_python(metrics_lib.evaluate(sel.indicator, truth))
        from_prior = np.asarray(sel.from_prior)
        m["tags/from_prior"] = int(from_prior.sum())
        m["tags/images_with_prior_fill"] = int(from_prior.any(1).sum())
        curve = []
        for n in range(1, n_curve + 1):
            ind = rec_lib.first_places(widest, n).indicator
            pi = metrics_lib.to_python(metrics_lib.per_image_metrics(ind, truth))
            curve.append({"n_tags": n, **pi})
        return {"metrics": m, "fill": fill, "n_tags": int(n_tags), "ap_ar_curve": curve}

    def recommend_with_model(self, name: str) -> dict:
        """DMFR&<model>: kNN label transfer in the model's common space; metrics on the test split."""
        model, _ = self.stage_model(name)
        views, sem = self.views(), self.stage_semantic()
        c = self.config.recommend
        _, scores = rec_lib.recommend_from_model(
            model, views.v["test"], train_v=views.v["train"], train_s=views.s["train"],
            train_labels=views.labels["train"], config=c, tag_s=sem["tags"])
        return {"scores": np.asarray(scores),
                **self._evaluate(scores, views.labels["test"], int(c.n_tags), views.labels["train"])}

    def recommend_baseline(self, name: str) -> dict:
        """One baseline (``jec``, ``general_cca``, ``cca_knn`` or ``tagprop``) on the same split and rows."""
        data, cnn, rows = self.stage_data(), self.stage_cnn(), self.rows()
        c = self.config
        lab_train, lab_test = data["train"].labels[rows["train"]], data["test"].labels[rows["test"]]
        n_tags = int(c.recommend.n_tags)
        if name == "jec":
            if data["train"].image_paths is None:
                raise PipelineError("JEC needs images; this dataset has precomputed features only. "
                                    "Remove 'jec' from --config.baselines.")
            # The images the visual stage skipped are not read again; JEC's rows are the same as every method's.
            skip = {f["path"]: f["reason"] for f in cnn["info"]["failed"]}
            feats = {s: jec_lib.compute_jec_features(data[s].image_paths, cache_path=self._jec_cache(s), skip=skip,
                                                     max_pixels=int(c.visual.max_pixels)) for s in ("train", "test")}
            ok = {s: feats[s].ok[rows[s]] for s in ("train", "test")}
            extra = [f for s in ("train", "test") for f in feats[s].failed if f["path"] not in skip]
            tr = {f: v[rows["train"]][ok["train"]] for f, v in feats["train"].items()}
            te = {f: v[rows["test"]][ok["test"]] for f, v in feats["test"].items()}
            scales = jec_lib.distance_scales(tr, seed=c.seed)
            dist = jec_lib.jec_distances(te, tr, scales=scales)
            scores = np.full((len(rows["test"]), lab_test.shape[1]), -np.inf)
            scores[ok["test"]] = jec_lib.jec_transfer(dist, lab_train[ok["train"]], n_tags=n_tags, k=int(c.jec.k))
            if extra:  # read by the visual stage but not by JEC (a file changed in between): no JEC tags for them
                logging.warning("JEC could not read %d image(s) the visual stage read: %s", len(extra), extra[:10])
                return {"scores": scores, "failed_images": extra,
                        **self._evaluate(scores, lab_test, n_tags, lab_train)}
        elif name == "tagprop":  # fitted on the training rows' CNN features (leave-one-out), no correlation model
            model = tagprop_lib.fit_tagprop(cnn["train"][rows["train"]], lab_train, config=c.tagprop)
            scores = tagprop_lib.tagprop_scores(model, cnn["test"][rows["test"]])
        else:
            x_tr, x_te = cnn["train"][rows["train"]], cnn["test"][rows["test"]]
            x_fit = cnn["train"][rows["fit"]]
            lab_fit = data["train"].labels[rows["fit"]]
            g = c[name]  # sizes resolved and checked by dcca_jax.sizes
            if name == "general_cca":
                model = general_cca_lib.fit_general_cca(x_fit, lab_fit.astype(np.float32), pca_dims=int(g.pca_dims),
                                                        n_components=int(g.n_components), ridge_v=g.ridge_v,
                                                        ridge_s=g.ridge_s)
                s_tr, tag_s = lab_train.astype(np.float32), np.eye(lab_train.shape[1], dtype=np.float32)
            else:
                wv = cca_knn_lib.train_tag_word2vec(lab_fit, data["dataset"].vocabulary, dim=int(g.word2vec_dim),
                                                    seed=c.seed)
                model = cca_knn_lib.fit_cca_knn(x_fit, lab_fit, wv, pca_dims=int(g.pca_dims),
                                                n_components=int(g.n_components), ridge_v=g.ridge_v, ridge_s=g.ridge_s)
                s_tr, tag_s = cca_knn_lib.mean_tag_vectors(lab_train, wv), wv
            _, scores = rec_lib.recommend_from_model(model, x_te, train_v=x_tr, train_s=s_tr, train_labels=lab_train,
                                                     config=g.transfer, tag_s=tag_s)
        return {"scores": np.asarray(scores), **self._evaluate(scores, lab_test, n_tags, lab_train)}

    def stage_recommend(self) -> dict:
        """Table 2: every baseline and every DMFR&model, same test rows, both metric families."""
        data = self.stage_data()
        keys = {m: self.run_key_of(f"model_{m}") for m in self.config.models}
        payload = {"models": keys, "recommend": self.config.recommend, "cnn": self.stage_cnn()["key"],
                   "baselines": {b: self.config[b] for b in self.config.baselines},
                   "rows": config_key(self.rows()), "data": data["fingerprint"]}

        def compute(d):
            results = {}
            methods = [(b, BASELINE_TITLES[b], self.recommend_baseline) for b in self.config.baselines]
            methods += [(m, MODEL_TITLES[m], self.recommend_with_model) for m in self.config.models]
            for name, title, recommend in methods:
                t0 = time.perf_counter()
                r = recommend(name)
                r["seconds"] = time.perf_counter() - t0
                atomic_save_npy(d / f"scores_{name}.npy", r.pop("scores"))
                results[title] = r
            atomic_write_text(d / "results.json", json.dumps(jsonable(results), indent=2))

        d, _ = self._run_stage("recommend", payload, compute)
        return json.loads((d / "results.json").read_text())

    def recommend_scores(self) -> dict[str, np.ndarray]:
        """The (n_test, V) tag scores of every method of the recommend stage (runs it when needed), by name."""
        self.stage_recommend()
        d = self.stage_dir("recommend")
        names = list(self.config.baselines) + list(self.config.models)
        return {name: np.load(d / f"scores_{name}.npy") for name in names}

    def run_key_of(self, stage: str) -> str:
        if stage.startswith("model_"):
            self.stage_model(stage[len("model_"):])
        return json.loads((self.stage_dir(stage) / "key.json").read_text())["key"]

    # ------------------------------------------------------------------------------------------ report
    def correlation_table(self) -> dict:
        """Table 1: the cross-modal correlation score (top-1..K) of each model on fit, val and test."""
        out = {}
        for m in self.config.models:
            _, info = self.stage_model(m)
            out[MODEL_TITLES[m]] = {"ccs": info["ccs"], "fit_seconds": info["fit_seconds"],
                                    "transform_seconds": info["transform_seconds"],
                                    "objective": info.get("objective")}
        return out

    def retrieval_table(self) -> dict:
        """Cross-modal retrieval (image-to-tag, tag-to-image) of every method on the test split
        (:mod:`dcca_jax.tagging.retrieval`)."""
        from dcca_jax.tagging import retrieval

        return retrieval.pipeline_retrieval(self)

    def run(self) -> dict:
        """Every stage, then ``results.json``, ``tables.md``, the figures and the tagger bundle
        (``workdir/tagger``, :mod:`dcca_jax.tagging.bundle`); returns the results."""
        t0 = time.perf_counter()
        data = self.stage_data()
        cnn = self.stage_cnn()
        ae = self.stage_autoencoder()
        sem = self.stage_semantic()
        table1 = self.correlation_table()
        table2 = self.stage_recommend()
        results = {
            "dataset": {"name": data["dataset"].name, "n_train": len(data["train"]), "n_fit": len(data["fit"]),
                        "n_val": len(data["val"]), "n_test": len(data["test"]),
                        "vocabulary": len(data["dataset"].vocabulary), "info": jsonable(data["dataset"].info)},
            "visual": {"backbone": cnn["info"]["backbone"], "cnn_dim": int(cnn["train"].shape[1]),
                       "failed_images": cnn["info"]["failed"], "autoencoder": ae["metrics"]},
            "semantic": {"dim": int(sem["train"].shape[1]), "reports": sem["reports"]},
            "table1_correlation": table1,
            "table2_recommendation": table2,
            "retrieval": self.retrieval_table(),
            "sizes": self.sizes.to_dict(),
            "config": jsonable(self.config),
            "config_requested": jsonable(self.requested_config),
            "versions": package_versions(),
            "seconds_this_run": time.perf_counter() - t0,
        }
        if self.config.models:
            from dcca_jax.tagging import bundle

            results["tagger"] = bundle.export_bundle(self, self.workdir / "tagger")
        atomic_write_text(self.workdir / "results.json", json.dumps(jsonable(results), indent=2))
        from dcca_jax import report

        atomic_write_text(self.workdir / "tables.md", report.markdown_tables(results))
        report.plot_correlation(results, self.workdir / "table1_ccs.png")
        report.plot_ap_ar(results, self.workdir / "ap_ar.png")
        methods = [f"{MODEL_TITLES[m]} (transfer)" for m in self.config.models]
        methods += [f"{BASELINE_TITLES[b]} (transfer)" for b in self.config.baselines if b == "general_cca"]
        report.plot_per_word_ap(results, self.workdir / "retrieval_per_word_ap.png", methods=methods)
        return results


MODEL_TITLES = {"cca": "DMFR&CCA", "kcca": "DMFR&KCCA", "dcca": "DMFR&DCCA"}
BASELINE_TITLES = {"jec": "JEC", "general_cca": "General CCA", "cca_knn": "CCA-KNN", "tagprop": "TagProp"}


def handcrafted_features(paths, *, cache_path=None, stats=None, max_pixels: int = images_lib.DEFAULT_MAX_PIXELS
                         ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """A CNN-free visual feature for machines without pretrained weights (1,216-d,
    :mod:`dcca_jax.visual.handcrafted`); ``stats`` = the training (mean, std) of the Gabor energies (default:
    those of the readable images of ``paths``). Images are read as JEC reads them (the package's reader at
    JEC's working size, :func:`dcca_jax.baselines.jec.compute_jec_features`).

    Returns:
      ``(features (n, 1216) float32, ok (n,) bool, failed [{"index", "path", "reason"}])``; the rows of
      unreadable images are NaN.
    """
    feats = jec_lib.compute_jec_features(paths, cache_path=cache_path, max_pixels=max_pixels)
    mean, std = handcrafted_lib.gabor_statistics(feats, feats.ok) if stats is None else stats
    return handcrafted_lib.handcrafted_from_jec(feats, gabor_mean=mean, gabor_std=std), feats.ok, feats.failed


# The stages in the order run() computes them ("data" only for the generated synthetic set).
STAGE_ORDER = ("data", "cnn", "autoencoder", "semantic", "model_cca", "model_kcca", "model_dcca", "recommend")


def stage_timings(workdir: str | os.PathLike) -> dict[str, Any]:
    """Seconds of every finished stage of a pipeline workdir, as its ``timing.json`` recorded them.

    Returns:
      ``{"stages": {stage: seconds}`` in :data:`STAGE_ORDER` (then any other stage, e.g. a variant's),
      ``"recommend_methods": {method title: seconds}`` (the recommend stage's share of each baseline and
      model, JEC's features included), ``"finished_at": {stage: POSIX time of its timing.json}}``; a stage
      without a readable ``timing.json`` is left out.
    """
    root = pathlib.Path(workdir) / "stages"
    names = sorted((p.parent.name for p in root.glob("*/timing.json")),
                   key=lambda n: (STAGE_ORDER.index(n) if n in STAGE_ORDER else len(STAGE_ORDER), n))
    stages, finished = {}, {}
    for name in names:
        f = root / name / "timing.json"
        try:
            stages[name] = float(json.loads(f.read_text())["seconds"])
            finished[name] = f.stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError):
            logging.warning("stage timings: %s cannot be read; stage %s left out", f, name)
    methods = {}
    try:
        methods = {title: float(r["seconds"]) for title, r in
                   json.loads((root / "recommend" / "results.json").read_text()).items() if "seconds" in r}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return {"stages": stages, "recommend_methods": methods, "finished_at": finished}


def run_pipeline(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, progress: bool = False) -> dict:
    """Runs the whole pipeline in ``workdir`` (resuming what is cached) and returns the results dict."""
    return Pipeline(config, workdir, progress=progress).run()

