"""One API for every correlation model (linear CCA, kernel CCA, deep CCA).

``fit(x_v, x_s)`` on training pairs, ``transform(x_v=None, x_s=None)`` into the common space,
``score(x_v, x_s)`` for per-component correlations on any (held-out) data, ``save(path)`` and
``load(path)``. Hyperparameters live in an ``ml_collections.ConfigDict``.
"""
from __future__ import annotations

import abc
import json
import os
import pathlib
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.typing import ArrayLike

from dcca_jax.linalg import as_float_array, check_views
from dcca_jax._io import atomic_save_npz, atomic_write_text

__all__ = [
    "CorrelationModel",
    "register_model",
    "load_model",
    "paired_correlations",
    "correlation_score_curve",
]

_REGISTRY: dict[str, type["CorrelationModel"]] = {}
FORMAT_VERSION = 1


def register_model(cls):
    """Class decorator: makes ``load_model`` able to rebuild ``cls`` from a saved directory."""
    _REGISTRY[cls.name] = cls
    return cls


def paired_correlations(z_v: ArrayLike, z_s: ArrayLike) -> jax.Array:
    r"""Pearson correlation of each pair of columns: :math:`\mathrm{corr}(z_v[:, j], z_s[:, j])`.

    This is how projections are scored on held-out data: the canonical directions fitted on training
    data are applied, and the correlation each component keeps is measured (no re-fitting, no
    re-sorting). A column with zero variance gets correlation 0.

    Args:
      z_v, z_s: ``(n, k)`` paired projections.

    Returns:
      ``(k,)`` correlations in ``[-1, 1]``.
    """
    z_v, z_s = check_views(z_v, z_s, names=("z_v", "z_s"))
    if z_v.shape[1] != z_s.shape[1]:
        raise ValueError(f"z_v and z_s must have the same number of columns; got {z_v.shape} and {z_s.shape}.")
    a = z_v - z_v.mean(0)
    b = z_s - z_s.mean(0)
    num = jnp.sum(a * b, axis=0)
    den2 = jnp.sum(a * a, axis=0) * jnp.sum(b * b, axis=0)
    ok = den2 > 0
    return jnp.where(ok, num / jnp.sqrt(jnp.where(ok, den2, 1.0)), 0.0)


def correlation_score_curve(z_v: ArrayLike, z_s: ArrayLike) -> jax.Array:
    r"""The cross-modal correlation score of Table 1: :math:`\mathrm{CCS}(k) = \sum_{j \le k} \rho_j`.

    ``rho_j`` are :func:`paired_correlations` in the model's component order (components are sorted
    by their *training* correlation), so training and held-out curves are computed the same way and
    are directly comparable; on training data of a linear CCA this is the running sum of the
    canonical correlations.

    Returns:
      ``(k,)`` running sums; entry ``k-1`` is the top-``k`` score.
    """
    return jnp.cumsum(paired_correlations(z_v, z_s))


