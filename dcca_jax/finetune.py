r"""Deep CCA from pixels: MobileNetV2 inside the visual tower, trained end to end on the correlation objective.

Visual tower: images -> MobileNetV2 (ImageNet-pretrained, :mod:`dcca_jax.visual.mobilenet`) -> 1280-d pooled
feature -> :class:`dcca_jax.models.towers.ResidualCCATower`; semantic tower: tag vector -> ResidualCCATower.  The
towers' linear maps start as a linear CCA of the pretrained features and the tags of the training images and
the residual MLPs' last layers start at zero, so training starts *at* frozen-feature linear CCA (FINDINGS.md).
Training minimises :func:`dcca_jax.objectives.cca_loss` of the two towers' outputs (Eq. 5-7); after training a
linear CCA on the towers' training outputs gives the common space (Eq. 8).

The backbone is split at ``trainable_from`` (a layer of :data:`LAYERS`): the layers before it are a frozen
*prefix* (constants, no gradient, no optimiser state), the rest is trained with its own learning rate
(``cnn_lr``; ``head_lr`` for the visual MLP, ``semantic_lr`` for the semantic tower; ``optax.multi_transform``).
``trainable_from="none"`` freezes the whole CNN: the tower then trains on fixed pooled features (frozen DCCA,
the comparison row).  The frozen prefix is evaluated once per image and micro-batch; evaluation-view prefix
outputs are cached for the whole run.

Batch norm (``batch_norm``): the pretrained TFLite file has every batch norm folded into its convolution
(``y = W x + b``).  ``"folded"`` (default) keeps that affine map, so the pretrained statistics are frozen.
``"update"`` puts a BatchNorm after each *trainable* convolution, initialised so that the network computes the
same function at the start: running statistics ``mu, sigma^2`` of each convolution's output from a calibration
pass over the (evaluation-view) training images, scale ``sqrt(sigma^2 + eps)`` and offset ``mu``, so
``BN(y) = (y - mu) / sqrt(sigma^2 + eps) * sqrt(sigma^2 + eps) + mu = y`` in evaluation mode.  In training,
the micro-batch's own statistics normalise (as in any BN network) and the running statistics follow them.

Exact gradient accumulation: the correlation objective is not a sum over samples, so averaging per-micro-batch
gradients would optimise a different (small-batch) objective.  A step over an effective batch of
``micro_batch * accumulate`` images (:func:`accumulated_gradients`):

1. forward every micro-batch without gradient: ``H_v`` (B, o) for the whole effective batch;
2. ``L(H_v, f_s(Y))`` on the whole batch, with ``dL/dH_v`` and the semantic tower's gradient;
3. re-forward each micro-batch under ``jax.vjp`` and pull back its rows of ``dL/dH_v``, summing the
   parameter gradients: :math:`\nabla_\theta L = \sum_i J_i(\theta)^\top \partial L / \partial H_{v,i}`.

This equals ``jax.grad`` of the loss of the single big batch (the chain rule; tests/test_finetune.py checks it)
while holding only one micro-batch's activations.  With ``batch_norm="update"`` the BN statistics are those of
each micro-batch (both passes see the same micro-batches, so the gradient is exact for that network).

Training is restartable: the epoch's order comes from ``default_rng([seed, epoch])``, each image's
augmentation from ``(seed, epoch, index)`` (:mod:`dcca_jax.visual.augment`); orbax checkpoints (every
``checkpoint_every`` steps and at each epoch end) hold the train state, the best parameters and the
early-stopping counters, so a rerun in the same workdir ends with the parameters of an uninterrupted run.
Early stopping: before training and after each epoch the validation images are mapped to the common space (Eq. 8 CCA fitted on the
training images' outputs) and tagged by the transfer method ``config.transfer``
(:func:`dcca_jax.tagging.recommend.transfer_scores`); the parameters with the best validation per-word F1 are kept
(``best_epoch=-1``: the starting point, i.e. training did not improve on linear CCA).

References:
  G. Andrew et al. Deep Canonical Correlation Analysis. ICML 2013.
  M. Sandler et al. MobileNetV2: Inverted Residuals and Linear Bottlenecks. CVPR 2018.
  S. Ioffe, C. Szegedy. Batch Normalization. ICML 2015.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from dcca_jax.tagging import metrics
from dcca_jax.tagging import recommend
from dcca_jax.visual.augment import BatchLoader, DecodedImages, augment_config
from dcca_jax.blas import limit_blas_threads
from dcca_jax.models.cca import CCAParams, fit_linear_cca, project
from dcca_jax.visual.mobilenet import BLOCKS, NUM_FEATURES, InvertedResidual, QConv
from dcca_jax.objectives import OBJECTIVES, cca_loss
from dcca_jax.models.towers import ResidualCCATower, init_from_cca
from dcca_jax.training import METRICS_FILE, Checkpoints, EarlyStopping, MetricsWriter, check_finite, fingerprint

__all__ = [
    "LAYERS",
    "BN_MODES",
    "finetune_config",
    "layer_index",
    "BackboneSegment",
    "VisualTower",
    "FinetuneTrainState",
    "FinetuneFunctions",
    "make_functions",
    "functions_for",
    "slice_layers",
    "eval_boundary",
    "validation_f1",
    "FinetuneResult",
    "make_optimizer",
    "accumulated_gradients",
    "calibrate_batch_norm",
    "finetuned_backbone",
    "FinetunedDCCA",
    "fit_finetune",
]

# The backbone's layers in order: stem convolution, the 17 inverted-residual blocks, the 1x1 conv to 1280.
LAYERS: tuple[str, ...] = ("Conv",) + tuple(b[0] for b in BLOCKS) + ("Conv_1",)
_BLOCK_SPEC = {b[0]: b for b in BLOCKS}
BN_MODES = ("folded", "update")
DTYPES = {"float32": jnp.float32, "float64": jnp.float64}
COMPUTE_DTYPES = {**DTYPES, "bfloat16": jnp.bfloat16}
_RESUMABLE_FIELDS = ("epochs", "patience", "checkpoint_every", "keep_checkpoints", "log_every", "num_workers",
                     "prefetch", "eval_batch")


def finetune_config() -> ml_collections.ConfigDict:
    """Hyperparameters of :func:`fit_finetune` with their defaults (see the module docstring)."""
    c = ml_collections.ConfigDict()
    c.augment = augment_config()
    c.trainable_from = "expanded_conv_13"  # a name in LAYERS, its index, or "none" (frozen CNN)
    c.batch_norm = "folded"  # BN_MODES
    c.bn_momentum = 0.9
    c.bn_epsilon = 1e-3
    c.out_dim = 100
    c.visual_hidden = (1024,)
    c.semantic_hidden = (1024,)
    c.activation = "sigmoid"
    c.cca_init_ridge_v = 0.1  # the linear CCA that initialises the towers (on pretrained features)
    c.cca_init_ridge_s = 0.01
    c.objective = "trace_norm"
    c.k = ml_collections.config_dict.placeholder(int)
    c.ridge_v = 1e-3  # Eq. 4 ridges of the loss and of the final CCA (Eq. 8)
    c.ridge_s = 1e-3
    c.final_cca_ridge_v = 0.1
    c.final_cca_ridge_s = 0.01
    c.cnn_lr = 1e-5
    c.head_lr = 1e-4
    c.semantic_lr = 1e-4
    c.cnn_weight_decay = 0.0
    c.weight_decay = 0.0
    c.micro_batch = 50
    c.accumulate = 10  # effective batch = micro_batch * accumulate
    c.epochs = 8
    c.patience = 3  # epochs without a better validation F1 before stopping (0: never)
    c.transfer = ml_collections.ConfigDict(
        {"method": "2pknn", "weighting": "exp", "k1": 1, "temperature": 0.1, "against": "visual"})
    c.n_tags = 5
    c.checkpoint_every = 0  # steps; 0: only at epoch ends
    c.keep_checkpoints = 2
    c.log_every = 1
    c.num_workers = 1  # image-preparing threads
    c.prefetch = 4  # micro-batches in flight
    c.eval_batch = 100
    c.seed = 0
    c.dtype = "float32"
    # dtype of the CNN's convolutions and of the towers' matrix products (None: dtype). "bfloat16" is mixed
    # precision: float32 parameters, optimiser state, tower outputs, covariances and objective.
    c.compute_dtype = ml_collections.config_dict.placeholder(str)
    return c


def layer_index(trainable_from: str | int) -> int:
    """Index in :data:`LAYERS` of the first trained layer (``len(LAYERS)`` for ``"none"``: frozen CNN)."""
    if isinstance(trainable_from, (int, np.integer)) and not isinstance(trainable_from, bool):
        i = int(trainable_from)
    elif trainable_from in ("none", "None", None):
        return len(LAYERS)
    elif str(trainable_from).lstrip("-").isdigit():
        i = int(trainable_from)
    elif trainable_from in LAYERS:
        return LAYERS.index(trainable_from)
    else:
        raise ValueError(f"trainable_from must be a layer of MobileNetV2 {LAYERS}, its index, or 'none'; "
                         f"got {trainable_from!r}.")
    if not 0 <= i <= len(LAYERS):
        raise ValueError(f"trainable_from index {i} is outside [0, {len(LAYERS)}] (the {len(LAYERS)} layers of "
                         "MobileNetV2; the last value means a frozen CNN).")
    return i


# ----------------------------------------------------------------------------------------------------------
# Backbone segments
# ----------------------------------------------------------------------------------------------------------

class BackboneSegment(nn.Module):
    """Layers ``LAYERS[start:stop]`` of MobileNetV2 (float, folded BN unless ``batch_norm``), optionally pooled.

    Parameters use the names of :func:`dcca_jax.visual.mobilenet.load_tflite_params` (``{"Conv": {"conv": ...},
    "expanded_conv_13": {"expand": {"conv": ...}, ...}, ...}``), so a pretrained tree can be sliced by layer.

    Attributes:
      start, stop: the layer range.
      pool: global average pooling at the end (only with ``stop == len(LAYERS)``: the 1280-d feature).
      batch_norm: a BatchNorm after every convolution (``batch_norm="update"`` mode).

    Call: ``(n, H, W, C) -> (n, H', W', C')`` or ``(n, 1280)`` when pooled.  ``start == stop`` is the identity.
    """

    start: int
    stop: int
    pool: bool = False
    batch_norm: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        kw = dict(batch_norm=self.batch_norm, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
        for name in LAYERS[self.start:self.stop]:
            if name == "Conv":
                x = QConv(32, 3, stride=2, name="Conv", **kw)(x, train=train)
            elif name == "Conv_1":
                x = QConv(NUM_FEATURES, 1, name="Conv_1", **kw)(x, train=train)
            else:
                _, t, c_in, c_out, s = _BLOCK_SPEC[name]
                x = InvertedResidual(t, c_in, c_out, s, name=name, **kw)(x, train=train)
        if self.pool:
            x = jnp.mean(x, axis=(1, 2))
        return x


class VisualTower(nn.Module):
    """Trainable backbone segment ``LAYERS[start:]`` -> pooled 1280-d feature -> residual-CCA MLP.

    With ``start == len(LAYERS)`` the input is the pooled feature itself (frozen CNN).  Parameters:
    ``{"backbone": ..., "head": ...}``.
    """

    start: int
    hidden: Sequence[int]
    out_dim: int
    activation: str = "sigmoid"
    batch_norm: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3
    param_dtype: Any = jnp.float32
    compute_dtype: Any = None

    def setup(self):
        if self.start < len(LAYERS):
            self.backbone = BackboneSegment(self.start, len(LAYERS), pool=True, batch_norm=self.batch_norm,
                                            bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
        self.head = self.head_module()

    @nn.nowrap
    def head_module(self) -> ResidualCCATower:
        """The residual-CCA MLP on the 1280-d feature (a fresh unbound module, e.g. to initialise it alone)."""
        return ResidualCCATower(hidden=tuple(self.hidden), out_dim=self.out_dim, activation=self.activation,
                                param_dtype=self.param_dtype, dtype=self.compute_dtype)

    def __call__(self, x, *, train: bool = False):
        return self.head(self.pooled(x, train=train), train=train)

    def pooled(self, x, *, train: bool = False):
        """The 1280-d pooled feature (no head)."""
        return self.backbone(x, train=train) if self.start < len(LAYERS) else x


def slice_layers(params: dict, start: int, stop: int) -> dict:
    """The layers ``LAYERS[start:stop]`` of a MobileNetV2 params tree (ValueError naming missing layers)."""
    missing = [n for n in LAYERS[start:stop] if n not in params]
    if missing:
        raise ValueError(f"backbone params lack layers {missing[:3]}; pass the 'params' of "
                         "dcca_jax.visual.mobilenet.load_tflite_params (or MobileNetV2().init)")
    return {n: params[n] for n in LAYERS[start:stop]}


# ----------------------------------------------------------------------------------------------------------
# Train state, optimiser, compiled functions
# ----------------------------------------------------------------------------------------------------------

class FinetuneTrainState(train_state.TrainState):
    """flax ``TrainState`` (params ``{"visual": {"backbone", "head"}, "semantic": ...}``) plus BN statistics."""

    batch_stats: Any = None


def _group_labels(params: dict) -> dict:
    return {
        "visual": {k: jax.tree_util.tree_map(lambda _: "cnn" if k == "backbone" else "head", v)
                   for k, v in params["visual"].items()},
        "semantic": jax.tree_util.tree_map(lambda _: "semantic", params["semantic"]),
    }


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Layer-wise learning rates: AdamW with ``cnn_lr`` (backbone), ``head_lr`` (visual MLP), ``semantic_lr``.

    The backbone gets ``cnn_weight_decay``, the heads ``weight_decay`` (decoupled, AdamW).
    """
    def adam(lr, wd):
        return optax.adamw(float(lr), weight_decay=float(wd)) if wd else optax.adam(float(lr))

    return optax.multi_transform(
        {"cnn": adam(config.cnn_lr, config.cnn_weight_decay), "head": adam(config.head_lr, config.weight_decay),
         "semantic": adam(config.semantic_lr, config.weight_decay)},
        _group_labels)


@dataclasses.dataclass(frozen=True)
class FinetuneFunctions:
    """The jitted pieces of a training step and of evaluation (built by :func:`make_functions`).

    - ``prefix(frozen, x) -> a``: the frozen layers (identity when nothing is frozen).
    - ``embed_train(visual, stats, a) -> (h_v, new_stats)``: trainable layers + head in training mode.
    - ``embed_eval(visual, stats, a) -> h_v`` and ``pooled_eval(visual, stats, a) -> (n, 1280)``.
    - ``semantic(params_s, y) -> h_s``.
    - ``loss_grads(h_v, params_s, y) -> (loss, dL/dh_v, dL/dparams_s)``.
    - ``pullback(visual, stats, a, g) -> dL/dvisual`` (``J^T g`` of one micro-batch).
    """

    visual: VisualTower
    semantic_tower: ResidualCCATower
    prefix: Callable
    embed_train: Callable
    embed_eval: Callable
    pooled_eval: Callable
    semantic: Callable
    loss_grads: Callable
    pullback: Callable
    apply_updates: Callable


def _cast_floating(tree, dtype):
    if dtype is None:
        return tree
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _compute_dtype(config: ml_collections.ConfigDict):
    name = config.get("compute_dtype")
    return None if name is None or name == config.dtype else COMPUTE_DTYPES[name]


def _apply_visual(tower: VisualTower, use_bn: bool, compute_dtype=None):
    def apply(params, stats, a, *, train):
        if compute_dtype is not None:
            # The CNN runs in the compute dtype (casts are differentiable: gradients reach the float32
            # parameters); the head gets float32 parameters and returns the tower's dtype.
            params = {**params, "backbone": _cast_floating(params["backbone"], compute_dtype)} \
                if "backbone" in params else params
            a = a.astype(compute_dtype)
        variables = {"params": params}
        if use_bn:
            variables["batch_stats"] = stats
            if train:
                h, upd = tower.apply(variables, a, train=True, mutable=["batch_stats"])
                return h, upd["batch_stats"]
            return tower.apply(variables, a, train=False), stats
        return tower.apply(variables, a, train=train), stats
    return apply


def make_functions(config: ml_collections.ConfigDict) -> FinetuneFunctions:
    """Builds the modules and the jitted functions of :class:`FinetuneFunctions` for a config."""
    start = layer_index(config.trainable_from)
    use_bn = config.batch_norm == "update" and start < len(LAYERS)
    pdt = DTYPES[config.dtype]
    cdt = _compute_dtype(config)
    visual = VisualTower(start=start, hidden=tuple(config.visual_hidden), out_dim=int(config.out_dim),
                         activation=config.activation, batch_norm=use_bn, bn_momentum=float(config.bn_momentum),
                         bn_epsilon=float(config.bn_epsilon), param_dtype=pdt, compute_dtype=cdt)
    sem = ResidualCCATower(hidden=tuple(config.semantic_hidden), out_dim=int(config.out_dim),
                           activation=config.activation, param_dtype=pdt, dtype=cdt)
    prefix_mod = BackboneSegment(0, start, pool=start == len(LAYERS))
    loss_kw = dict(objective=config.objective, k=config.k, ridge_v=float(config.ridge_v),
                   ridge_s=float(config.ridge_s))
    apply_v = _apply_visual(visual, use_bn, cdt)

    @jax.jit
    def prefix(frozen, x):
        # In the compute dtype (the frozen prefix's output, the boundary, stays in it: half the memory in bf16).
        return prefix_mod.apply({"params": _cast_floating(frozen, cdt)}, x if cdt is None else x.astype(cdt))

    @jax.jit
    def embed_train(params_v, stats, a):
        return apply_v(params_v, stats, a, train=True)

    @jax.jit
    def embed_eval(params_v, stats, a):
        return apply_v(params_v, stats, a, train=False)[0]

    @jax.jit
    def pooled_eval(params_v, stats, a):
        if cdt is not None and "backbone" in params_v:
            params_v, a = {**params_v, "backbone": _cast_floating(params_v["backbone"], cdt)}, a.astype(cdt)
        variables = {"params": params_v, **({"batch_stats": stats} if use_bn else {})}
        return visual.apply(variables, a, train=False, method=VisualTower.pooled).astype(pdt)

    @jax.jit
    def semantic(params_s, y):
        return sem.apply({"params": params_s}, y)

    @jax.jit
    def loss_grads(h_v, params_s, y):
        def f(h, p):
            return cca_loss(h, sem.apply({"params": p}, y), **loss_kw)
        loss, (g_h, g_s) = jax.value_and_grad(f, argnums=(0, 1))(h_v, params_s)
        return loss, g_h, g_s

    @jax.jit
    def pullback(params_v, stats, a, g):
        _, vjp = jax.vjp(lambda p: apply_v(p, stats, a, train=True)[0], params_v)
        return vjp(g)[0]

    @jax.jit
    def apply_updates(state, grads, stats):
        return state.apply_gradients(grads=grads, batch_stats=stats)

    return FinetuneFunctions(visual, sem, prefix, embed_train, embed_eval, pooled_eval, semantic, loss_grads,
                             pullback, apply_updates)


@functools.lru_cache(maxsize=8)
def _cached_functions(config_json: str) -> FinetuneFunctions:
    return make_functions(ml_collections.ConfigDict(json.loads(config_json)))


@functools.lru_cache(maxsize=8)
def _cached_optimizer(config_json: str) -> optax.GradientTransformation:
    return make_optimizer(ml_collections.ConfigDict(json.loads(config_json)))


def functions_for(config: ml_collections.ConfigDict) -> FinetuneFunctions:
    """:func:`make_functions`, cached by the fields that define them (refits and seeds reuse the compilations)."""
    return _cached_functions(_fn_key(config))


_FN_FIELDS = ("trainable_from", "batch_norm", "bn_momentum", "bn_epsilon", "out_dim", "visual_hidden",
              "semantic_hidden", "activation", "objective", "k", "ridge_v", "ridge_s", "cnn_lr", "head_lr",
              "semantic_lr", "cnn_weight_decay", "weight_decay", "dtype", "compute_dtype")


def _fn_key(c: ml_collections.ConfigDict) -> str:
    d = json.loads(c.to_json())
    return json.dumps({f: d.get(f) for f in _FN_FIELDS}, sort_keys=True)


_add = jax.jit(lambda a, b: jax.tree_util.tree_map(jnp.add, a, b))


def accumulated_gradients(fns: FinetuneFunctions, params: dict, stats: Any, boundary: Sequence[jax.Array],
                          tags: jax.Array) -> tuple[jax.Array, dict, Any]:
    r"""Exact gradient of the correlation loss of a whole effective batch, one micro-batch in memory at a time.

    .. math::
        H_v = [f_v(a_1); \dots; f_v(a_m)],\quad L = \mathrm{cca\_loss}(H_v, f_s(Y)),\quad
        \nabla_{\theta_v} L = \sum_i J_{f_v}(a_i)^\top \frac{\partial L}{\partial H_{v,i}}

    Args:
      fns: :func:`make_functions`.
      params: ``{"visual": ..., "semantic": ...}``.
      stats: the visual tower's batch-norm statistics (``{}`` without BN).
      boundary: ``m`` micro-batches of frozen-prefix outputs ``a_i`` (``(b_i, ...)``; images when nothing is
        frozen, pooled features for a frozen CNN).
      tags: ``(sum b_i, d_s)`` semantic view of the effective batch, in the same order.

    Returns:
      ``(loss, grads like params, new_stats)``; ``new_stats`` are the running statistics after the first pass.
    """
    hs, new_stats = [], stats
    for a in boundary:
        h, new_stats = fns.embed_train(params["visual"], new_stats, a)
        hs.append(h)
    h_v = jnp.concatenate(hs, axis=0)
    if h_v.shape[0] != tags.shape[0]:
        raise ValueError(f"the micro-batches hold {h_v.shape[0]} images but tags has shape {tags.shape}.")
    loss, g_h, g_s = fns.loss_grads(h_v, params["semantic"], tags)
    g_v, lo = None, 0
    for a, h in zip(boundary, hs):
        g = fns.pullback(params["visual"], stats, a, g_h[lo:lo + h.shape[0]])
        g_v = g if g_v is None else _add(g_v, g)
        lo += h.shape[0]
    return loss, {"visual": g_v, "semantic": g_s}, new_stats


# ----------------------------------------------------------------------------------------------------------
# Batch-norm calibration ("update" mode)
# ----------------------------------------------------------------------------------------------------------

def calibrate_batch_norm(config: ml_collections.ConfigDict, backbone_params: dict,
                         boundary: Sequence[jax.Array]) -> tuple[dict, dict]:
    r"""BatchNorm parameters and statistics that leave the folded network's function unchanged.

    For every convolution output ``y`` of the trainable segment: ``mu = E[y]``, ``sigma^2 = Var[y]`` over all
    positions of the calibration images (``boundary``: their frozen-prefix outputs, evaluation view), and

    .. math:: \gamma = \sqrt{\sigma^2 + \epsilon},\quad \beta = \mu
        \quad\Rightarrow\quad \mathrm{BN}(y) = \gamma (y - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta = y

    with the running statistics set to ``(mu, sigma^2)``.

    Returns:
      ``(bn_params, batch_stats)``: trees to merge into the backbone's params (``.../bn/{scale,bias}``) and
      the ``batch_stats`` collection (``.../bn/{mean,var}``), both under the layer names.
    """
    start = layer_index(config.trainable_from)
    seg = BackboneSegment(start, len(LAYERS), pool=True)
    eps = float(config.bn_epsilon)

    @jax.jit
    def moments(p, a):
        _, inter = seg.apply({"params": p}, a, capture_intermediates=lambda m, n: m.name == "conv",
                             mutable=["intermediates"])
        flat = flax.traverse_util.flatten_dict(inter["intermediates"])
        out = {}
        for k, v in flat.items():
            y = v[0]
            out[k[:-2]] = (jnp.sum(y, axis=(0, 1, 2)), jnp.sum(jnp.square(y), axis=(0, 1, 2)),
                           jnp.asarray(y.shape[0] * y.shape[1] * y.shape[2], y.dtype))
        return out

    totals: dict = {}
    for a in boundary:
        for k, (s, s2, n) in jax.device_get(moments(backbone_params, a)).items():
            t = totals.setdefault(k, [0.0, 0.0, 0.0])
            t[0] = t[0] + np.asarray(s, np.float64)
            t[1] = t[1] + np.asarray(s2, np.float64)
            t[2] += float(n)
    bn_params, stats = {}, {}
    dt = jax.tree_util.tree_leaves(backbone_params)[0].dtype
    for k, (s, s2, n) in totals.items():
        mu = s / n
        var = np.maximum(s2 / n - mu * mu, 0.0)
        bn_params[k + ("bn",)] = {"scale": jnp.asarray(np.sqrt(var + eps), dt), "bias": jnp.asarray(mu, dt)}
        stats[k + ("bn",)] = {"mean": jnp.asarray(mu, dt), "var": jnp.asarray(var, dt)}
    unflat = lambda d: flax.traverse_util.unflatten_dict(
        {kk + (leaf,): v for kk, leaves in d.items() for leaf, v in leaves.items()})
    return unflat(bn_params), unflat(stats)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if k in out and isinstance(v, dict) else v
    return out


# ----------------------------------------------------------------------------------------------------------
# The fitted model
# ----------------------------------------------------------------------------------------------------------

class FinetunedDCCA:
    """A fitted end-to-end DCCA: frozen prefix, trained visual tower, semantic tower, final CCA (Eq. 8).

    ``transform(x_v=images, x_s=tags) -> (z_v, z_s)`` maps normalised images ``(n, size, size, 3)`` (or
    pooled features for a frozen CNN) and tag vectors ``(n, d_s)`` to the common space, so
    :func:`dcca_jax.tagging.recommend.recommend_from_model` works with it.  ``transform_boundary`` does the same
    from cached frozen-prefix outputs.
    """

    def __init__(self, config, fns: FinetuneFunctions, frozen: dict, params: dict, stats: Any, cca: CCAParams):
        self.config, self.fns, self.frozen = config, fns, frozen
        self.params, self.batch_stats, self.cca = params, stats, cca

    @property
    def correlations(self) -> jax.Array:
        return self.cca.correlations

    def boundary(self, x_v: jax.Array) -> jax.Array:
        """Frozen-prefix outputs of normalised images, in chunks of ``eval_batch``."""
        b = int(self.config.eval_batch)
        return jnp.concatenate([self.fns.prefix(self.frozen, jnp.asarray(x_v[i:i + b]))
                                for i in range(0, len(x_v), b)])

    def visual_outputs(self, boundary: jax.Array) -> jax.Array:
        """Visual tower outputs ``(n, out_dim)`` (before the final CCA) from frozen-prefix outputs."""
        b = int(self.config.eval_batch)
        return jnp.concatenate([self.fns.embed_eval(self.params["visual"], self.batch_stats, boundary[i:i + b])
                                for i in range(0, len(boundary), b)])

    def semantic_outputs(self, tags: jax.Array) -> jax.Array:
        return self.fns.semantic(self.params["semantic"], jnp.asarray(tags, DTYPES[self.config.dtype]))

    def refit_cca(self, boundary: jax.Array, tags: jax.Array) -> None:
        """Refit the final CCA (Eq. 8) on the tower outputs of these training images and tags."""
        self.cca = _final_cca(self.config, self.visual_outputs(boundary), self.semantic_outputs(tags))

    def transform_boundary(self, boundary=None, tags=None):
        h_v = None if boundary is None else self.visual_outputs(boundary)
        h_s = None if tags is None else self.semantic_outputs(tags)
        return project(self.cca, h_v, h_s)

    def transform(self, x_v=None, x_s=None):
        return self.transform_boundary(None if x_v is None else self.boundary(x_v), x_s)


def finetuned_backbone(model: FinetunedDCCA, pretrained: dict) -> dict:
    """The whole MobileNetV2 backbone of a fitted model: ``pretrained`` layers with the trained ones swapped in.

    The result is a params tree of :class:`dcca_jax.visual.mobilenet.MobileNetV2` without logits, for
    :func:`dcca_jax.visual.mobilenet.save_backbone_params` (the frozen pipeline's ``finetuned_checkpoint``).
    Only ``batch_norm="folded"`` models (a BatchNorm would need folding into the convolution) are supported.
    """
    if model.config.batch_norm == "update" and model.batch_stats:
        raise ValueError("exporting the backbone of a batch_norm='update' model is not supported (its BatchNorm "
                         "layers are not folded into the convolutions); fine-tune with batch_norm='folded'")
    out = {k: v for k, v in pretrained.items() if k != "Logits"}
    trained = model.params["visual"].get("backbone", {})
    unknown = sorted(set(trained) - set(out))
    if unknown:
        raise ValueError(f"trained layers {unknown[:3]} are not in the pretrained params (layers {sorted(out)[:3]}...)")
    out.update(jax.device_get(trained))
    return out


def _final_cca(config, h_v, h_s) -> CCAParams:
    return fit_linear_cca(h_v, h_s, n_components=int(config.out_dim), ridge_v=float(config.final_cca_ridge_v),
                          ridge_s=float(config.final_cca_ridge_s))


def validation_f1(config, model: FinetunedDCCA, fit_boundary, fit_tags, fit_labels, val_boundary, val_labels,
                  transfer: dict | None = None) -> tuple[dict, np.ndarray]:
    """Metrics of tag transfer for the validation images (items: the fit images, Eq. 8 CCA fitted on them).

    Returns:
      ``(metrics dict, validation scores (n_val, V))``.
    """
    t = dict(recommend.transfer_config()) | dict(transfer if transfer is not None else config.transfer)
    z_fit_v, z_fit_s = model.transform_boundary(fit_boundary, fit_tags)
    z_val, _ = model.transform_boundary(val_boundary)
    items = z_fit_v if t["against"] == "visual" else z_fit_s
    scores = recommend.transfer_scores(z_val, items, fit_labels, config=t, correlations=model.correlations)
    pred = recommend.recommend_indicator(scores, n=int(config.n_tags), prior=recommend.tag_prior(fit_labels),
                                         fill=t["fill"])
    return metrics.to_python(metrics.evaluate(pred, val_labels)), np.asarray(scores)


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------

def _validate(c) -> int:
    start = layer_index(c.trainable_from)
    if c.batch_norm not in BN_MODES:
        raise ValueError(f"batch_norm must be one of {BN_MODES}; got {c.batch_norm!r}.")
    if c.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}; got {c.objective!r}.")
    if c.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {c.dtype!r}.")
    if c.get("compute_dtype") is not None and c.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be None or one of {sorted(COMPUTE_DTYPES)}; got {c.compute_dtype!r}.")
    for k in ("cnn_lr", "head_lr", "semantic_lr"):
        if float(c[k]) < 0:
            raise ValueError(f"{k} must be >= 0; got {c[k]}.")
    if int(c.micro_batch) < 1 or int(c.accumulate) < 1:
        raise ValueError(f"micro_batch and accumulate must be >= 1; got {c.micro_batch}, {c.accumulate}.")
    eff = int(c.micro_batch) * int(c.accumulate)
    if eff <= int(c.out_dim):
        raise ValueError(
            f"the effective batch micro_batch * accumulate = {eff} must exceed out_dim={c.out_dim}: the batch "
            "covariance of the outputs would be singular. Raise accumulate (exact accumulation costs no extra "
            "memory) or lower out_dim.")
    if int(c.epochs) < 1:
        raise ValueError(f"epochs must be >= 1; got {c.epochs}.")
    return start


