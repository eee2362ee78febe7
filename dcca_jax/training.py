"""The training machinery shared by every trained model: DCCA, the auto-encoder, DCCA from pixels, data-parallel DCCA.

- :class:`NonFiniteLossError` and :func:`check_finite`: stop at the first NaN/inf loss (or held-out value)
  with advice on what to change (big_vision's ``train.py`` raises the same way).
- :class:`MetricsWriter`: absl logging plus one JSON object per line in a ``metrics.jsonl`` file; on resume
  it drops what an interrupted run logged after its last checkpoint (that part is about to be redone).
- :class:`Checkpoints`: orbax ``CheckpointManager`` under ``workdir/checkpoints`` with restore-or-initialise:
  each checkpoint holds a pytree (the train state and the best-so-far parameters) and JSON metadata with a
  *fingerprint* of the config and the data sizes; a rerun with the same workdir resumes, a rerun with a
  different config is refused with the differing fields named; a damaged latest checkpoint is set aside with a
  warning and the previous kept one restored (none restores: a fresh start, with a warning).
- :class:`EarlyStopping`: patience on a held-out metric, with the best step remembered so the caller can keep
  the best parameters.
- :func:`validation_split`: the one seeded split of a training set into a fit part and a held-out part.

Resuming is exact when the caller derives every random draw from ``(seed, epoch, step)`` (data order from
``fold_in(key, epoch)`` or ``default_rng([seed, epoch])``, dropout from ``fold_in(key, step)``): the resumed
run then ends with the parameters of an uninterrupted one.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import pathlib
import shutil
from typing import Any

import jax
import numpy as np
from absl import logging

from dcca_jax._io import jsonable

__all__ = [
    "NonFiniteLossError",
    "check_finite",
    "MetricsWriter",
    "METRICS_FILE",
    "CHECKPOINT_DIR",
    "DAMAGED_DIR",
    "fingerprint",
    "fingerprint_diff",
    "Checkpoints",
    "EarlyStopping",
    "validation_split",
]

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"


# ---------------------------------------------------------------------------------------------------- guard
class NonFiniteLossError(FloatingPointError):
    """The training loss (or a held-out value) became NaN or infinite; the message says what to change."""


def check_finite(value: Any, *, what: str, step: int, epoch: int, advice: str,
                 workdir: str | os.PathLike | None = None) -> float:
    """Returns ``float(value)``, or raises :class:`NonFiniteLossError` when it is NaN or infinite.

    Args:
      value: the scalar to check (a loss, a validation score).
      what: what it is, for the message (``"DCCA loss"``).
      step, epoch: where training was.
      advice: what to change (ridges, learning rate, batch size, ...).
      workdir: the run's workdir, if any: the message then says the last finite checkpoint is kept there.
    """
    v = float(value)
    if math.isfinite(v):
        return v
    msg = f"non-finite {what} ({v}) at step {step} (epoch {epoch}): {advice}"
    if workdir is not None:
        msg += f" The last finite checkpoint in {workdir} is kept; change the config and rerun in a fresh workdir."
    raise NonFiniteLossError(msg)


# -------------------------------------------------------------------------------------------------- metrics
class MetricsWriter:
    """absl logging plus one JSON object per line in ``path`` (no file when ``path`` is None).

    Records are dicts; numpy/JAX scalars become floats. Records with ``"kind": "epoch"`` are also kept in
    :attr:`history`.

    Args:
      path: the JSON-lines file (conventionally ``workdir / METRICS_FILE``), or None.
      resume_step: the step a resumed run starts from: records of an existing file with ``"step" <=
        resume_step`` are kept (and their epoch records restored into :attr:`history`), later ones dropped
        (an interrupted run logged them after its last checkpoint; they are about to be redone). 0, for a
        fresh run, empties the file.
      name: prefix of the log lines.
    """

    def __init__(self, path: str | os.PathLike | None, *, resume_step: int = 0, name: str = "train"):
        self.path = None if path is None else pathlib.Path(path)
        self.name = name
        self.history: list[dict] = []
        if self.path is not None and self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    if rec.get("step", 0) <= resume_step:
                        kept.append(rec)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
            self.history = [r for r in kept if r.get("kind") == "epoch"]
        elif self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict, *, log: bool = True) -> None:
        """Appends ``record`` to the file (and to :attr:`history` when it is an epoch record); logs it."""
        record = {k: (float(v) if isinstance(v, (np.floating, jax.Array, np.ndarray)) else jsonable(v))
                  for k, v in record.items()}
        if record.get("kind") == "epoch":
            self.history.append(record)
        if log:
            logging.info("%s %s", self.name,
                         " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------- checkpoints
def fingerprint(config, *, resumable: tuple[str, ...] = (), optional: tuple[str, ...] = (), **sizes: int) -> dict:
    """What must match for a checkpoint to be resumed: the config without its ``resumable`` fields, plus sizes.

    Args:
      config: an ``ml_collections.ConfigDict`` (or a JSON-able dict).
      resumable: top-level fields that may change between a run and its resumption (epochs, patience, ...):
        they do not change the trajectory up to the resumed step.
      **sizes: data sizes (``n_train=...``).

    Returns:
      ``{"config": {...}, **sizes}`` as plain JSON types.
    """
    cfg = json.loads(config.to_json()) if hasattr(config, "to_json") else jsonable(config)
    cfg = {k: v for k, v in cfg.items() if k not in resumable and not (k in optional and v is None)}
    return json.loads(json.dumps({"config": cfg, **{k: int(v) for k, v in sizes.items()}}))


def fingerprint_diff(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """The differing leaves of two fingerprints: ``{"config.towers.out_dim": (old, new), ...}``."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and v:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(old or {}), flat(new or {})
    missing = object()
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)}


