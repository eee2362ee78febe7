"""Data parallelism over a device mesh and across hosts, with JAX's own runtime (no ``pmap``).

Layout: a 1-D mesh axis ``"data"`` (optionally a second ``"model"`` axis). The global batch is split
along its rows over ``"data"``; parameters and optimiser state are replicated. A train step is jitted
with these shardings and XLA inserts the collectives, so every mean and covariance inside the loss is
the one of the *global* batch: the correlation objective and its gradients are exactly those a single
device computes on the same batch. (A per-device covariance would not be: DCCA's loss does not
decompose over examples.)

Several processes (one per host, GPU cluster or TPU pod): :func:`initialize_distributed` starts
``jax.distributed`` from explicit arguments (the main reads the environment), each process reads its own rows
(:func:`process_slice`), and :func:`shard_batch` assembles the process-local rows into one global
array; the same jitted step then runs on all hosts. Launch notes are in BUILD.md.

Mixed precision: :class:`PrecisionPolicy` (``"bfloat16"``: towers in bf16, covariances, whitening and
the objective in float32).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dcca_jax.linalg import check_views
from dcca_jax.models.streaming import CovarianceStats, empty_stats, merge_stats
from dcca_jax.training import EarlyStopping, MetricsWriter, check_finite, validation_split

__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "make_mesh",
    "replicated_sharding",
    "batch_sharding",
    "replicate",
    "shard_batch",
    "local_rows",
    "global_view_covariances",
    "shard_train_step",
    "make_train_step",
    "shard_batch_apply",
    "sharded_apply",
    "shard_backbone",
    "PrecisionPolicy",
    "precision_policy",
    "cast_floating",
    "apply_with_policy",
    "PrecisionTower",
    "with_precision",
    "data_parallel_dcca_step",
    "fit_dcca_data_parallel",
    "initialize_distributed",
    "process_slice",
    "allreduce_stats",
]

DATA_AXIS = "data"
MODEL_AXIS = "model"


# ------------------------------------------------------------------------------------------ meshes
def make_mesh(
    n_devices: int | None = None, *, model_parallel: int = 1, devices=None, axis_name: str = DATA_AXIS
) -> Mesh:
    """A device mesh with a data axis (and a model axis when ``model_parallel > 1``).

    Args:
      n_devices: how many devices to use (default: all of ``jax.devices()``, every process's).
      model_parallel: size of the ``"model"`` axis; the data axis gets ``n_devices // model_parallel``.
      devices: explicit device list (default ``jax.devices()``).
      axis_name: name of the data axis.

    Returns:
      ``Mesh`` of shape ``(n_devices,)`` with axis ``(axis_name,)``, or ``(n_devices // m, m)`` with
      axes ``(axis_name, "model")``. Axis types are ``Auto`` (XLA propagates shardings).

    Raises:
      ValueError: more devices asked for than exist, or ``n_devices`` not divisible by ``model_parallel``.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices) if n_devices is None else int(n_devices)
    if not 1 <= n <= len(devices):
        raise ValueError(f"n_devices={n_devices} but {len(devices)} devices are available ({devices[0].platform}).")
    if model_parallel < 1 or n % model_parallel:
        raise ValueError(f"n_devices={n} must be a positive multiple of model_parallel={model_parallel}.")
    if model_parallel == 1:
        return Mesh(np.array(devices[:n]), (axis_name,), axis_types=(AxisType.Auto,))
    grid = np.array(devices[:n]).reshape(n // model_parallel, model_parallel)
    return Mesh(grid, (axis_name, MODEL_AXIS), axis_types=(AxisType.Auto, AxisType.Auto))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimiser state, RNG keys, metrics)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, *, axis_name: str = DATA_AXIS) -> NamedSharding:
    """Rows split over the data axis; other dimensions whole."""
    return NamedSharding(mesh, P(axis_name))


