"""A data check that takes seconds: load the data, read the image headers, resolve the sizes, list every problem.

``check_data(config)`` does what the pipeline does before its first expensive stage (load and split the data,
resolve every ``"auto"`` size, :mod:`dcca_jax.sizes`) plus a header read of every image (no pixel is decoded),
and returns a :class:`DataCheck`; :func:`format_check` renders it for a terminal. ``DataCheck.ok`` is False when
the pipeline would fail on this config and data. ``experiments/check_data.py`` and ``pipeline.py --dry_run``
print it.
"""
from __future__ import annotations

import dataclasses
import pathlib
import tempfile
import time
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from dcca_jax import sizes as sizes_lib
from dcca_jax.pipeline import Pipeline, PipelineError

__all__ = ["DataCheck", "check_data", "format_check", "read_headers"]

_LISTED = 10  # names shown per list (missing, unreadable)


@dataclasses.dataclass
class DataCheck:
    """What :func:`check_data` found. ``problems`` would stop the pipeline; ``warnings`` would not."""

    dataset: str
    kind: str
    root: str
    images: dict[str, Any]  # found, missing (names), unreadable ([{path, reason}]), checked (bool)
    shape: dict[str, Any] | None  # sizes.DataShape.to_dict(): split counts, vocabulary, tags per image
    visual: dict[str, Any]  # backbone, dim
    sizes: dict[str, Any] | None  # sizes.Resolution.to_dict()
    problems: list[str]
    warnings: list[str]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}


def read_headers(paths) -> list[dict[str, str]]:
    """The images among ``paths`` whose header Pillow cannot read (``[{path, reason}]``); no pixel is decoded."""
    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                _ = im.size, im.mode
        except Exception as e:  # any decoder error, a pixel-count bomb, an unreadable file
            bad.append({"path": str(p), "reason": f"{type(e).__name__}: {e}"})
    return bad


def _structural_problems(config: ml_collections.ConfigDict, data: dict, backbone: str) -> list[str]:
    """Failures the pipeline would meet after its expensive stages, found from the config and the split."""
    out = []
    has_images = data["train"].image_paths is not None
    if not has_images and backbone != "precomputed":
        out.append(f"--config.visual.backbone={config.visual.backbone}: the dataset has precomputed features and "
                   "no images; set it to precomputed (or auto)")
    if not has_images and "jec" in config.baselines:
        out.append(f"--config.baselines={tuple(config.baselines)}: JEC needs images and this dataset has "
                   "precomputed features only; leave jec out")
    if backbone == "mobilenet_v2" and not pathlib.Path(config.visual.tflite_path).exists():
        out.append(f"--config.visual.tflite_path={config.visual.tflite_path}: the MobileNetV2 TFLite file is not "
                   "there (or set --config.visual.backbone=auto for the hand-crafted fallback)")
    if backbone == "mobilenet_v2":
        from dcca_jax.visual import extract as extract_lib

        ecfg = extract_lib.backbone_config()
        ecfg.engine = config.visual.get("engine", "auto")
        try:
            extract_lib.resolve_engine(ecfg)
        except (ImportError, ValueError) as e:
            out.append(f"--config.visual.engine={ecfg.engine}: {e}")
    if backbone == "alexnet" and not config.visual.alexnet_weights:
        out.append("--config.visual.alexnet_weights is empty: the alexnet backbone needs its weights file")
    return out


def check_data(config: ml_collections.ConfigDict, *, workdir: str | pathlib.Path | None = None,
               headers: bool = True) -> DataCheck:
    """Loads and splits the data as the pipeline would, reads the image headers and resolves the sizes.

    Args:
      config: a pipeline config (``"auto"`` or explicit sizes).
      workdir: the pipeline's workdir (only the synthetic dataset is written there, as the pipeline would);
        default a temporary folder, removed afterwards.
      headers: read every image's header (skipped images are left out of the sizes, as the pipeline does).

    Returns:
      A :class:`DataCheck`; ``ok`` is False when the pipeline would fail.
    """
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dcca_check_") as tmp:
        out = _check(config, pathlib.Path(workdir) if workdir else pathlib.Path(tmp), headers)
    out.seconds = time.perf_counter() - t0
    return out