class _FingerprintMismatch(Exception):
    """A checkpoint of another run (not a damaged one): refused, never skipped."""


class Checkpoints:
    """orbax checkpoints in ``workdir/checkpoints`` with restore-or-initialise and a config fingerprint.

    A checkpoint is an orbax ``Composite`` of two items: ``tree_item`` (a pytree, saved with
    ``StandardSave`` from host copies, so an asynchronous save never reads buffers that a donated train step
    reuses) and ``"meta"`` (JSON: the caller's counters plus ``"fingerprint"``).

    Args:
      workdir: the run's directory (created if missing).
      fingerprint: :func:`fingerprint` of this run.
      keep: checkpoints to keep.
      tree_item: the name of the pytree item (``"tree"``; the auto-encoder's older layout uses ``"state"``).
      job: what to call the run in error messages (``"DCCA job"``).
      resumable: the fields left out of the fingerprint (named in the refusal message).
      legacy_fingerprint: for checkpoints written before the fingerprint moved into their metadata: a
        function of the workdir returning the fingerprint recorded there, or None.
    """

    def __init__(self, workdir: str | os.PathLike, *, fingerprint: dict, keep: int = 2, tree_item: str = "tree",
                 job: str = "training job", resumable: tuple[str, ...] = (), legacy_fingerprint=None):
        import orbax.checkpoint as ocp

        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.tree_item = tree_item
        self.job = job
        self.resumable = tuple(resumable)
        self.legacy_fingerprint = legacy_fingerprint
        options = ocp.CheckpointManagerOptions(max_to_keep=max(1, int(keep)), create=True)
        self.manager = ocp.CheckpointManager((self.workdir / CHECKPOINT_DIR).resolve(), options=options)

    @property
    def directory(self) -> pathlib.Path:
        return self.workdir / CHECKPOINT_DIR

    def latest_step(self) -> int | None:
        step = self.manager.latest_step()
        return None if step is None else int(step)

    def restore_or_init(self, tree: Any, meta: dict) -> tuple[Any, dict, int | None]:
        """The latest checkpoint that restores (checked against the fingerprint), else ``(tree, meta)``.

        A checkpoint that fails to restore (a truncated or corrupt file, a killed save) is logged as a warning
        naming its step and the error and moved to ``workdir/damaged_checkpoints`` (so that training can save that
        step again; delete it once inspected), and the next older kept step is tried. When no kept checkpoint restores, training starts fresh with a warning: the
        checkpoints are a cache of the run, which retraining reproduces.

        Args:
          tree: the freshly initialised pytree (also the template of shapes and dtypes for the restore).
          meta: the fresh metadata.

        Returns:
          ``(tree, meta, step)``; ``step`` is None for a fresh start.

        Raises:
          ValueError: the checkpoint was written with a different fingerprint (the message names the fields).
        """
        steps = sorted((int(s) for s in self.manager.all_steps()), reverse=True)
        for step in steps:
            try:
                restored, info = self._restore_step(step, tree)
            except _FingerprintMismatch as e:
                raise ValueError(str(e)) from None
            except Exception as e:  # orbax/tensorstore/JSON raise many types for a damaged checkpoint
                aside = self._set_aside(step)
                logging.warning(
                    "%s: the checkpoint at step %d in %s cannot be restored (%s: %s); moved to %s, trying the "
                    "previous one.", self.job, step, self.directory, type(e).__name__, str(e)[:300], aside)
                continue
            meta = {k: v for k, v in info.items() if k != "fingerprint"}
            logging.info("%s: resumed from %s at step %d", self.job, self.directory, step)
            return restored, meta, step
        if steps:
            logging.warning("%s: none of the checkpoints %s in %s could be restored; training starts afresh.",
                            self.job, steps, self.directory)
        return tree, meta, None

    def _set_aside(self, step: int) -> pathlib.Path | str:
        """Moves checkpoint ``step`` out of the manager's folder into ``workdir/damaged_checkpoints`` (kept for
        inspection, out of the way of a new save of that step); returns where it went."""
        src = self.directory / str(step)
        if not src.is_dir():  # another step-name format: let orbax remove it
            self.manager.delete(step)
            return "nowhere (deleted)"
        dst = self.workdir / DAMAGED_DIR / str(step)
        n = 1
        while dst.exists():
            dst, n = self.workdir / DAMAGED_DIR / f"{step}.{n}", n + 1
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dst))
        self.manager.reload()
        return dst

    def _restore_step(self, step: int, tree: Any) -> tuple[Any, dict]:
        import orbax.checkpoint as ocp

        info = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(info, dict):
            raise TypeError(f"the checkpoint's metadata is {type(info).__name__}, not a JSON object")
        old = info.get("fingerprint")
        if old is None and self.legacy_fingerprint is not None:
            old = self.legacy_fingerprint(self.workdir)
        if old != self.fingerprint:
            diff = fingerprint_diff(old, self.fingerprint)
            shown = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in
                              ((k, *v) for k, v in list(diff.items())[:8]))
            raise _FingerprintMismatch(
                f"the checkpoint at step {step} in {self.directory} belongs to a different {self.job} (different "
                f"config or data size): {shown or 'no fingerprint recorded'}. Use a fresh workdir, or rerun with "
                f"the old config; only {self.resumable} may change between a run and its resumption."
            )
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(**{self.tree_item: ocp.args.StandardRestore(abstract)}))[self.tree_item]
        return restored, info

    def save(self, step: int, tree: Any, meta: dict) -> None:
        """Saves ``tree`` (host copies) and ``meta`` (a deep copy, with the fingerprint) as checkpoint ``step``."""
        import orbax.checkpoint as ocp

        tree = jax.device_get(tree)
        # A deep copy: the save is asynchronous and the caller keeps appending to lists in meta.
        info = copy.deepcopy({**meta, "fingerprint": self.fingerprint})
        self.manager.save(int(step), args=ocp.args.Composite(
            **{self.tree_item: ocp.args.StandardSave(tree), "meta": ocp.args.JsonSave(info)}))

    def close(self) -> None:
        """Waits for pending asynchronous saves and closes the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


# ------------------------------------------------------------------------------------------ early stopping
@dataclasses.dataclass
class EarlyStopping:
    """Patience on a held-out metric: stop after ``patience`` evaluations without improvement.

    Attributes:
      patience: evaluations without improvement before stopping (0: never stop; the best step is still
        tracked).
      mode: ``"max"`` (a correlation, an F1) or ``"min"`` (a loss).
      min_delta: relative improvement needed in ``"min"`` mode (``value < best * (1 - min_delta)``); in
        ``"max"`` mode any increase counts.
      best: the best value so far (None before the first evaluation).
      best_step: the step (or epoch) of ``best``.
      bad_epochs: evaluations since the last improvement.
      stopped: whether the patience is used up (recomputed from ``bad_epochs`` on construction when
        ``patience > 0``, so a resumed run with a larger patience continues).
    """

    patience: int = 0
    mode: str = "max"
    min_delta: float = 0.0
    best: float | None = None
    best_step: int = 0
    bad_epochs: int = 0
    stopped: bool = False

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise ValueError(f"EarlyStopping mode must be 'max' or 'min'; got {self.mode!r}.")
        if int(self.patience) > 0:
            # Recomputed from the counters: the patience may change when a run is resumed.
            self.stopped = self._exhausted()

    def _exhausted(self) -> bool:
        return int(self.patience) > 0 and self.bad_epochs >= int(self.patience)

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats the best so far (always true for the first value)."""
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best
        return value < self.best * (1.0 - self.min_delta)

    def update(self, value: float, *, step: int) -> bool:
        """Records one evaluation; returns True when it is the new best (the caller keeps its parameters)."""
        better = self.improves(value)
        if better:
            self.best, self.best_step, self.bad_epochs = float(value), int(step), 0
        else:
            self.bad_epochs += 1
        self.stopped = self._exhausted()
        return better


# ------------------------------------------------------------------------------------------ validation split
def validation_split(n: int, *, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded split of ``range(n)`` into ``(fit_idx, val_idx)``, both sorted, ``len(val_idx) == n_val``.

    ``val_idx`` is the first ``n_val`` entries of ``numpy.random.default_rng(seed).permutation(n)``, so the
    split depends only on ``(n, n_val, seed)`` and the validation rows of a smaller ``n_val`` are a subset of
    those of a larger one.

    Raises:
      ValueError: unless ``0 < n_val < n``.
    """
    n, n_val = int(n), int(n_val)
    if not 0 < n_val < n:
        raise ValueError(f"n_val={n_val} must be between 1 and n - 1 = {n - 1}: otherwise the validation split of "
                         f"{n} rows leaves an empty part (use a fraction strictly between 0 and 1, and more rows).")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