class CorrelationModel(abc.ABC):
    """Base class of the correlation models; subclasses implement the ``_``-prefixed hooks."""

    name: ClassVar[str] = "abstract"

    def __init__(self, config: ml_collections.ConfigDict | dict | None = None, **overrides: Any):
        cfg = self.default_config()
        if config is not None:
            # Plain dicts: placeholders (FieldReferences) in a ConfigDict cannot update one another.
            cfg.update(config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config))
        if overrides:
            cfg.update(overrides)
        self.config = cfg
        self._dims: tuple[int, int] | None = None

    # ---------------------------------------------------------------- hooks
    @classmethod
    @abc.abstractmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        """The model's hyperparameters with their defaults."""

    @abc.abstractmethod
    def _fit(self, x_v: jax.Array, x_s: jax.Array, **kwargs) -> None:
        """Fits on validated training views."""

    @abc.abstractmethod
    def _transform(self, x_v: jax.Array | None, x_s: jax.Array | None):
        """Projects validated views; returns ``(z_v or None, z_s or None)``."""

    @abc.abstractmethod
    def _state(self) -> dict[str, np.ndarray]:
        """Fitted state as numpy arrays (saved to ``arrays.npz``)."""

    @abc.abstractmethod
    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restores the state returned by ``_state``."""

    def _save_extra(self, path: pathlib.Path) -> None:  # noqa: B027 - optional hook
        """Optional: extra files (e.g. network checkpoints)."""

    def _load_extra(self, path: pathlib.Path) -> None:  # noqa: B027 - optional hook
        """Optional: reads what ``_save_extra`` wrote."""

    # ---------------------------------------------------------------- API
    @property
    def is_fitted(self) -> bool:
        return self._dims is not None

    def fit(self, x_v: ArrayLike, x_s: ArrayLike, **kwargs) -> "CorrelationModel":
        """Fits the model on paired training views ``x_v (n, d_v)`` and ``x_s (n, d_s)``."""
        a, b = check_views(x_v, x_s)
        self._fit(a, b, **kwargs)
        self._dims = (int(a.shape[1]), int(b.shape[1]))
        return self

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError(f"{type(self).__name__} is not fitted: call fit(x_v, x_s) or load(path) first.")

    def transform(self, x_v: ArrayLike | None = None, x_s: ArrayLike | None = None):
        """Projects either or both views into the common space.

        Returns:
          ``(z_v, z_s)``, each ``(n, k)`` or ``None`` where that view was not given.
        """
        self._check_fitted()
        if x_v is None and x_s is None:
            raise ValueError("transform needs x_v, x_s or both.")
        a = self._validate_view(x_v, 0, "x_v") if x_v is not None else None
        b = self._validate_view(x_s, 1, "x_s") if x_s is not None else None
        if a is not None and b is not None and a.shape[0] != b.shape[0]:
            raise ValueError(f"x_v and x_s must have the same number of rows; got {a.shape} and {b.shape}.")
        return self._transform(a, b)

    def _validate_view(self, x: ArrayLike, which: int, name: str) -> jax.Array:
        arr = as_float_array(x, name=name)
        want = self._dims[which]
        if arr.shape[1] != want:
            raise ValueError(f"{name} has {arr.shape[1]} features (shape {arr.shape}); the model was fitted on {want}.")
        return arr

    def score(self, x_v: ArrayLike, x_s: ArrayLike) -> jax.Array:
        """Per-component correlations of the paired projections of ``(x_v, x_s)`` (held-out or not)."""
        z_v, z_s = self.transform(x_v, x_s)
        return paired_correlations(z_v, z_s)

    def correlation_score_curve(self, x_v: ArrayLike, x_s: ArrayLike) -> jax.Array:
        """Table 1's CCS curve (running sum of per-component correlations) on the given data."""
        z_v, z_s = self.transform(x_v, x_s)
        return correlation_score_curve(z_v, z_s)

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Writes ``config.json`` and ``arrays.npz`` (atomically) into directory ``path``."""
        self._check_fitted()
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "model": self.name,
            "format_version": FORMAT_VERSION,
            "dims": list(self._dims),
            "config": json.loads(self.config.to_json()),
        }
        atomic_save_npz(path / "arrays.npz", **{k: np.asarray(v) for k, v in self._state().items()})
        self._save_extra(path)
        atomic_write_text(path / "config.json", json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CorrelationModel":
        """Rebuilds a saved model (of this class, or of any registered class when called on the base)."""
        path = pathlib.Path(path)
        meta_file = path / "config.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{meta_file} not found: {path} is not a saved dcca_jax model directory.")
        meta = json.loads(meta_file.read_text())
        name = meta.get("model")
        target = _REGISTRY.get(name)
        if target is None:
            raise ValueError(f"{meta_file} names unknown model {name!r}; known: {sorted(_REGISTRY)}.")
        if cls is not CorrelationModel and not issubclass(target, cls):
            raise ValueError(f"{path} holds a {name!r} model, not a {cls.name!r} model.")
        model = target(ml_collections.ConfigDict(meta["config"]))
        with np.load(path / "arrays.npz", allow_pickle=False) as z:
            model._set_state({k: z[k] for k in z.files})
        model._load_extra(path)
        model._dims = tuple(meta["dims"])
        return model


def load_model(path: str | os.PathLike) -> CorrelationModel:
    """Loads any saved correlation model (CCA, KCCA, DCCA) from its directory."""
    return CorrelationModel.load(path)