def _axis_size(mesh: Mesh, axis_name: str) -> int:
    if axis_name not in mesh.shape:
        raise ValueError(f"mesh has axes {tuple(mesh.shape)}; no axis named {axis_name!r}.")
    return int(mesh.shape[axis_name])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree (e.g. a TrainState) on every device of ``mesh``, in one or several processes.

    Every process must pass the same values (same seed, same checkpoint).
    """
    sharding = replicated_sharding(mesh)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            # Typed keys: rebuild from their raw data (same seed on every process).
            data = np.asarray(jax.random.key_data(x))
            impl = jax.random.key_impl(x)
            return jax.random.wrap_key_data(jax.make_array_from_callback(data.shape, sharding, lambda i: data[i]), impl=impl)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

    return jax.tree.map(put, tree)


def shard_batch(batch: Any, mesh: Mesh, *, axis_name: str = DATA_AXIS) -> Any:
    """Splits every leaf of ``batch`` along its rows over the data axis.

    In one process, ``batch`` is the global batch. With several processes, each passes its *own*
    rows (the same number on every process) and the result is one global array whose rows are the
    processes' rows in process order (``jax.make_array_from_process_local_data``).

    Raises:
      ValueError: a leaf whose row count is not divisible by this process's share of the data axis
        (pad or drop rows before sharding: DCCA's covariance cannot ignore padded rows).
    """
    n_data = _axis_size(mesh, axis_name)
    sharding = batch_sharding(mesh, axis_name=axis_name)
    local_share = max(1, n_data // jax.process_count())

    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.ndim == 0 or x.shape[0] % local_share:
            raise ValueError(
                f"a batch leaf of shape {x.shape} cannot be split over {local_share} devices of mesh axis "
                f"{axis_name!r} in this process: its row count must be a multiple of {local_share}. Choose a "
                "batch size divisible by the number of devices (drop_remainder when batching)."
            )
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(put, batch)


def local_rows(x: jax.Array) -> np.ndarray:
    """The rows of a row-sharded global array that live in this process, in order, as numpy."""
    if jax.process_count() == 1 or x.is_fully_addressable:
        return np.asarray(x)
    pieces = {}
    for shard in x.addressable_shards:
        start = shard.index[0].start or 0 if shard.index else 0
        pieces.setdefault(start, np.asarray(shard.data))
    return np.concatenate([pieces[k] for k in sorted(pieces)], axis=0)


# --------------------------------------------------------------------------- collectives in shard_map
def global_view_covariances(
    h_v: jax.Array, h_s: jax.Array, *, axis_name: str = DATA_AXIS, ridge_v: float = 1e-4, ridge_s: float = 1e-4
):
    r"""Eq. 4's covariances of the *global* batch from inside ``jax.shard_map`` (per-device rows in).

    Two collective passes, each a ``psum`` over ``axis_name``: the global count and column sums give
    the global mean :math:`\mu`; then the centred cross-products
    :math:`\sum_{\text{devices}} (H-\mu)^\top (H-\mu)` give :math:`(n-1)\Sigma`. Centring with the
    global (not the per-device) mean makes the result equal to
    :func:`dcca_jax.objectives.view_covariances` on the concatenated batch, and avoids the
    cancellation of ``E[xx^T] - mu mu^T``. Communication: ``O(d^2)`` per step, independent of ``n``.

    Args:
      h_v: ``(n_local, o_v)`` this device's rows of the visual outputs.
      h_s: ``(n_local, o_s)`` the paired semantic rows.
      axis_name: mesh axis over which the batch is split.
      ridge_v, ridge_s: Eq. 4 regularisers.

    Returns:
      ``(s_vv, s_ss, s_vs)`` replicated on every device of the axis.
    """
    h_v, h_s = check_views(h_v, h_s, names=("h_v", "h_s"), min_n=1)
    o_v = h_v.shape[1]
    h = jnp.concatenate([h_v, h_s], axis=1)
    n = jax.lax.psum(jnp.asarray(h.shape[0], h.dtype), axis_name)
    mean = jax.lax.psum(jnp.sum(h, axis=0), axis_name) / n
    hc = h - mean
    c = jax.lax.psum(hc.T @ hc, axis_name) / (n - 1)
    c = 0.5 * (c + c.T)
    s_vv = c[:o_v, :o_v] + ridge_v * jnp.eye(o_v, dtype=c.dtype)
    s_ss = c[o_v:, o_v:] + ridge_s * jnp.eye(c.shape[0] - o_v, dtype=c.dtype)
    return s_vv, s_ss, c[:o_v, o_v:]


# ------------------------------------------------------------------------------------ train steps
def make_train_step(loss_fn: Callable, *, clip_non_finite: bool = False) -> Callable:
    """A ``train_step(state, batch, rng) -> (state, metrics)`` for a flax ``TrainState``.

    Args:
      loss_fn: ``loss_fn(params, batch, rng) -> (loss, aux_metrics_dict)``, written for the *global*
        batch (compute the covariances over all its rows, as for one device).
      clip_non_finite: zero the update when the loss or gradients are not finite (the metrics still
        report it so the caller can raise with advice).

    Returns:
      The un-jitted step; pass it to :func:`shard_train_step` (or ``jax.jit``).
    """

    def train_step(state, batch, rng):
        rng = jax.random.fold_in(rng, state.step)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
        new_state = state.apply_gradients(grads=grads)
        if clip_non_finite:
            ok = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
            new_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, state)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return new_state, metrics

    return train_step


def shard_train_step(
    train_step: Callable, mesh: Mesh, *, axis_name: str = DATA_AXIS, donate_state: bool = False
) -> Callable:
    """Data-parallel version of any ``train_step(state, batch, rng) -> (state, metrics)``.

    The step is jitted with the state and RNG replicated and every batch leaf split by rows over
    ``axis_name``; XLA partitions the towers per device and turns the reductions over rows (means,
    ``H^T H``) into all-reduces, so the loss and gradients are those of the global batch. Works with an
    already-jitted step (e.g. ``dcca_jax.models.dcca.train_step``). The returned callable places its inputs
    (:func:`replicate`, :func:`shard_batch`) when they are not placed yet.

    Args:
      train_step: the single-device step.
      mesh: from :func:`make_mesh`.
      axis_name: the data axis.
      donate_state: let XLA reuse the old state's buffers (the caller must not reuse that state).

    Returns:
      ``step(state, batch, rng) -> (state, metrics)`` with replicated outputs.
    """
    repl = replicated_sharding(mesh)
    data = batch_sharding(mesh, axis_name=axis_name)
    jitted = jax.jit(
        train_step,
        in_shardings=(repl, data, repl),
        out_shardings=(repl, repl),
        donate_argnums=(0,) if donate_state else (),
    )

    @functools.wraps(train_step)
    def step(state, batch, rng):
        return jitted(replicate(state, mesh), shard_batch(batch, mesh, axis_name=axis_name), replicate(rng, mesh))

    step.jitted = jitted
    return step


# ------------------------------------------------------------------------- sharded feature extraction
@functools.lru_cache(maxsize=64)
def _jitted_apply(apply_fn, mesh, axis_name):
    return jax.jit(
        apply_fn,
        in_shardings=(replicated_sharding(mesh), batch_sharding(mesh, axis_name=axis_name)),
        out_shardings=batch_sharding(mesh, axis_name=axis_name),
    )


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    if x.shape[0] == rows:
        return x
    # Repeat the last row: a valid input for any per-example model (zeros may not be, e.g. uint8 images
    # through a normalisation), and the padded outputs are dropped.
    pad = np.repeat(x[-1:], rows - x.shape[0], axis=0)
    return np.concatenate([x, pad], axis=0)


def shard_batch_apply(
    apply_fn: Callable,
    params: Any,
    batch: Any,
    mesh: Mesh,
    *,
    axis_name: str = DATA_AXIS,
    per_device_batch: int | None = None,
) -> jax.Array:
    """Runs a per-example model over a batch split across the devices of ``mesh``.

    ``apply_fn(params, x)`` must treat rows independently (a CNN or auto-encoder in inference mode, no
    batch statistics). Rows are padded to a multiple of the device count (by repeating the last row)
    and the padding is dropped from the result. With ``per_device_batch``, the batch is processed in
    fixed-shape blocks of ``per_device_batch * n_devices`` rows (one compilation, bounded device
    memory) and the outputs are gathered on the host.

    With several processes, ``batch`` is this process's rows and the result is the outputs for them.

    Args:
      apply_fn: ``(params, x) -> y`` with ``x`` a pytree of ``(n, ...)`` leaves, ``y`` ``(n, ...)``.
        Must be hashable (a function, or a ``functools.partial`` kept alive by the caller).
      params: replicated on every device.
      batch: ``(n, ...)`` array or pytree of arrays with the same ``n``.
      mesh: from :func:`make_mesh`.
      per_device_batch: rows per device per block (default: everything in one block).

    Returns:
      ``(n, ...)`` outputs, equal to ``apply_fn(params, batch)`` up to float round-off.
    """
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("shard_batch_apply needs a non-empty batch.")
    n = int(np.shape(leaves[0])[0])
    if any(np.shape(x)[0] != n for x in leaves):
        raise ValueError(f"all batch leaves must have the same rows; got shapes {[np.shape(x) for x in leaves]}.")
    if n == 0:
        raise ValueError("shard_batch_apply got a batch of 0 rows.")
    devs = _axis_size(mesh, axis_name) // jax.process_count() or 1
    fn = _jitted_apply(apply_fn, mesh, axis_name)
    params = replicate(params, mesh)
    block = n if per_device_batch is None else int(per_device_batch) * devs
    if block < 1:
        raise ValueError(f"per_device_batch must be positive; got {per_device_batch}.")
    block = -(-block // devs) * devs
    outs = []
    for i in range(0, n, block):
        j = min(i + block, n)
        rows = block if per_device_batch is not None else -(-(j - i) // devs) * devs
        part = jax.tree.map(lambda x: _pad_rows(np.asarray(x[i:j]), rows), batch)
        y = fn(params, shard_batch(part, mesh, axis_name=axis_name))
        outs.append(jax.tree.map(lambda a: local_rows(a)[: j - i], y))
    if len(outs) == 1:
        return jax.tree.map(jnp.asarray, outs[0])
    return jax.tree.map(lambda *xs: jnp.asarray(np.concatenate(xs, axis=0)), *outs)


def _call_without_params(fn, params, x):
    del params
    return fn(x)


def sharded_apply(fn: Callable, mesh: Mesh, *, axis_name: str = DATA_AXIS, per_device_batch: int | None = None) -> Callable:
    """``x -> fn(x)`` split over the devices of ``mesh``, for a per-example ``fn`` whose parameters are
    closed over (e.g. ``dcca_jax.visual.extract.Backbone.apply``). See :func:`shard_batch_apply`."""
    call = functools.partial(_call_without_params, fn)  # built once: the compiled program is cached on it

    def apply(x):
        return shard_batch_apply(call, None, x, mesh, axis_name=axis_name, per_device_batch=per_device_batch)

    return apply


def shard_backbone(backbone, mesh: Mesh, *, axis_name: str = DATA_AXIS):
    """A copy of a feature extractor (a dataclass with an ``apply`` field, such as
    ``dcca_jax.visual.extract.Backbone``) whose ``apply`` runs split over ``mesh``.

    ``extract_features(paths, backbone=shard_backbone(build_backbone(cfg), mesh), batch_size=b)`` then
    extracts on every device; choose ``b`` a multiple of the device count (other sizes are padded).
    """
    if getattr(backbone, "engine", "jax") != "jax":
        raise ValueError(f"only the JAX engine runs over a mesh, this backbone runs on {backbone.engine!r}: build it "
                         "with engine='jax' (dcca_jax.visual.extract.backbone_config)")
    return dataclasses.replace(backbone, apply=sharded_apply(backbone.apply, mesh, axis_name=axis_name))


# -------------------------------------------------------------------------------- mixed precision
@dataclasses.dataclass(frozen=True)
class PrecisionPolicy:
    """Dtypes for a two-tower step: where the towers run and where the correlation is computed.

    Attributes:
      param_dtype: dtype the parameters (and optimiser state) are stored and updated in.
      compute_dtype: dtype of the towers' matrix products (``bfloat16`` on TPUs / recent GPUs).
      output_dtype: dtype the tower outputs are cast to before covariances, whitening and the
        objective (float32 at least: ``inv_sqrtm``/Cholesky of bf16 covariances is meaningless).
    """

    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.float32
    output_dtype: Any = jnp.float32


_POLICIES = {
    "float32": PrecisionPolicy(),
    "float64": PrecisionPolicy(jnp.float64, jnp.float64, jnp.float64),
    "bfloat16": PrecisionPolicy(jnp.float32, jnp.bfloat16, jnp.float32),
    "float16": PrecisionPolicy(jnp.float32, jnp.float16, jnp.float32),
}


def precision_policy(name: str | PrecisionPolicy) -> PrecisionPolicy:
    """A policy by name: ``"float32"``, ``"float64"``, ``"bfloat16"`` (bf16 towers, float32 objective),
    ``"float16"``; a :class:`PrecisionPolicy` passes through."""
    if isinstance(name, PrecisionPolicy):
        return name
    if name not in _POLICIES:
        raise ValueError(f"unknown precision policy {name!r}; choose one of {sorted(_POLICIES)}.")
    return _POLICIES[name]


def cast_floating(tree: Any, dtype) -> Any:
    """Casts the floating-point leaves of a pytree to ``dtype`` (integer leaves, e.g. uint8 images, kept)."""

    def cast(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(x).astype(dtype)
        return x

    return jax.tree.map(cast, tree)


def apply_with_policy(apply_fn: Callable, params: Any, x: Any, policy: str | PrecisionPolicy, **kwargs):
    """``apply_fn(params, x)`` with params and inputs cast to the compute dtype, output to the output dtype.

    Differentiable: gradients flow back through the casts into the stored (``param_dtype``) params.
    """
    policy = precision_policy(policy)
    out = apply_fn(cast_floating(params, policy.compute_dtype), cast_floating(x, policy.compute_dtype), **kwargs)
    return cast_floating(out, policy.output_dtype)


class PrecisionTower(nn.Module):
    """A tower run under a precision policy: its layers compute in their own ``dtype`` (set by
    :func:`with_precision`) and the output is cast to ``output_dtype`` before any covariance.

    Parameters live under the ``"tower"`` key of this module's ``params``.
    """

    tower: nn.Module
    output_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        return self.tower(x, train=train).astype(self.output_dtype)


def with_precision(tower: nn.Module, policy: str | PrecisionPolicy) -> nn.Module:
    """A :mod:`dcca_jax.models.towers` module (any module with ``dtype``/``param_dtype`` fields) under ``policy``.

    ``with_precision(tower, "bfloat16")``: matrix products in bf16, parameters and optimiser state in
    float32, outputs cast to float32 so that Eq. 4's covariances, the whitening and the objective run in
    float32. The identity for ``"float32"``/``"float64"`` policies apart from the dtypes.
    """
    policy = precision_policy(policy)
    inner = tower.clone(dtype=policy.compute_dtype, param_dtype=policy.param_dtype, parent=None)
    return PrecisionTower(inner, output_dtype=policy.output_dtype)


def data_parallel_dcca_step(
    tower_v: nn.Module,
    tower_s: nn.Module,
    config,
    mesh: Mesh,
    *,
    policy: str | PrecisionPolicy | None = None,
    axis_name: str = DATA_AXIS,
) -> Callable:
    """:func:`dcca_jax.models.dcca.make_train_step` split over the data axis of ``mesh``.

    The global batch ``(x_v, x_s)`` (rows divisible by the number of data-parallel devices) is split
    over devices; the DCCA loss, its gradients and (with batch norm) the batch statistics are those of
    the global batch, as on one device. With ``policy`` the towers are wrapped by
    :func:`with_precision` (their params then sit under ``"tower"``: initialise them from the wrapped
    modules).

    Returns:
      ``step(state, batch, rng) -> (state, metrics)`` over a ``dcca_jax.models.dcca.DCCATrainState``.
    """
    from dcca_jax.models import dcca  # deferred: dcca is the heavier module and imports nothing from here

    if policy is not None:
        tower_v, tower_s = with_precision(tower_v, policy), with_precision(tower_s, policy)
    return shard_train_step(dcca.make_train_step(tower_v, tower_s, config), mesh, axis_name=axis_name)


def _equal_local_rows(n_local: int) -> None:
    if jax.process_count() == 1:
        return
    counts = np.asarray(multihost_utils.process_allgather(np.asarray([n_local], np.int64))).ravel()
    if len(set(counts.tolist())) != 1:
        raise ValueError(
            f"every process must hold the same number of training rows for data-parallel steps; got {counts.tolist()} "
            "(use process_slice(n, multiple_of=batch_size // process_count) to split the data)."
        )


def _host(tree: Any) -> Any:
    """Host (numpy) copies of replicated arrays, in one process or many (each process reads its own replica)."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x) if isinstance(x, jax.Array) else x

    return jax.tree.map(get, tree)


def _all_rows(h: jax.Array) -> np.ndarray:
    """Every process's rows of a per-process array, concatenated in process order (the array itself in one)."""
    if jax.process_count() == 1:
        return np.asarray(h)
    return np.asarray(multihost_utils.process_allgather(np.asarray(h), tiled=True))


def fit_dcca_data_parallel(
    x_v,
    x_s,
    config,
    mesh: Mesh,
    *,
    policy: str | PrecisionPolicy | None = None,
    validation=None,
    metrics_path: str | os.PathLike | None = None,
):
    r"""Trains DCCA (Eq. 3-8) data-parallel over ``mesh``, on one host or many; returns a fitted ``DeepCCA``.

    Each process passes *its own* rows (numpy arrays or ``np.memmap`` slices, the same number on every
    process); ``config.batch_size`` is the *global* batch, split evenly over processes and devices, so
    the objective of every step is that of the global batch. Epoch ``e`` visits this process's rows in
    the order ``default_rng([seed, e, process_index])``. With ``config.towers.residual_cca`` the towers
    start at a linear CCA fitted by streaming statistics merged over all processes
    (:func:`allreduce_stats`), i.e. on all the training rows.

    As :meth:`dcca_jax.models.dcca.DeepCCA.fit`: a held-out part (``validation``, or a seeded
    ``validation_fraction`` of each process's rows, :func:`dcca_jax.training.validation_split`) scores every
    epoch by the total canonical correlation of the towers' outputs over all processes' held-out rows; the
    parameters of the best epoch are kept and training stops after ``patience`` epochs without improvement;
    finally a linear CCA on the towers' outputs for all the training rows gives the projections of Eq. 8.
    Evaluation (held-out correlation, final CCA, the returned model) runs the towers in the config's
    ``dtype``, also when training used a precision ``policy``.

    Args:
      x_v: ``(n_local, d_v)`` this process's visual rows.
      x_s: ``(n_local, d_s)`` the paired semantic rows.
      config: :func:`dcca_jax.models.dcca.dcca_config` (Adam only; ``epochs``, ``batch_size``,
        ``learning_rate``, ``seed``, ``dtype``, ``patience``, ``validation_fraction``, towers, objective and
        ridges are used).
      mesh: :func:`make_mesh` over all processes' devices.
      policy: optional precision policy (:func:`with_precision`), e.g. ``"bfloat16"``.
      validation: ``(v_v, v_s)`` this process's held-out rows (instead of a ``validation_fraction`` split).
      metrics_path: JSON-lines file, one record per epoch, written by process 0.

    Returns:
      A fitted :class:`dcca_jax.models.dcca.DeepCCA` (``transform``, ``score``, ``save`` as after ``fit``);
      ``history`` holds the per-epoch records (``epoch``, ``objective`` = mean batch objective, ``val_corr``,
      ``seconds``, ``samples_per_s``, ``steps``), ``best_step`` the step whose parameters are kept.

    Raises:
      ValueError: L-BFGS, a global batch not divisible over processes and devices, unequal rows per
        process, or fewer rows than one batch.
      dcca_jax.training.NonFiniteLossError: the loss or the held-out correlation became NaN/inf (with advice).
    """
    from dcca_jax.models import dcca
    from dcca_jax.models.streaming import fit_from_stats, stats_from_arrays
    from dcca_jax.models.towers import init_from_cca, make_tower

    t_start = time.perf_counter()
    model = dcca.DeepCCA(config)
    c = model.config
    if c.optimizer != "adam":
        raise ValueError(f"fit_dcca_data_parallel trains with minibatch Adam; got optimizer={c.optimizer!r}.")
    if x_v.shape[0] != x_s.shape[0]:
        raise ValueError(f"x_v and x_s must have the same number of rows; got shapes {x_v.shape} and {x_s.shape}.")
    n_local = int(x_v.shape[0])
    _equal_local_rows(n_local)
    dt = dcca.DTYPES[c.dtype]
    # The held-out part: every process holds the same number of rows, so every process splits off as many.
    rows = None
    val = None
    if validation is not None:
        val = tuple(np.asarray(v, dt) for v in validation)
        if val[0].shape[0] != val[1].shape[0] or val[0].shape[1] != x_v.shape[1] or val[1].shape[1] != x_s.shape[1]:
            raise ValueError(f"validation views have shapes {val[0].shape}, {val[1].shape}; the training views have "
                             f"{x_v.shape}, {x_s.shape} (rows must pair up, feature counts must match).")
        _equal_local_rows(val[0].shape[0])
    else:
        n_val = int(round(float(c.validation_fraction) * n_local))
        if n_val:
            rows, val_idx = validation_split(n_local, n_val=n_val, seed=int(c.seed))
            val = (np.asarray(x_v[val_idx], dt), np.asarray(x_s[val_idx], dt))
    if val is not None:
        model.check_validation_size(val[0].shape[0] * jax.process_count())
    n_fit = n_local if rows is None else len(rows)
    if rows is None:
        rows = np.arange(n_local)
        fit_v, fit_s = x_v, x_s
    else:
        fit_v, fit_s = np.asarray(x_v[rows]), np.asarray(x_s[rows])
    procs = jax.process_count()
    devices = _axis_size(mesh, DATA_AXIS)
    bs = int(c.batch_size)
    if bs % devices or bs % procs:
        raise ValueError(f"batch_size={bs} must be divisible by the {devices} data-parallel devices ({procs} processes).")
    local_bs = bs // procs
    steps = n_fit // local_bs
    if steps < 1:
        raise ValueError(f"each process holds {n_fit} rows, fewer than its share {local_bs} of batch_size={bs}.")
    t = c.towers
    kw = dict(out_dim=t.out_dim, activation=t.activation, batch_norm=t.batch_norm, dropout=t.dropout,
              residual_cca=t.residual_cca, param_dtype=dt)
    tv, ts = make_tower(hidden=t.visual_hidden, **kw), make_tower(hidden=t.semantic_hidden, **kw)
    if policy is not None:
        tv, ts = with_precision(tv, policy), with_precision(ts, policy)
    init_rng, step_rng = jax.random.split(jax.random.key(int(c.seed)))
    r_v, r_s = jax.random.split(init_rng)
    var_v = tv.init(r_v, jnp.asarray(fit_v[:2], dt))
    var_s = ts.init(r_s, jnp.asarray(fit_s[:2], dt))
    params = {"visual": var_v["params"], "semantic": var_s["params"]}
    if t.residual_cca:
        k = min(int(t.out_dim), x_v.shape[1], x_s.shape[1])
        stats = allreduce_stats(stats_from_arrays(fit_v, fit_s))
        lin = fit_from_stats(stats, n_components=k, ridge_v=float(t.cca_init_ridge), ridge_s=float(t.cca_init_ridge))

        def init(p, proj, mean):
            if policy is not None:
                return {**p, "tower": init_from_cca(p["tower"], proj=proj, mean=mean)}
            return init_from_cca(p, proj=proj, mean=mean)

        params = {"visual": init(params["visual"], lin.proj_v, lin.mean_v),
                  "semantic": init(params["semantic"], lin.proj_s, lin.mean_s)}
    batch_stats = {"visual": var_v.get("batch_stats", {}), "semantic": var_s.get("batch_stats", {})} if t.batch_norm else {}
    state = replicate(dcca.DCCATrainState.create(apply_fn=None, params=params, tx=dcca.make_optimizer(c),
                                                 batch_stats=batch_stats), mesh)
    step = shard_train_step(dcca.make_train_step(tv, ts, c), mesh)

    def plain(tree):
        # Evaluation runs DeepCCA's own towers: a policy-wrapped tower keeps its parameters under "tower".
        return {k: v["tower"] for k, v in tree.items()} if policy is not None and tree else tree

    def outputs(p, s, x, which):
        chunk = max(1, int(c.eval_chunk))
        parts = [np.asarray(model.apply_towers(p, s, np.asarray(x[i:i + chunk], dt), which))
                 for i in range(0, x.shape[0], chunk)]
        return _all_rows(np.concatenate(parts, axis=0))

    stopper = EarlyStopping(patience=int(c.patience) if val is not None else 0)
    best = _host((plain(state.params), plain(state.batch_stats)))
    writer = MetricsWriter(metrics_path if jax.process_index() == 0 else None, name="dcca data-parallel")
    advice = (f"the global batch's covariance became singular or the updates diverged (global batch {bs}, "
              f"learning_rate={c.learning_rate}, ridges {c.ridge_v}/{c.ridge_s}): lower the learning rate, raise "
              "the ridges, or use float32 outputs (precision policy 'bfloat16' keeps the objective in float32).")
    for epoch in range(int(c.epochs)):
        if stopper.stopped:
            break
        t0 = time.perf_counter()
        perm = np.random.default_rng([int(c.seed), epoch, jax.process_index()]).permutation(n_fit)
        objectives = []
        for i in range(steps):
            idx = np.sort(rows[perm[i * local_bs:(i + 1) * local_bs]])  # sorted: sequential reads from a memmap
            batch = (np.asarray(x_v[idx], dt), np.asarray(x_s[idx], dt))
            state, metrics = step(state, batch, step_rng)
            objectives.append(metrics["objective"])
        n_steps = int(state.step)
        obj = check_finite(np.mean(jax.device_get(objectives)), what="DCCA objective", step=n_steps, epoch=epoch,
                           advice=advice)
        secs = time.perf_counter() - t0
        rec = {"kind": "epoch", "epoch": epoch, "step": n_steps, "objective": obj, "seconds": secs,
               "samples_per_s": steps * bs / secs, "steps": n_steps}
        current = _host((plain(state.params), plain(state.batch_stats)))
        if val is not None:
            vc = model.total_correlation(outputs(*current, val[0], 0), outputs(*current, val[1], 1))
            rec["val_corr"] = check_finite(vc, what="held-out correlation", step=n_steps, epoch=epoch, advice=advice)
            if stopper.update(vc, step=n_steps):
                best = current
            rec["best_val_corr"] = stopper.best
        else:
            best, stopper.best_step = current, n_steps
        writer.write(rec)
    params, stats = jax.tree.map(jnp.asarray, best)
    # Eq. 8: linear CCA on the towers' outputs for every process's training rows.
    model.set_trained(params, stats, outputs(params, stats, fit_v, 0), outputs(params, stats, fit_s, 1),
                      history=writer.history, best_step=stopper.best_step, best_val_corr=stopper.best,
                      dims=(x_v.shape[1], x_s.shape[1]))
    model.fit_seconds = time.perf_counter() - t_start
    return model


# ------------------------------------------------------------------------------------- multi-host
def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids=None,
    initialization_timeout: int = 300,
    cpu_collectives: str | None = "gloo",
    auto: bool = False,
) -> bool:
    """Starts ``jax.distributed`` (one process per host) from explicit arguments.

    Reads no environment: the caller (``experiments/train_dcca_distributed.py``) turns its flags and the
    ``DCCA_/JAX_*`` variables into these arguments. With none of the three given, ``auto=True`` lets
    ``jax.distributed.initialize()`` detect the cluster itself (SLURM, Open MPI, Cloud TPU pods). Call it
    before any other JAX call that touches devices.

    Args:
      coordinator_address: ``host:port`` of process 0.
      num_processes: number of processes.
      process_id: this process's rank in ``[0, num_processes)``.
      local_device_ids: devices this process drives (default: all local ones).
      initialization_timeout: seconds to wait for the other processes.
      cpu_collectives: CPU cross-process collectives (``"gloo"``; ``None`` keeps JAX's setting). Needed
        only for CPU runs; harmless on GPU/TPU.
      auto: call ``jax.distributed.initialize()`` without arguments (cluster auto-detection).

    Returns:
      True when a multi-process runtime is up (now or already), False for a plain single process.

    Raises:
      ValueError: a partial or inconsistent specification (e.g. an address but no process count).
    """
    if jax.distributed.is_initialized():
        return True
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if not any(given):
        if auto:
            logging.info("initialize_distributed: letting JAX detect the cluster.")
            jax.distributed.initialize(local_device_ids=local_device_ids, initialization_timeout=initialization_timeout)
            return True
        return False
    if num_processes == 1 and coordinator_address is None:
        return False
    if not all(given):
        raise ValueError(
            "initialize_distributed needs coordinator_address, num_processes and process_id together; got "
            f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, process_id={process_id!r}."
        )
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes}).")
    logging.info("initialize_distributed: process %d of %d, coordinator %s", process_id, num_processes, coordinator_address)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout,
    )
    return True