@dataclasses.dataclass
class FinetuneResult:
    """What :func:`fit_finetune` returns: the best model (by validation F1), history and timings."""

    model: FinetunedDCCA
    history: list[dict]
    best_epoch: int
    best_val: dict
    epoch_seconds: list[float]
    train_seconds: float
    fit_boundary: jax.Array
    val_boundary: jax.Array


def eval_boundary(fns: FinetuneFunctions, frozen: dict, images: DecodedImages, indices: Sequence[int], config,
                  *, num_workers: int = 1) -> jax.Array:
    """Frozen-prefix outputs of the evaluation views of ``images[indices]`` (computed once, kept)."""
    loader = BatchLoader(images, config.augment, batch_size=int(config.eval_batch), train=False,
                         num_workers=num_workers, prefetch=int(config.prefetch))
    return jnp.concatenate([fns.prefix(frozen, jnp.asarray(x, DTYPES[config.dtype]))
                            for x in loader.batches(indices)])


def fit_finetune(config: ml_collections.ConfigDict, *, backbone_params: dict, images: DecodedImages | None,
                 labels: np.ndarray, fit_idx: Sequence[int], val_idx: Sequence[int],
                 features: np.ndarray | None = None, workdir: str | pathlib.Path | None = None,
                 fit_boundary: jax.Array | None = None, val_boundary: jax.Array | None = None) -> FinetuneResult:
    """Train the end-to-end DCCA (module docstring) with early stopping on validation per-word F1.

    Args:
      config: :func:`finetune_config`.
      backbone_params: MobileNetV2 ``params`` (:func:`dcca_jax.visual.mobilenet.load_tflite_params`).
      images: decoded images (all of the dataset; indexed by ``fit_idx``/``val_idx``); unused and may be None
        with ``trainable_from="none"`` when ``features`` is given.
      labels: ``(n, V)`` 0/1 tags of the same images (the semantic view).
      fit_idx, val_idx: training and validation images.
      features: ``(n, 1280)`` pooled features (frozen CNN only), instead of computing them from ``images``.
      workdir: checkpoints and ``metrics.jsonl`` (restore-or-init); None: neither.
      fit_boundary, val_boundary: the frozen-prefix outputs of the evaluation views of the fit and validation
        images (:func:`eval_boundary`), when the caller has them already (several seeds share them).

    Returns:
      :class:`FinetuneResult`.

    Raises:
      NonFiniteLossError: the loss or the validation outputs became NaN/inf (with advice).
    """
    with limit_blas_threads(1):
        return _fit(config, backbone_params=backbone_params, images=images, labels=labels,
                    fit_idx=np.asarray(fit_idx), val_idx=np.asarray(val_idx), features=features, workdir=workdir,
                    fit_b=fit_boundary, val_b=val_boundary)