def _check(config, workdir: pathlib.Path, headers: bool) -> DataCheck:
    c = config
    empty = DataCheck(dataset="", kind=str(c.data.kind), root=str(c.data.root), images={}, shape=None, visual={},
                      sizes=None, problems=[], warnings=[])
    try:
        p = Pipeline(c, workdir)
        data = p.stage_data(resolve=False)
        backbone = p._backbone_name()
    except (PipelineError, ValueError, FileNotFoundError, OSError, KeyError) as e:
        empty.problems.append(f"data: {type(e).__name__}: {e}")
        return empty
    ds = data["dataset"]
    images: dict[str, Any] = {"found": 0, "missing": list(ds.info.get("missing_images", [])), "unreadable": [],
                              "checked": False}
    keep = {"train": np.ones(len(data["train"]), bool), "test": np.ones(len(data["test"]), bool)}
    if data["train"].image_paths is not None:
        images["found"] = len(data["train"].image_paths) + len(data["test"].image_paths)
        if headers:
            images["checked"] = True
            for split in ("train", "test"):
                bad = {b["path"]: b for b in read_headers(data[split].image_paths)}
                keep[split] = np.array([str(q) not in bad for q in data[split].image_paths], bool)
                images["unreadable"] += [{**b, "split": split} for b in bad.values()]
    problems = _structural_problems(c, data, backbone)
    warnings = []
    if images["missing"]:
        warnings.append(f"{len(images['missing'])} listed image(s) are not on disk and are left out")
    if images["unreadable"]:
        warnings.append(f"{len(images['unreadable'])} image(s) have no readable header and will be skipped")
    for split in ("train", "test"):
        if not keep[split].any():
            problems.append(f"data: no readable image in the {split} split")
    rows = {"train": np.flatnonzero(keep["train"]), "test": np.flatnonzero(keep["test"]),
            "fit": data["fit_rows"][keep["train"][data["fit_rows"]]],
            "val": data["val_rows"][keep["train"][data["val_rows"]]]}
    shape = p.data_shape(rows)
    res = sizes_lib.resolve(p.requested_config, shape)
    problems += [str(q) for q in res.problems]
    warnings += res.warnings
    return DataCheck(dataset=ds.name, kind=str(c.data.kind), root=str(ds.root), images=images,
                     shape=shape.to_dict(), visual={"backbone": backbone, "dim": shape.visual_dim},
                     sizes=res.to_dict(), problems=problems, warnings=warnings)


def format_check(check: DataCheck) -> str:
    """The check as terminal text: images, split, tags per image, resolved sizes, warnings, problems."""
    lines = [f"data check: {check.dataset or '?'} ({check.kind}) at {check.root or '?'}"]
    im = check.images
    if im:
        if im.get("found") or im.get("missing"):
            how = "header read" if im.get("checked") else "not read"
            lines.append(f"  images: {im['found']} found, {len(im['missing'])} missing, "
                         f"{len(im['unreadable'])} unreadable ({how})")
        for name in im["missing"][:_LISTED]:
            lines.append(f"    missing: {name}")
        for b in im["unreadable"][:_LISTED]:
            lines.append(f"    unreadable: {b['path']} ({b['reason']})")
        for what in ("missing", "unreadable"):
            if len(im[what]) > _LISTED:
                lines.append(f"    ... and {len(im[what]) - _LISTED} more {what}")
    s = check.shape
    if s:
        lines.append(f"  split: train {s['n_train']} (fit {s['n_fit']} + validation {s['n_val']}), test {s['n_test']}")
        lines.append(f"  vocabulary: {s['vocabulary']} words ({s['fit_words']} seen in the fit part); tags per "
                     f"training image: mean {s['tags_per_image']:.2f}, min {s['tags_min']}, max {s['tags_max']}, "
                     f"single-tag {s['single_tag_share']:.0%}, untagged {s['untagged']}")
    if check.visual:
        lines.append(f"  visual features: {check.visual['backbone']}, {check.visual['dim']}-d")
    if check.sizes:
        lines.append("  sizes (auto: resolved from the data towards config.sizes; max: the largest that fits):")
        width = max((len(f) for f in check.sizes["resolved"]), default=0)
        for flag, r in check.sizes["resolved"].items():
            how = "auto" if r["auto"] else "set"
            bound = "" if r["max"] is None else f", max {r['max']} = {r['limit']}"
            lines.append(f"    --config.{flag:<{width}} = {r['value']:<6} ({how}{bound})")
    for w in check.warnings:
        lines.append(f"  warning: {w}")
    if check.problems:
        lines.append(f"  {len(check.problems)} problem(s); the pipeline would fail:")
        lines += [f"    {q}" for q in check.problems]
    else:
        lines.append("  no problems: the pipeline's sizes fit this data")
    lines.append(f"  ({check.seconds:.1f} s)")
    return "\n".join(lines)