def process_slice(n: int, *, process_index: int | None = None, process_count: int | None = None, multiple_of: int = 1) -> slice:
    """This process's contiguous share of ``n`` rows (balanced; the shares tile ``[0, n)`` in order).

    With ``multiple_of > 1`` every process gets the same number of rows, a multiple of ``multiple_of``
    (the trailing ``n mod (process_count * multiple_of)`` rows are dropped): what a data-parallel
    step needs, since every process must contribute the same number of rows to a global batch.
    """
    i = jax.process_index() if process_index is None else int(process_index)
    p = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= i < p:
        raise ValueError(f"process_index={i} must be in [0, process_count={p}).")
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}.")
    if multiple_of > 1:
        per = (n // (p * multiple_of)) * multiple_of
        return slice(i * per, (i + 1) * per)
    return slice((n * i) // p, (n * (i + 1)) // p)


def _allgather_f64(x: np.ndarray) -> np.ndarray:
    # float64 travels as its bit pattern (uint32 pairs), so the gather is exact even without x64.
    bits = np.ascontiguousarray(np.asarray(x, np.float64)).view(np.uint32)
    out = np.asarray(multihost_utils.process_allgather(bits, tiled=False))
    return out.view(np.float64).reshape((out.shape[0],) + np.shape(x))


def allreduce_stats(stats: CovarianceStats) -> CovarianceStats:
    """Merges every process's :class:`dcca_jax.models.streaming.CovarianceStats` (Chan update, float64, exact
    transfer); each process gets the statistics of all rows. A no-op in a single process."""
    if jax.process_count() == 1:
        return stats
    counts = _allgather_f64(np.asarray([stats.count], np.float64))
    means = _allgather_f64(stats.mean)
    comoments = _allgather_f64(stats.comoment)
    total = empty_stats(stats.d_v, stats.d_s)
    for c, m, mm in zip(counts, means, comoments):
        total = merge_stats(total, CovarianceStats(count=np.float64(c[0]), mean=m, comoment=mm, d_v=stats.d_v))
    return total