def _fit(c, *, backbone_params, images, labels, fit_idx, val_idx, features, workdir, fit_b, val_b) -> FinetuneResult:
    start = _validate(c)
    dt = DTYPES[c.dtype]
    fns = _cached_functions(_fn_key(c))
    cast = lambda t: jax.tree_util.tree_map(lambda x: jnp.asarray(x, dt), t)
    backbone_params = cast(backbone_params)
    frozen = slice_layers(backbone_params, 0, start)
    trainable_cnn = slice_layers(backbone_params, start, len(LAYERS))
    labels = np.asarray(labels)
    tags = jnp.asarray(labels, dt)
    frozen_cnn = start == len(LAYERS)
    if frozen_cnn and features is not None:
        feats = jnp.asarray(features, dt)
        boundary_of = lambda idx: feats[np.asarray(idx)]
    else:
        if images is None:
            raise ValueError("images are needed unless trainable_from='none' and features are given")
        boundary_of = None
    t_prep = time.time()
    for name, idx, b in (("fit", fit_idx, fit_b), ("val", val_idx, val_b)):
        if b is not None and b.shape[0] != len(idx):
            raise ValueError(f"{name}_boundary has {b.shape[0]} rows for {len(idx)} {name} images.")
    if fit_b is None:
        fit_b = boundary_of(fit_idx) if boundary_of else eval_boundary(fns, frozen, images, fit_idx, c,
                                                                       num_workers=int(c.num_workers))
    if val_b is None:
        val_b = boundary_of(val_idx) if boundary_of else eval_boundary(fns, frozen, images, val_idx, c,
                                                                       num_workers=int(c.num_workers))
    fit_b, val_b = jnp.asarray(fit_b, dt), jnp.asarray(val_b, dt)
    prep_seconds = time.time() - t_prep

    # ---- initial parameters: heads from a linear CCA of the pretrained features (FINDINGS.md)
    key = jax.random.key(int(c.seed))
    k_v, k_s = jax.random.split(key)
    stats: Any = {}
    cnn = trainable_cnn
    if c.batch_norm == "update" and not frozen_cnn:
        b = int(c.eval_batch)
        bn_p, bn_s = calibrate_batch_norm(c, trainable_cnn, [fit_b[i:i + b] for i in range(0, len(fit_b), b)])
        cnn = _merge(trainable_cnn, bn_p)
        stats = {"backbone": bn_s}
    head_init = fns.visual.head_module().init(k_v, jnp.zeros((1, NUM_FEATURES), dt))["params"]
    sem_init = fns.semantic_tower.init(k_s, jnp.zeros((1, labels.shape[1]), dt))["params"]
    visual_params = {"head": head_init}
    if not frozen_cnn:
        visual_params = {"backbone": cnn, "head": head_init}
    b = int(c.eval_batch)
    pooled = jnp.concatenate([fns.pooled_eval(visual_params, stats, fit_b[i:i + b]) for i in range(0, len(fit_b), b)])
    init = fit_linear_cca(pooled, tags[fit_idx], n_components=int(c.out_dim), ridge_v=float(c.cca_init_ridge_v),
                          ridge_s=float(c.cca_init_ridge_s))
    visual_params["head"] = init_from_cca(head_init, proj=init.proj_v, mean=init.mean_v)
    params = {"visual": visual_params, "semantic": init_from_cca(sem_init, proj=init.proj_s, mean=init.mean_s)}

    tx = _cached_optimizer(_fn_key(c))
    state = FinetuneTrainState.create(apply_fn=None, params=params, tx=tx, batch_stats=stats)
    state = state.replace(step=jnp.zeros((), jnp.int32))
    meta = {"best_f1": None, "best_epoch": -1, "best_step": 0, "bad_epochs": 0, "stopped": False,
            "epoch_seconds": [], "train_seconds": 0.0, "best_val": {}}
    best = jax.device_get((state.params, state.batch_stats))

    n_fit = len(fit_idx)
    mb, acc = int(c.micro_batch), int(c.accumulate)
    eff = mb * acc
    steps_per_epoch = n_fit // eff
    if steps_per_epoch < 1:
        raise ValueError(f"{n_fit} training images are fewer than one effective batch ({mb} x {acc} = {eff}).")
    total_steps = steps_per_epoch * int(c.epochs)

    workdir = None if workdir is None else pathlib.Path(workdir)
    ckpt, resume_step = None, None
    if workdir is not None:
        ckpt = Checkpoints(workdir, fingerprint=fingerprint(c, resumable=_RESUMABLE_FIELDS, optional=("compute_dtype",), n_fit=n_fit,
                                                            n_val=len(val_idx)),
                           keep=int(c.keep_checkpoints), job="fine-tuning job", resumable=_RESUMABLE_FIELDS)
        tree, meta, resume_step = ckpt.restore_or_init(_tree(state, best), meta)
        if resume_step is not None:
            s = tree["state"]
            state = state.replace(params=s["params"], opt_state=s["opt_state"], step=s["step"],
                                  batch_stats=s["batch_stats"])
            best = (tree["best"]["params"], tree["best"]["batch_stats"])
    # Early stopping on validation per-word F1; best_step of the stopper is the best *epoch* (-1: the start).
    stopper = EarlyStopping(patience=int(c.patience), best=meta["best_f1"], best_step=meta["best_epoch"],
                            bad_epochs=meta["bad_epochs"], stopped=meta["stopped"])
    writer = MetricsWriter(None if workdir is None else workdir / METRICS_FILE, resume_step=resume_step or 0,
                           name="finetune")
    loader = None if frozen_cnn else BatchLoader(images, c.augment, batch_size=mb, train=True, seed=int(c.seed),
                                                  num_workers=int(c.num_workers), prefetch=int(c.prefetch))
    seconds_before = float(meta["train_seconds"])
    t0 = time.time()
    advice = _nonfinite_advice(c)

    def save(step):
        meta.update(train_seconds=seconds_before + time.time() - t0, best_f1=stopper.best,
                     best_epoch=stopper.best_step, bad_epochs=stopper.bad_epochs, stopped=stopper.stopped)
        if ckpt is not None:
            ckpt.save(step, _tree(state, best), meta)

    def model_of(p, s):
        return FinetunedDCCA(c, fns, frozen, p, s, init)

    def evaluate(params_, stats_):
        model = model_of(params_, stats_)
        model.refit_cca(fit_b, tags[fit_idx])
        val_m, _ = validation_f1(c, model, fit_b, tags[fit_idx], labels[fit_idx], val_b, labels[val_idx])
        f1 = val_m["per_word/F1"] if bool(jnp.all(jnp.isfinite(model.cca.proj_v))) else math.nan
        check_finite(f1, what="validation output", step=step, epoch=epoch, advice=advice, workdir=workdir)
        return val_m

    step = int(state.step)
    epoch = -1
    if stopper.best is None:
        # The starting point (linear CCA of the pretrained features) is a candidate too: training is kept only
        # where it improves validation F1.
        val_m = evaluate(state.params, state.batch_stats)
        stopper.update(val_m["per_word/F1"], step=-1)
        meta.update(best_f1=stopper.best, best_epoch=-1, best_step=0, best_val=val_m)
        writer.write({"kind": "epoch", "step": 0, "epoch": -1, "val_f1": val_m["per_word/F1"],
                      "val_n_plus": val_m["per_word/N+"], "val_af": val_m["per_image/AF"],
                      "best_f1": meta["best_f1"], "epoch_s": 0.0, "elapsed_s": 0.0})
    try:
        while step < total_steps and not stopper.stopped:
            epoch = step // steps_per_epoch
            t_epoch = time.time()
            perm = np.random.default_rng([int(c.seed), epoch]).permutation(n_fit)[:steps_per_epoch * eff]
            order = np.asarray(fit_idx)[perm]
            i0 = step - epoch * steps_per_epoch
            if frozen_cnn:
                micro = (fit_b[perm[j:j + mb]] for j in range(i0 * eff, len(order), mb))
            else:
                micro = (fns.prefix(frozen, jnp.asarray(x, dt))
                         for x in loader.batches(order, epoch=epoch, start_batch=i0 * acc))
            for i in range(i0, steps_per_epoch):
                bnd = [next(micro) for _ in range(acc)]
                y = tags[order[i * eff:(i + 1) * eff]]
                loss, grads, new_stats = accumulated_gradients(fns, state.params, state.batch_stats, bnd, y)
                state = fns.apply_updates(state, grads, new_stats)
                step += 1
                loss = check_finite(loss, what="loss", step=step, epoch=epoch, advice=advice, workdir=workdir)
                writer.write({"kind": "step", "step": step, "epoch": epoch, "loss": loss,
                              "grad_norm": float(optax.tree.norm(grads))}, log=step % max(1, int(c.log_every)) == 0)
                if c.checkpoint_every and step % int(c.checkpoint_every) == 0 and i + 1 < steps_per_epoch:
                    save(step)
            # ---- end of epoch: validation F1 of tag transfer in the common space, early stopping
            val_m = evaluate(state.params, state.batch_stats)
            f1 = val_m["per_word/F1"]
            if stopper.update(f1, step=epoch):
                meta.update(best_step=step, best_val=val_m)
                best = jax.device_get((state.params, state.batch_stats))
            meta["epoch_seconds"].append(time.time() - t_epoch)
            writer.write({"kind": "epoch", "step": step, "epoch": epoch, "val_f1": f1,
                          "val_n_plus": val_m["per_word/N+"], "val_af": val_m["per_image/AF"],
                          "best_f1": stopper.best, "epoch_s": meta["epoch_seconds"][-1],
                          "elapsed_s": seconds_before + time.time() - t0})
            save(step)
    finally:
        if ckpt is not None:
            ckpt.close()

    best_params, best_stats = jax.tree_util.tree_map(jnp.asarray, best)
    model = model_of(best_params, best_stats)
    model.refit_cca(fit_b, tags[fit_idx])
    train_seconds = seconds_before + time.time() - t0
    logging.info("finetune: best validation per-word F1 %.4f at epoch %d (prep %.1f s, train %.1f s)",
                 stopper.best, stopper.best_step, prep_seconds, train_seconds)
    return FinetuneResult(model, writer.history, int(stopper.best_step), meta["best_val"],
                          list(meta["epoch_seconds"]), train_seconds, fit_b, val_b)


def _nonfinite_advice(c) -> str:
    return (f"the tower outputs' covariance became singular or the updates diverged. Lower cnn_lr/head_lr (now "
            f"{c.cnn_lr}/{c.head_lr}), raise the loss ridges ridge_v/ridge_s (now {c.ridge_v}/{c.ridge_s}), or raise "
            f"the effective batch micro_batch x accumulate (now {c.micro_batch} x {c.accumulate}, out_dim "
            f"{c.out_dim}).")


def _tree(state, best):
    """The checkpointed pytree: the train state and the best-so-far parameters (the layout of existing workdirs)."""
    return {"state": {"params": state.params, "opt_state": state.opt_state, "step": state.step,
                      "batch_stats": state.batch_stats},
            "best": {"params": best[0], "batch_stats": best[1]}}
