"""Auto-encoder that compresses the CNN feature (4096-d or 1280-d) to the visual code (300-d by default).

Section 2 of the paper: "the deep visual features are ... reduced by an auto-encoder", claimed to keep most
of the information with 93% fewer dimensions. The encoder is an MLP ``d -> hidden... -> code_dim`` (linear
code layer), the decoder mirrors it back to ``d`` (linear output). Inputs are centred with the training
mean and divided by one global scale (the root mean per-dimension variance), so the training loss is the
raw squared error up to a constant and the comparison with PCA (which minimises the same raw error) is fair.
``normalise="per_feature"`` standardises each dimension instead.

Training: Adam(W) on minibatches (optax), a held-out split of the training rows for early stopping on
reconstruction error, orbax checkpoints with restore-or-init (a rerun in the same workdir resumes at the
last saved epoch and, because shuffles depend only on (seed, epoch), ends with the same parameters as an
uninterrupted run), a JSON-lines metrics file, absl logging, and an error on a non-finite loss.

Figures (:func:`reconstruction_metrics`): mean squared error per entry and the fraction of variance
retained ``1 - SSE / SST`` on held-out rows, ``SST`` measured about the training mean.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from dcca_jax._io import atomic_save_npz, atomic_write_json
from dcca_jax.linalg import principal_axes  # noqa: F401  (ae.principal_axes: its home until it served PCA too)
from dcca_jax.training import METRICS_FILE, Checkpoints, EarlyStopping, MetricsWriter, check_finite, fingerprint

ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh, "sigmoid": nn.sigmoid, "gelu": nn.gelu, "elu": nn.elu,
               "softplus": nn.softplus}
ARCHITECTURES = ("mlp", "pca_residual")
# Config fields that may change between a run and its resumption (to train longer).
_RESUMABLE_FIELDS = ("max_epochs", "patience", "checkpoint_every")


def autoencoder_config() -> ml_collections.ConfigDict:
    """Auto-encoder hyperparameters (defaults: 1280/4096 -> 1024 -> 300 -> 1024 -> d, ReLU)."""
    c = ml_collections.ConfigDict()
    c.hidden_sizes = (1024,)
    c.code_dim = 300
    c.activation = "relu"
    # "mlp": plain encoder/decoder. "pca_residual": a linear path initialised at the top code_dim principal
    # axes of the training data plus the MLP, whose last layers start at zero, so training starts exactly
    # at PCA and early stopping keeps the nonlinear part only where held-out error improves.
    c.architecture = "mlp"
    c.normalise = "global"  # "global" (centre + one scale) or "per_feature" (z-scores)
    c.learning_rate = 1e-3
    c.weight_decay = 0.0
    c.batch_size = 128
    c.max_epochs = 200
    c.patience = 15
    c.min_delta = 1e-5  # relative improvement in validation loss that resets the patience counter
    c.validation_fraction = 0.1
    c.checkpoint_every = 5
    c.seed = 0
    c.dtype = "float32"
    return c


class AutoEncoder(nn.Module):
    """MLP auto-encoder with a linear code layer and a mirrored decoder.

    Attributes:
        input_dim: ``d``.
        hidden_sizes: encoder hidden widths (the decoder uses them reversed).
        code_dim: width of the code.
        activation: key of :data:`ACTIVATIONS`.
    """

    input_dim: int
    hidden_sizes: Sequence[int] = (1024,)
    code_dim: int = 300
    activation: str = "relu"
    architecture: str = "mlp"

    def setup(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; choose one of {ARCHITECTURES}")
        residual = self.architecture == "pca_residual"
        last_init = nn.initializers.zeros if residual else nn.initializers.lecun_normal()
        self.enc = [nn.Dense(h, name=f"enc_{i}") for i, h in enumerate(self.hidden_sizes)]
        self.code = nn.Dense(self.code_dim, kernel_init=last_init, name="code")
        self.dec = [nn.Dense(h, name=f"dec_{i}") for i, h in enumerate(reversed(self.hidden_sizes))]
        self.out = nn.Dense(self.input_dim, kernel_init=last_init, name="out")
        if residual:
            self.linear_enc = nn.Dense(self.code_dim, use_bias=False, name="linear_enc")
            self.linear_dec = nn.Dense(self.input_dim, use_bias=False, name="linear_dec")

    def encode(self, x):
        """``(n, d) -> (n, code_dim)``."""
        act = ACTIVATIONS[self.activation]
        h = x
        for layer in self.enc:
            h = act(layer(h))
        z = self.code(h)
        return z + self.linear_enc(x) if self.architecture == "pca_residual" else z

    def decode(self, z):
        """``(n, code_dim) -> (n, d)``."""
        act = ACTIVATIONS[self.activation]
        h = z
        for layer in self.dec:
            h = act(layer(h))
        x = self.out(h)
        return x + self.linear_dec(z) if self.architecture == "pca_residual" else x

    def __call__(self, x, *, train: bool = False):
        """``(n, d) -> (reconstruction (n, d), code (n, code_dim))``."""
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"AutoEncoder expects inputs of width {self.input_dim}, got shape {x.shape}")
        z = self.encode(x)
        return self.decode(z), z


@dataclasses.dataclass
class TrainedAutoEncoder:
    """A fitted auto-encoder with its input normalisation.

    Attributes:
        config: the hyperparameters it was trained with.
        params: Flax parameters.
        mean: ``(d,)`` training mean.
        scale: ``(d,)`` divisor applied after centring.
        history: per-epoch ``{"epoch", "train_loss", "val_loss"}``.
        best_epoch: the epoch whose parameters were kept.
    """

    config: ml_collections.ConfigDict
    params: Any
    mean: np.ndarray
    scale: np.ndarray
    history: list[dict]
    best_epoch: int

    @property
    def module(self) -> AutoEncoder:
        return AutoEncoder(input_dim=int(self.mean.shape[0]), hidden_sizes=tuple(self.config.hidden_sizes),
                           code_dim=self.config.code_dim, activation=self.config.activation,
                           architecture=self.config.get("architecture", "mlp"))

    def encode(self, x) -> jax.Array:
        """Codes of raw features ``(n, d) -> (n, code_dim)``."""
        x = self._check(x)
        return _apply_encode(self.module, self.params, (x - self.mean) / self.scale)

    def reconstruct(self, x) -> jax.Array:
        """Reconstruction of raw features, in raw units ``(n, d) -> (n, d)``."""
        x = self._check(x)
        rec, _ = _apply(self.module, self.params, (x - self.mean) / self.scale)
        return rec * self.scale + self.mean

    def _check(self, x):
        x = jnp.asarray(x, jnp.dtype(self.config.dtype))
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected features of shape (n, {self.mean.shape[0]}), got {x.shape}")
        return x

    def save(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` and ``arrays.npz`` (no pickle) into directory ``path``."""
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        flat = {"/".join(str(getattr(k, "key", k)) for k in kp): np.asarray(v)
                for kp, v in jax.tree_util.tree_flatten_with_path(self.params)[0]}
        arrays = {f"params/{k}": v for k, v in flat.items()}
        arrays.update(mean=self.mean, scale=self.scale)
        atomic_save_npz(os.path.join(path, "arrays.npz"), **arrays)
        meta = {"config": self.config.to_dict(), "history": self.history, "best_epoch": self.best_epoch}
        meta["config"]["hidden_sizes"] = list(self.config.hidden_sizes)
        atomic_write_json(os.path.join(path, "config.json"), meta, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainedAutoEncoder":
        """Inverse of :meth:`save`."""
        path = os.fspath(path)
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            meta = json.load(f)
        meta["config"]["hidden_sizes"] = tuple(meta["config"]["hidden_sizes"])
        config = ml_collections.ConfigDict(meta["config"])
        params: dict = {}
        with np.load(os.path.join(path, "arrays.npz"), allow_pickle=False) as z:
            mean, scale = z["mean"], z["scale"]
            for k in z.files:
                if k.startswith("params/"):
                    node = params
                    *parents, leaf = k.split("/")[1:]
                    for p in parents:
                        node = node.setdefault(p, {})
                    node[leaf] = jnp.asarray(z[k])
        return cls(config, params, mean, scale, meta["history"], meta["best_epoch"])


def _apply(module, params, x):
    return module.apply({"params": params}, x)


def _apply_encode(module, params, x):
    return module.apply({"params": params}, x, method=AutoEncoder.encode)


def reconstruction_metrics(x, x_hat, *, mean) -> dict[str, float]:
    r"""Reconstruction error and fraction of variance retained.

    .. math::
        \mathrm{MSE} = \frac{1}{n d} \sum_{i,j} (x_{ij} - \hat x_{ij})^2, \qquad
        \mathrm{retained} = 1 - \frac{\sum_{i,j} (x_{ij} - \hat x_{ij})^2}{\sum_{i,j} (x_{ij} - \mu_j)^2}

    Args:
        x: ``(n, d)`` held-out features.
        x_hat: ``(n, d)`` their reconstructions.
        mean: ``(d,)`` the training mean (the baseline that retains nothing).

    Returns:
        ``{"mse", "variance_retained", "sse", "sst"}``.
    """
    x, x_hat, mean = np.asarray(x, np.float64), np.asarray(x_hat, np.float64), np.asarray(mean, np.float64)
    if x.shape != x_hat.shape or x.ndim != 2 or mean.shape != (x.shape[1],):
        raise ValueError(f"shapes do not match: x {x.shape}, x_hat {x_hat.shape}, mean {mean.shape}")
    sse = float(np.sum((x - x_hat) ** 2))
    sst = float(np.sum((x - mean) ** 2))
    return {"mse": sse / x.size, "variance_retained": 1.0 - sse / sst, "sse": sse, "sst": sst}


def pca_reconstruction(x_train, x_eval, *, n_components: int) -> np.ndarray:
    """Reconstruction of ``x_eval`` from the top ``n_components`` principal axes of ``x_train``.

    Args:
        x_train: ``(n, d)`` rows that define the mean and axes.
        x_eval: ``(m, d)`` rows to reconstruct.
        n_components: ``k``.

    Returns:
        ``(m, d)`` reconstruction ``mu + (x - mu) V_k V_k^T``.
    """
    x_train, x_eval = np.asarray(x_train, np.float64), np.asarray(x_eval, np.float64)
    mu = x_train.mean(0)
    v = principal_axes(x_train - mu, n_components=n_components).T
    return mu + (x_eval - mu) @ v @ v.T


class TrainState(train_state.TrainState):
    pass


def _loss(params, apply_fn, x):
    rec, _ = apply_fn({"params": params}, x)
    return jnp.mean(jnp.square(rec - x)), rec


def train_step(state: TrainState, batch: jax.Array, rng: jax.Array) -> tuple[TrainState, dict]:
    """One Adam step on the mean squared reconstruction error of ``batch`` (``(b, d)``, normalised).

    ``rng`` is unused (the model has no dropout) and kept for the common training signature.
    """
    del rng
    (loss, _), grads = jax.value_and_grad(_loss, has_aux=True)(state.params, state.apply_fn, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


@jax.jit
def _train_epoch(state: TrainState, x: jax.Array, perm: jax.Array, rng: jax.Array):
    """All full minibatches of one epoch (``perm``: ``(n_batches, batch)`` row indices) under one scan."""

    def body(s, idx):
        s, m = train_step(s, x[idx], rng)
        return s, m["loss"]

    state, losses = jax.lax.scan(body, state, perm)
    return state, jnp.mean(losses)


@functools.lru_cache(maxsize=16)
def _build(d, hidden_sizes, code_dim, activation, learning_rate, weight_decay, architecture):
    """Module, optimiser and jitted evaluation, shared by fits with equal settings (so XLA compiles once)."""
    module = AutoEncoder(input_dim=d, hidden_sizes=hidden_sizes, code_dim=code_dim, activation=activation,
                         architecture=architecture)
    tx = optax.adamw(learning_rate, weight_decay=weight_decay) if weight_decay else optax.adam(learning_rate)
    eval_loss = jax.jit(lambda p, x: _loss(p, module.apply, x)[0])
    return module, tx, eval_loss


def _normaliser(x: np.ndarray, mode: str):
    mean = x.mean(0)
    if mode == "global":
        scale = np.full(x.shape[1], np.sqrt(np.mean(np.var(x, axis=0))) or 1.0)
    elif mode == "per_feature":
        sd = x.std(0)
        scale = np.where(sd > 0, sd, 1.0)
    else:
        raise ValueError(f"unknown normalise mode {mode!r}; choose 'global' or 'per_feature'")
    return mean, scale


def fit_autoencoder(x_train, *, config: ml_collections.ConfigDict | None = None, workdir: str | None = None,
                    x_val=None) -> TrainedAutoEncoder:
    """Train an auto-encoder with early stopping on held-out reconstruction error.

    Args:
        x_train: ``(n, d)`` features.
        config: :func:`autoencoder_config` fields.
        workdir: where to keep orbax checkpoints (``workdir/checkpoints``) and ``metrics.jsonl``; a rerun with
            the same workdir resumes. None trains in memory.
        x_val: ``(m, d)`` early-stopping rows; default: a random ``validation_fraction`` of ``x_train`` (those
            rows are then not trained on).

    Returns:
        A :class:`TrainedAutoEncoder` holding the parameters of the best validation epoch.

    Raises:
        dcca_jax.training.NonFiniteLossError: the training loss became non-finite (a ``FloatingPointError``).
    """
    config = autoencoder_config() if config is None else config
    dtype = jnp.dtype(config.dtype)
    x_train = np.asarray(x_train, np.float64)
    if x_train.ndim != 2 or not np.all(np.isfinite(x_train)):
        raise ValueError(f"x_train must be a finite (n, d) array, got shape {x_train.shape} "
                         f"(drop the rows of images that failed to decode)")
    rng = jax.random.key(config.seed)
    if x_val is None:
        # Drawn with jax.random, not dcca_jax.training.validation_split: existing workdirs (and the tests'
        # exact-resume runs) were trained on these rows, and a resumed run must see the same ones.
        n_val = max(1, int(round(config.validation_fraction * len(x_train))))
        order = np.asarray(jax.random.permutation(jax.random.fold_in(rng, 10**6), len(x_train)))
        x_val, x_train = x_train[order[:n_val]], x_train[order[n_val:]]
    x_val = np.asarray(x_val, np.float64)
    if x_val.ndim != 2 or x_val.shape[1] != x_train.shape[1]:
        raise ValueError(f"x_val shape {x_val.shape} does not match x_train shape {x_train.shape}")
    n, d = x_train.shape
    bs = min(config.batch_size, n)
    mean, scale = _normaliser(x_train, config.normalise)
    xt = jnp.asarray((x_train - mean) / scale, dtype)
    xv = jnp.asarray((x_val - mean) / scale, dtype)

    architecture = config.get("architecture", "mlp")
    module, tx, eval_loss = _build(d, tuple(config.hidden_sizes), config.code_dim, config.activation,
                                  float(config.learning_rate), float(config.weight_decay), architecture)
    params = module.init(jax.random.fold_in(rng, 0), xt[:1])["params"]
    if architecture == "pca_residual":
        if config.code_dim > min(n, d):
            raise ValueError(f"code_dim {config.code_dim} exceeds min(n, d) = {min(n, d)}: PCA cannot provide "
                             "that many axes")
        axes = principal_axes(np.asarray(xt, np.float64), n_components=config.code_dim)  # xt is centred
        params = {**params, "linear_enc": {"kernel": jnp.asarray(axes.T)},
                  "linear_dec": {"kernel": jnp.asarray(axes)}}
    params = jax.tree_util.tree_map(lambda p: p.astype(dtype), params)
    state = TrainState.create(apply_fn=module.apply, params=params, tx=tx)
    # Epoch 0 is a candidate too: for "pca_residual" it is exactly PCA, which training must beat to count.
    meta = {"best_val": float(eval_loss(state.params, xv)), "best_epoch": 0, "bad_epochs": 0, "history": []}
    best_params = state.params

    ckpt, start_epoch = None, 0
    if workdir is not None:
        # max_epochs and patience may change between runs (to train longer); the rest must not.
        ckpt = Checkpoints(workdir, fingerprint=fingerprint(config, resumable=_RESUMABLE_FIELDS, n_train=n,
                                                            n_val=len(x_val), d=d),
                           keep=2, tree_item="state", job="auto-encoder job", resumable=_RESUMABLE_FIELDS,
                           legacy_fingerprint=_legacy_fingerprint)
        tree = {"params": state.params, "opt_state": state.opt_state, "step": state.step, "best_params": best_params}
        tree, meta, resumed = ckpt.restore_or_init(tree, meta)
        if resumed is not None:
            state = state.replace(params=tree["params"], opt_state=tree["opt_state"], step=tree["step"])
            best_params, start_epoch = tree["best_params"], resumed
    stopper = EarlyStopping(patience=int(config.patience), mode="min", min_delta=float(config.min_delta),
                            best=meta["best_val"], best_step=meta["best_epoch"], bad_epochs=meta["bad_epochs"])
    history = meta["history"]
    writer = MetricsWriter(None if workdir is None else os.path.join(workdir, METRICS_FILE),
                           resume_step=start_epoch, name="auto-encoder")

    n_batches = n // bs
    epoch = start_epoch
    while epoch < config.max_epochs and not stopper.stopped:
        epoch += 1
        erng = jax.random.fold_in(rng, epoch)
        perm = jax.random.permutation(erng, n)[: n_batches * bs].reshape(n_batches, bs)
        state, train_loss = _train_epoch(state, xt, perm, erng)
        train_loss = check_finite(train_loss, what="auto-encoder training loss", step=int(state.step), epoch=epoch,
                                  advice=f"lower learning_rate (now {config.learning_rate}) or use "
                                         "normalise='per_feature'.", workdir=workdir)
        val_loss = float(eval_loss(state.params, xv))
        if stopper.update(val_loss, step=epoch):
            best_params = state.params
        rec = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "best_val": stopper.best}
        history.append(rec)
        writer.write({"kind": "epoch", "step": epoch, **rec})
        if ckpt is not None and (epoch % config.checkpoint_every == 0 or stopper.stopped or epoch == config.max_epochs):
            meta = {"best_val": stopper.best, "best_epoch": stopper.best_step, "bad_epochs": stopper.bad_epochs,
                    "history": history}
            ckpt.save(epoch, {"params": state.params, "opt_state": state.opt_state, "step": state.step,
                              "best_params": best_params}, meta)
    if ckpt is not None:
        ckpt.close()
    if stopper.stopped:
        logging.info("auto-encoder: early stop at epoch %d, keeping epoch %d (val %.6g)", epoch, stopper.best_step,
                     stopper.best)
    best_params = jax.tree_util.tree_map(np.asarray, best_params)
    return TrainedAutoEncoder(config=config, params=best_params, mean=mean.astype(dtype), scale=scale.astype(dtype),
                              history=history, best_epoch=stopper.best_step)


def _legacy_fingerprint(workdir: pathlib.Path) -> dict | None:
    """The fingerprint of a workdir written before it moved into the checkpoint metadata (``job.json``)."""
    path = pathlib.Path(workdir) / "job.json"
    if not path.exists():
        return None
    job = json.loads(path.read_text(encoding="utf-8"))
    job["config"] = {k: v for k, v in job["config"].items() if k not in _RESUMABLE_FIELDS}
    return job

