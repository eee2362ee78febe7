"""File output shared by the whole package: atomic writes, JSON-safe values, config keys, package versions.

Every file the library writes goes through :func:`atomic_write` (or one of its typed helpers): the content is
written to a temporary file in the destination's own directory and moved over the destination with
``os.replace``, which is atomic on POSIX and Windows within one file system. A reader (or a rerun after a
crash) therefore sees either the old file or the whole new one, never half a file, and a writer that raises
leaves no temporary file behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import platform
import tempfile
from collections.abc import Iterator, Mapping
from typing import IO, Any

import jax
import ml_collections
import numpy as np

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_npy",
    "atomic_save_npz",
    "jsonable",
    "config_key",
    "package_versions",
    "listed_files",
    "file_manifest",
    "manifest_problems",
    "decode_problem",
]

# Packages whose versions decide the numbers (written beside every result).
_VERSIONED = ("dcca_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy", "gensim", "pillow")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Opens a temporary file beside ``path``; on a clean exit it replaces ``path``, on an error it is removed.

    Args:
      path: the destination; its parent directory is created when missing.
      mode: ``"wb"`` (bytes) or ``"w"`` (text).
      encoding: text encoding (``"utf-8"`` when ``mode="w"`` and none is given).

    Yields:
      The open temporary file. The destination gets permissions ``0o644`` (``mkstemp`` creates ``0o600``;
      datasets and results are meant to be shared).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w'; got {mode!r}.")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        kw = {} if mode == "wb" else {"encoding": encoding or "utf-8", "newline": "\n"}
        with os.fdopen(fd, mode, **kw) as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Writes ``data`` to ``path`` atomically. Returns the path."""
    with atomic_write(path) as f:
        f.write(data)
    return pathlib.Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Writes UTF-8 ``text`` to ``path`` atomically (``\\n`` line ends). Returns the path."""
    with atomic_write(path, mode="w") as f:
        f.write(text)
    return pathlib.Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> pathlib.Path:
    """Writes :func:`jsonable` ``(obj)`` as JSON to ``path`` atomically. Returns the path."""
    return atomic_write_text(path, json.dumps(jsonable(obj), indent=indent))


def atomic_save_npy(path: str | os.PathLike, array: Any) -> pathlib.Path:
    """``np.save`` of ``array`` to ``path`` atomically (no pickle). Returns the path."""
    with atomic_write(path) as f:
        np.save(f, np.asarray(array), allow_pickle=False)
    return pathlib.Path(path)


def atomic_save_npz(path: str | os.PathLike, **arrays: Any) -> pathlib.Path:
    """``np.savez`` of ``arrays`` to ``path`` atomically (loads with ``allow_pickle=False``). Returns the path."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return pathlib.Path(path)


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy/JAX scalars and arrays, tuples, paths and ConfigDicts turned into JSON types.

    Dict keys become strings; arrays become (nested) lists; NaN and infinities stay Python floats (``json``
    writes them as ``NaN``/``Infinity`` and reads them back), so result tables keep their missing values as
    numbers. Anything else is returned unchanged.
    """
    if isinstance(obj, ml_collections.ConfigDict):
        return json.loads(obj.to_json_best_effort())
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    return obj


def config_key(payload: Any) -> str:
    """A content hash of ``payload`` (16 hex digits of SHA-256 of its sorted-key JSON): equal for equal content,
    whatever the order of dict keys; used to tell whether a cached stage or checkpoint matches a config."""
    blob = json.dumps(jsonable(payload), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers (written beside every result), plus Python, the
    platform and JAX's default backend."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _VERSIONED:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    out["jax_backend"] = jax.default_backend()
    return out


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (stage manifests, tagger bundles, weights references)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def listed_files(directory: str | os.PathLike, *, exclude: tuple[str, ...] = ()) -> list[str]:
    """Relative POSIX paths of the files under ``directory``, sorted, minus ``exclude`` (file names or folders,
    relative to ``directory``)."""
    directory, out = pathlib.Path(directory), []
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_file() and not any(rel == e or rel.startswith(e.rstrip("/") + "/") for e in exclude):
            out.append(rel)
    return out


def file_manifest(directory: str | os.PathLike, *, exclude: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{relative path: {"size": bytes, "sha256": hex}}`` of every file under ``directory`` except ``exclude``
    (file names or folders, relative to ``directory``): what :func:`manifest_problems` checks a reload against.
    SHA-256 runs at several hundred MB/s, so a stage of tens of MB costs a fraction of a second."""
    directory = pathlib.Path(directory)
    return {rel: {"size": (directory / rel).stat().st_size, "sha256": file_sha256(directory / rel)}
            for rel in listed_files(directory, exclude=exclude)}


def manifest_problems(directory: str | os.PathLike, manifest: Mapping[str, Mapping]) -> list[str]:
    """What is wrong with the files of ``directory`` against a :func:`file_manifest`: one line per file that is
    missing, has another size (truncated or overwritten) or another content hash (corrupt); [] when all match."""
    directory = pathlib.Path(directory)
    problems = []
    for rel, want in manifest.items():
        p = directory / rel
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != want["size"]:
            problems.append(f"{p}: {p.stat().st_size} bytes, {want['size']} recorded (truncated or overwritten)")
        elif file_sha256(p) != want["sha256"]:
            problems.append(f"{p}: content differs from the recorded sha256 (corrupt)")
    return problems


def decode_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` (``.npy``, ``.npz`` or ``.json``) cannot be read back, or None when it can (other files: None).
    Every array of an ``.npz`` is read, since a truncated archive can still list its members."""
    path = pathlib.Path(path)
    try:
        if path.suffix == ".npy":
            np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                for k in z.files:
                    z[k]
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except Exception as e:  # zipfile, numpy and json raise many types for a damaged file
        return f"{path}: cannot be read ({type(e).__name__}: {e})"
    return None
