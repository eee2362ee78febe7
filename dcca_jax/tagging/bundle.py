"""The tagger bundle: everything needed to tag new photos and search them by tags, in one folder.

A pipeline run writes ``workdir/tagger/`` (:func:`export_bundle`); :class:`dcca_jax.Tagger` reads it.
Layout (every file is JSON or an ``.npz`` read with ``allow_pickle=False``; loading never executes code)::

    manifest.json          format, format_version, package version, sha256 and size of every other file
    tagger.json            preprocessing, backbone reference (weights file + sha256, or the hand-crafted
                           backbone's name), label-transfer settings, vocabulary, default model and every
                           exported model's validation per-word F1, pipeline config, package versions
    backbone.npz           hand-crafted backbone only: the training Gabor statistics
    autoencoder/           the auto-encoder (config.json, arrays.npz); absent without one
    semantic/              the semantic view: skip-gram vectors and deep words (config.json, arrays.npz)
    models/<name>/         each fitted correlation model (config.json, arrays.npz)
    index/<name>.npz       per model: common-space codes of the training images (z_v, z_s), their 0/1 tags,
                           the directions' correlations and the tags' own codes (tag_z)
    index/items.json       ids and image paths of the indexed training images (rows of index/<name>.npz)

The default model is the one with the best validation per-word F1: each model transfers tags from the *fit*
rows to the *validation* rows of the training split (the test split is never looked at), by the run's
transfer settings and :func:`dcca_jax.tagging.recommend.select_tags`.

A bundle of another ``format_version`` is refused with a message naming both versions; a bundle with a
missing file, a file whose sha256 differs from the manifest's, or arrays of the wrong shape is refused with a
message naming the file.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any

import numpy as np

from dcca_jax import _io

FORMAT = "dcca_jax.tagger"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPEC = "tagger.json"


class BundleError(ValueError):
    """A tagger bundle that cannot be used: foreign, of another format version, incomplete or corrupted."""


def _package_version() -> str:
    import dcca_jax

    return str(getattr(dcca_jax, "__version__", "unknown"))


def _write_json(path: pathlib.Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _io.atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def _savez(path: pathlib.Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _io.atomic_save_npz(path, **{k: np.asarray(v) for k, v in arrays.items()})


# ---------------------------------------------------------------------------------------------- reading
def read_manifest(path: str | os.PathLike, *, verify: bool = True) -> dict:
    """Validates a bundle folder and returns its manifest.

    Checks, in order: ``manifest.json`` exists and is a dcca_jax tagger manifest; its ``format_version`` is
    this package's; every listed file exists with the listed size and sha256 (``verify=True``).

    Raises:
      BundleError: naming the folder or the file at fault.
    """
    root = pathlib.Path(path)
    mf = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root} is not a tagger bundle folder (a pipeline run writes one at <workdir>/tagger).")
    if not mf.exists():
        raise BundleError(f"{mf} is missing: {root} is not a dcca_jax tagger bundle (a pipeline run writes one at "
                          "<workdir>/tagger).")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleError(f"{mf} is not valid JSON ({e}): the bundle is corrupted.") from e
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt != FORMAT:
        raise BundleError(f"{mf} is not a dcca_jax tagger manifest (format {fmt!r}, expected {FORMAT!r}): a foreign "
                          "folder.")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{root} is a tagger bundle of format version {version} (written by dcca_jax "
            f"{manifest.get('package_version', '?')}); this dcca_jax {_package_version()} reads format version "
            f"{FORMAT_VERSION} only. Re-run the pipeline (`python experiments/pipeline.py ...`) with this version "
            "to write a new bundle, or use the dcca_jax version that wrote it.")
    files = manifest.get("files")
    if not isinstance(files, dict) or SPEC not in files:
        raise BundleError(f"{mf} lists no files (or not {SPEC}): the bundle is corrupted.")
    if verify:
        for rel, meta in sorted(files.items()):
            f = root / rel
            if ".." in pathlib.PurePosixPath(rel).parts or pathlib.PurePosixPath(rel).is_absolute():
                raise BundleError(f"{mf} lists a file outside the bundle: {rel!r}.")
            if not f.is_file():
                raise BundleError(f"{f} is missing from the bundle (listed in {MANIFEST}).")
            if f.stat().st_size != meta.get("bytes") or _io.file_sha256(f) != meta.get("sha256"):
                raise BundleError(f"{f} does not match its sha256 in {MANIFEST}: the file is corrupted or was "
                                  "changed after export.")
    return manifest


def load_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` (no pickle); a damaged file raises :class:`BundleError` naming it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise BundleError(f"{path} cannot be read as an .npz without pickle ({e}).") from e


def check_shape(path: pathlib.Path, name: str, array: np.ndarray, shape: tuple) -> None:
    """Raises :class:`BundleError` naming ``path`` when ``array`` does not have ``shape`` (None = any size)."""
    ok = array.ndim == len(shape) and all(w is None or w == a for w, a in zip(shape, array.shape))
    if not ok:
        want = "(" + ", ".join("n" if w is None else str(w) for w in shape) + ")"
        raise BundleError(f"{path}: array {name!r} has shape {array.shape}, expected {want}: the bundle is "
                          "inconsistent (files from different runs?).")


# ---------------------------------------------------------------------------------------------- writing
def _preprocess_of(name: str, visual) -> dict | None:
    if name == "mobilenet_v2":
        return {"size": 224, "crop_fraction": float(visual.crop_fraction), "normalisation": "mobilenet_v2"}
    if name == "alexnet":
        from dcca_jax.visual import alexnet

        layout = visual.alexnet_layout
        return {"size": int(alexnet.INPUT_SIZE[layout]), "crop_fraction": float(visual.crop_fraction),
                "normalisation": alexnet.NORMALISATION[layout]}
    return None


def _backbone_spec(name: str, visual, engine: str = "jax") -> dict:
    spec: dict[str, Any] = {"name": name}
    if name == "mobilenet_v2":
        from dcca_jax.visual import extract

        levers = extract.changed_levers(visual.get("mobilenet_v2", {}))
        if levers:
            raise ValueError(f"tagger bundles do not carry the MobileNetV2 feature levers {sorted(levers)} yet; export "
                             "a tagger from a run with the default config.visual.mobilenet_v2")
        spec.update(weights=os.path.abspath(visual.tflite_path), weights_sha256=_io.file_sha256(visual.tflite_path),
                    emulate_uint8=True, engine=engine)
    elif name == "alexnet":
        spec.update(weights=os.path.abspath(visual.alexnet_weights),
                    weights_sha256=_io.file_sha256(visual.alexnet_weights), layout=visual.alexnet_layout)
    return spec


def validation_f1(pipeline, name: str) -> float:
    """Per-word F1 of DMFR&``name`` on the validation rows, tags transferred from the fit rows (no test data)."""
    from dcca_jax.models.base import paired_correlations
    from dcca_jax.tagging import metrics as metrics_lib
    from dcca_jax.tagging import recommend as rec_lib

    model, _ = pipeline.stage_model(name)
    views, sem = pipeline.views(), pipeline.stage_semantic()
    c = dict(rec_lib.transfer_config()) | dict(pipeline.config.recommend)
    if len(views.v["val"]) == 0:
        return float("nan")
    zq, _ = model.transform(x_v=views.v["val"])
    zv, zs = model.transform(x_v=views.v["fit"], x_s=views.s["fit"])
    corr = None
    if c["corr_power"]:
        corr = getattr(model, "correlations", None)
        corr = paired_correlations(zv, zs) if corr is None else corr
    tag_z = model.transform(x_s=sem["tags"])[1] if c["method"] == "tag_ranking" else None
    c["k"] = min(int(c["k"]), len(views.v["fit"]))
    scores = rec_lib.transfer_scores(zq, zv if c["against"] == "visual" else zs, views.labels["fit"], config=c,
                                     correlations=corr, tag_z=tag_z)
    sel = rec_lib.select_tags(scores, n=int(c["n_tags"]), prior=rec_lib.tag_prior(views.labels["fit"]),
                              fill=c["fill"])
    return float(metrics_lib.evaluate(sel.indicator, views.labels["val"])["per_word/F1"])


def _index_arrays(pipeline, name: str) -> dict[str, np.ndarray]:
    """The model's codes of the training images, exactly as the pipeline's transfer computes them."""
    from dcca_jax.models.base import paired_correlations

    model, _ = pipeline.stage_model(name)
    views, sem = pipeline.views(), pipeline.stage_semantic()
    zv, zs = model.transform(x_v=views.v["train"], x_s=views.s["train"])
    corr = getattr(model, "correlations", None)
    corr = paired_correlations(zv, zs) if corr is None else corr
    tag_z = model.transform(x_s=sem["tags"])[1]
    return {"z_v": np.asarray(zv), "z_s": np.asarray(zs), "labels": np.asarray(views.labels["train"], np.uint8),
            "correlations": np.asarray(corr), "tag_z": np.asarray(tag_z)}


def export_bundle(pipeline, out_dir: str | os.PathLike, *, models=None, default: str | None = None) -> dict:
    """Writes the tagger bundle of a (finished or cached) pipeline run into ``out_dir``.

    Args:
      pipeline: a :class:`dcca_jax.pipeline.Pipeline` (its stages are computed when missing).
      out_dir: the bundle folder (replaced as a whole: written beside it, then renamed).
      models: the correlation models to export (default: every model of the run's config).
      default: the model :meth:`Tagger.load` uses by default (default: the best validation per-word F1).

    Returns:
      ``{"path", "default_model", "models": {name: {"val_per_word_F1", ...}}}`` for results.json.
    """
    from dcca_jax import pipeline as pipeline_lib

    c = pipeline.config
    models = list(c.models if models is None else models)
    if not models:
        raise ValueError("export_bundle needs at least one correlation model (config.models is empty)")
    data, cnn, rows = pipeline.stage_data(), pipeline.stage_cnn(), pipeline.rows()
    name = cnn["info"]["backbone"]
    out = pathlib.Path(out_dir)
    # What the bundle is made of: the keys of the stages it copies. An up-to-date, intact bundle is kept.
    stages = ["cnn", "autoencoder", "semantic"] + [f"model_{m}" for m in models]
    source = _io.config_key({"stages": [pipeline.run_key_of(s) if s.startswith("model_") else
                                           json.loads((pipeline.stage_dir(s) / "key.json").read_text())["key"]
                                           for s in stages if (pipeline.stage_dir(s) / "key.json").exists()],
                                "models": models, "default": default, "recommend": c.recommend,
                                "format_version": FORMAT_VERSION})
    try:
        if read_manifest(out).get("source") == source:
            spec = json.loads((out / SPEC).read_text(encoding="utf-8"))
            return {"path": str(out), "default_model": spec["default_model"], "models": spec["models"]}
    except BundleError:
        pass
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    if name == "handcrafted":
        stats = load_npz(pipeline.stage_dir("cnn") / "handcrafted_stats.npz")
        _savez(tmp / "backbone.npz", **stats)
    if c.visual.use_autoencoder:
        from dcca_jax.visual import autoencoder as ae_lib

        ae_lib.TrainedAutoEncoder.load(pipeline.stage_dir("autoencoder") / "model").save(tmp / "autoencoder")
    shutil.copytree(pipeline.stage_dir("semantic") / "encoder", tmp / "semantic")

    train = data["train"]
    keep = rows["train"]
    paths = None if train.image_paths is None else [os.path.abspath(train.image_paths[i]) for i in keep]
    _write_json(tmp / "index" / "items.json", {"ids": [str(train.ids[i]) for i in keep], "paths": paths})
    info = {}
    for m in models:
        model, _ = pipeline.stage_model(m)
        model.save(tmp / "models" / m)
        arrays = _index_arrays(pipeline, m)
        _savez(tmp / "index" / f"{m}.npz", **arrays)
        info[m] = {"title": pipeline_lib.MODEL_TITLES[m], "val_per_word_F1": validation_f1(pipeline, m),
                   "dims": [int(model._dims[0]), int(model._dims[1])], "out_dim": int(arrays["z_v"].shape[1])}
    if default is None:
        default = max(models, key=lambda m: (np.nan_to_num(info[m]["val_per_word_F1"], nan=-1.0), -models.index(m)))
    if default not in info:
        raise ValueError(f"default model {default!r} is not among the exported models {models}")
    spec = {
        "backbone": _backbone_spec(name, c.visual, cnn["info"].get("engine", "jax")),
        "preprocess": _preprocess_of(name, c.visual),
        "feature_dim": int(cnn["train"].shape[1]),
        "use_autoencoder": bool(c.visual.use_autoencoder),
        "vocabulary": list(data["dataset"].vocabulary),
        "transfer": _io.jsonable(dict(c.recommend)),
        "default_model": default,
        "models": info,
        "selection": "the best per-word F1 on the validation rows (tags transferred from the fit rows)",
        "dataset": {"name": data["dataset"].name, "n_indexed": int(len(keep))},
        "config": _io.jsonable(c),
        "versions": _io.package_versions(),
    }
    _write_json(tmp / SPEC, spec)
    files = {}
    for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
        rel = f.relative_to(tmp).as_posix()
        files[rel] = {"sha256": _io.file_sha256(f), "bytes": f.stat().st_size}
    _write_json(tmp / MANIFEST, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                 "package_version": _package_version(), "source": source, "files": files})
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return {"path": str(out), "default_model": default, "models": info}
