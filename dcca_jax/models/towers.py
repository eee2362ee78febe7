r"""The two DCCA networks (Eq. 3): multilayer perceptrons mapping each view to an ``o``-dim output.

.. math::
    h^{(1)} = s(W^{(1)} x + b^{(1)}),\quad h^{(l)} = s(W^{(l)} h^{(l-1)} + b^{(l)}),\quad
    f(x) = W^{(L)} h^{(L-1)} + b^{(L)}

with ``s`` the activation (the paper uses the sigmoid). The output layer is linear, as in Andrew et
al. 2013: the correlation objective is invariant to affine maps of the outputs, so a squashing output
layer would only limit what the network can express.

Two tower kinds:

- :class:`Tower`: the plain MLP of Eq. 3, optionally with batch norm and dropout after each hidden
  layer (both off by default).
- :class:`ResidualCCATower`: ``f(x) = x W_cca + b_cca + mlp(x)``, where the linear map is set from a
  linear CCA fit of the raw views (:func:`init_from_cca`) and the MLP's last layer starts at zero, so
  training starts *at* linear CCA and can only move away from it where the objective improves. On
  Corel5k this was what kept DCCA from ending up below linear CCA (FINDINGS.md).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = [
    "ACTIVATIONS",
    "Tower",
    "ResidualCCATower",
    "make_tower",
    "init_from_cca",
    "count_params",
    "tower_param_count",
    "tower_forward_flops",
]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "identity": lambda x: x,
}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {name!r}.")
    return ACTIVATIONS[name]


class _MLP(nn.Module):
    """Hidden layers (Dense -> [BatchNorm] -> activation -> [Dropout]) then a linear output layer."""

    hidden: Sequence[int]
    out_dim: int
    activation: str = "sigmoid"
    batch_norm: bool = False
    dropout: float = 0.0
    zero_init_output: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        act = _activation(self.activation)
        for i, width in enumerate(self.hidden):
            x = nn.Dense(int(width), dtype=self.dtype, param_dtype=self.param_dtype, name=f"dense_{i}")(x)
            if self.batch_norm:
                x = nn.BatchNorm(
                    use_running_average=not train, momentum=0.9, dtype=self.dtype,
                    param_dtype=self.param_dtype, name=f"bn_{i}",
                )(x)
            x = act(x)
            if self.dropout > 0:
                x = nn.Dropout(rate=self.dropout, deterministic=not train)(x)
        zeros = nn.initializers.zeros
        kinit = zeros if self.zero_init_output else nn.linear.default_kernel_init
        return nn.Dense(
            self.out_dim, kernel_init=kinit, bias_init=zeros, dtype=self.dtype,
            param_dtype=self.param_dtype, name="output",
        )(x)


def _check_sizes(hidden, out_dim, dropout):
    if int(out_dim) < 1:
        raise ValueError(f"out_dim must be a positive integer; got {out_dim!r}.")
    bad = [h for h in hidden if int(h) < 1]
    if bad:
        raise ValueError(f"hidden sizes must be positive integers; got {tuple(hidden)!r}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}.")


class Tower(nn.Module):
    r"""One DCCA network (Eq. 3): ``len(hidden)`` nonlinear layers and a linear ``out_dim`` output.

    Attributes:
      hidden: widths of the hidden layers, e.g. ``(1024, 1024)``; ``()`` gives a linear map.
      out_dim: the output dimension ``o`` (``o_v`` or ``o_s`` in the paper).
      activation: ``"sigmoid"`` (the paper), ``"tanh"``, ``"relu"``, ``"gelu"`` or ``"identity"``.
      batch_norm: batch normalisation after each hidden affine map (running statistics in the
        ``batch_stats`` collection; ``train=True`` updates them).
      dropout: dropout rate after each hidden activation (needs a ``"dropout"`` rng when training).
      dtype, param_dtype: computation and parameter dtypes. ``dtype=jnp.bfloat16`` (mixed precision)
        runs the matrix products in bf16 with float32 parameters and returns the output in
        ``param_dtype``, so the covariances and the objective downstream stay float32.

    Call: ``tower.apply(variables, x, train=False)`` with ``x`` of shape ``(n, d)``; returns ``(n, o)``.
    """

    hidden: Sequence[int]
    out_dim: int
    activation: str = "sigmoid"
    batch_norm: bool = False
    dropout: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        _check_sizes(self.hidden, self.out_dim, self.dropout)
        out = _MLP(
            self.hidden, self.out_dim, self.activation, self.batch_norm, self.dropout, False,
            self.dtype, self.param_dtype, name="mlp",
        )(x, train=train)
        return _output(out, self.dtype, self.param_dtype)


class ResidualCCATower(nn.Module):
    r"""A linear CCA map plus a residual MLP: :math:`f(x) = x W + b + \mathrm{mlp}(x)`.

    The MLP's output layer is initialised at zero, so at initialisation the tower is exactly the
    affine map ``x W + b``; :func:`init_from_cca` sets ``W, b`` to a linear CCA solution (``W = P``,
    ``b = -mean P``), so training starts from linear CCA's correlations.

    Attributes: as :class:`Tower`.
    """

    hidden: Sequence[int]
    out_dim: int
    activation: str = "sigmoid"
    batch_norm: bool = False
    dropout: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        _check_sizes(self.hidden, self.out_dim, self.dropout)
        linear = nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="linear")(x)
        residual = _MLP(
            self.hidden, self.out_dim, self.activation, self.batch_norm, self.dropout, True,
            self.dtype, self.param_dtype, name="mlp",
        )(x, train=train)
        return _output(linear + residual, self.dtype, self.param_dtype)


def _output(out: jax.Array, dtype, param_dtype) -> jax.Array:
    # A reduced compute dtype (bf16) stops at the tower's output: Eq. 4's covariances, the whitening and
    # the objective need at least the parameters' precision.
    if dtype is None or jnp.dtype(dtype) == jnp.dtype(param_dtype):
        return out
    return out.astype(jnp.promote_types(dtype, param_dtype))


def make_tower(
    *,
    hidden: Sequence[int],
    out_dim: int,
    activation: str = "sigmoid",
    batch_norm: bool = False,
    dropout: float = 0.0,
    residual_cca: bool = False,
    param_dtype: Any = jnp.float32,
    compute_dtype: Any = None,
) -> nn.Module:
    """Builds a :class:`Tower` or (``residual_cca=True``) a :class:`ResidualCCATower`; validates sizes.

    ``compute_dtype`` (e.g. ``jnp.bfloat16``) is the dtype of the matrix products; None computes in the
    inputs' and parameters' dtype. Parameters stay ``param_dtype`` and the output is returned in it.
    """
    _check_sizes(hidden, out_dim, dropout)
    _activation(activation)
    cls = ResidualCCATower if residual_cca else Tower
    return cls(
        hidden=tuple(int(h) for h in hidden), out_dim=int(out_dim), activation=activation,
        batch_norm=bool(batch_norm), dropout=float(dropout), param_dtype=param_dtype, dtype=compute_dtype,
    )


def init_from_cca(params: dict, *, proj: ArrayLike, mean: ArrayLike) -> dict:
    r"""Returns ``params`` of a :class:`ResidualCCATower` with its linear map set from a CCA fit.

    .. math:: W_{:, :k} = P, \qquad b_{:k} = -\bar x P

    so the tower's first ``k`` outputs are the canonical variates ``(x - mean) P`` (Eq. 8) at
    initialisation. When ``out_dim > k`` the remaining columns keep their random initialisation.

    Args:
      params: the tower's ``params`` collection (as returned by ``init(...)["params"]``).
      proj: ``(d, k)`` CCA projection of this view (``CCAParams.proj_v`` or ``proj_s``), ``k <= out_dim``.
      mean: ``(d,)`` the view's training mean.

    Returns:
      A new params dict (the input is not modified).
    """
    if "linear" not in params:
        raise ValueError("init_from_cca needs the params of a ResidualCCATower (no 'linear' layer found).")
    kernel = params["linear"]["kernel"]
    bias = params["linear"]["bias"]
    proj = jnp.asarray(proj, kernel.dtype)
    mean = jnp.asarray(mean, kernel.dtype)
    d, o = kernel.shape
    if proj.ndim != 2 or proj.shape[0] != d or proj.shape[1] > o:
        raise ValueError(
            f"proj must have shape (d={d}, k<={o}) to initialise a linear layer of shape {kernel.shape}; "
            f"got {proj.shape}."
        )
    if mean.shape != (d,):
        raise ValueError(f"mean must have shape ({d},); got {mean.shape}.")
    k = proj.shape[1]
    new_linear = {"kernel": kernel.at[:, :k].set(proj), "bias": bias.at[:k].set(-(mean @ proj))}
    return {**params, "linear": new_linear}


def count_params(tree) -> int:
    """Number of scalar entries in a pytree of arrays."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


def tower_param_count(
    d_in: int, hidden: Sequence[int], out_dim: int, *, batch_norm: bool = False, residual_cca: bool = False
) -> int:
    """Closed-form trainable parameter count: weights and biases (plus BN scale/shift, plus the CCA map)."""
    sizes = [int(d_in), *map(int, hidden), int(out_dim)]
    n = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    if batch_norm:
        n += 2 * sum(map(int, hidden))
    if residual_cca:
        n += int(d_in) * int(out_dim) + int(out_dim)
    return n


def tower_forward_flops(d_in: int, hidden: Sequence[int], out_dim: int, *, residual_cca: bool = False) -> int:
    """Multiply-add FLOPs (2 per MAC) of one sample's forward pass through the tower's dense layers."""
    sizes = [int(d_in), *map(int, hidden), int(out_dim)]
    f = sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))
    if residual_cca:
        f += 2 * int(d_in) * int(out_dim)
    return f
