"""AlexNet in Flax: the paper's visual network (5 convolutional + 3 fully connected layers), fc7 as the feature.

Two layouts are supported:

``"torchvision"`` (``torchvision.models.alexnet``, the single-tower variant of Krizhevsky 2014): convolutions
64-11x11/4 pad 2, 192-5x5 pad 2, 384-3x3, 256-3x3, 256-3x3 (pad 1), max pools 3/2 (floor) after conv 1, 2
and 5, ``AdaptiveAvgPool2d(6)``, then fc6 (9216 -> 4096), fc7 (4096 -> 4096), fc8 (4096 -> 1000), with
ReLU after every layer but fc8 and dropout before fc6 and fc7 (training only). Input 224x224 RGB with the
torchvision ImageNet mean/std (:func:`dcca_jax.visual.images.normalise` ``"alexnet"``).

``"caffe"`` (BVLC reference AlexNet, the two-GPU network of Krizhevsky et al. 2012 as released with Caffe):
96-11x11/4 (no pad), LRN, pool; 256-5x5 pad 2 in 2 groups, LRN, pool; 384-3x3; 384-3x3 (2 groups);
256-3x3 (2 groups); pool; fc6/fc7 4096; fc8 1000. Caffe's pools round up (``ceil``) and its LRN is
``b = a / (1 + alpha/n * sum a^2)^beta`` with n = 5, alpha = 1e-4, beta = 0.75. Input 227x227 BGR minus the
mean pixel (``"caffe"`` normalisation).

The feature of the paper's section 2 is fc7 after its ReLU (4096-d). ``width`` scales every channel count and
the fc width (``width=1/16`` gives a tiny network for tests through the same code path).

Weights come from a file in the original layouts (``.npz`` or ``.safetensors``; never pickle):
- torchvision: the ``state_dict`` keys ``features.{0,3,6,8,10}.{weight,bias}`` (OIHW) and
  ``classifier.{1,4,6}.{weight,bias}`` ((out, in)).
- caffe: ``conv{1..5}.{weight,bias}`` (OIHW with I = in/groups, as Caffe stores blobs[0]) and
  ``fc{6,7,8}.{weight,bias}`` ((out, in)).
Both flatten pool5 channel-first (index ``c*36 + h*6 + w``) before fc6; Flax activations are NHWC, so
:func:`state_dict_to_variables` permutes fc6's input rows to ``(h, w, c)`` order. Convolutions go
``OIHW -> HWIO`` and linear layers ``(out, in) -> (in, out)``.
:func:`convert_torch_checkpoint` turns a PyTorch ``.pth`` into ``.npz`` with ``torch.load(weights_only=True)``
(torch is an optional dependency, imported only there).

References:
    A. Krizhevsky, I. Sutskever, G. Hinton, "ImageNet Classification with Deep Convolutional Neural Networks",
    NIPS 2012.  A. Krizhevsky, "One weird trick for parallelizing convolutional neural networks", 2014.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dcca_jax._io import atomic_save_npz

LAYOUTS = ("torchvision", "caffe")

# (name, out channels, kernel, stride, padding, groups, lrn_after, pool_after)
_CONVS = {
    "torchvision": (("conv1", 64, 11, 4, 2, 1, False, True), ("conv2", 192, 5, 1, 2, 1, False, True),
                    ("conv3", 384, 3, 1, 1, 1, False, False), ("conv4", 256, 3, 1, 1, 1, False, False),
                    ("conv5", 256, 3, 1, 1, 1, False, True)),
    "caffe": (("conv1", 96, 11, 4, 0, 1, True, True), ("conv2", 256, 5, 1, 2, 2, True, True),
              ("conv3", 384, 3, 1, 1, 1, False, False), ("conv4", 384, 3, 1, 1, 2, False, False),
              ("conv5", 256, 3, 1, 1, 2, False, True)),
}
_FC = 4096
_POOL_GRID = 6
_TV_KEYS = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6", "conv4": "features.8",
            "conv5": "features.10", "fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6"}
INPUT_SIZE = {"torchvision": 224, "caffe": 227}
NORMALISATION = {"torchvision": "alexnet", "caffe": "caffe"}


def _scaled(c: int, width: float, groups: int) -> int:
    """Channels after the width multiplier, at least one per group and divisible by the group count."""
    return max(groups, int(round(c * width / groups)) * groups)


def layer_sizes(*, layout: str = "torchvision", width: float = 1.0) -> dict[str, int]:
    """Output width of every layer: ``{"conv1": 64, ..., "fc6": 4096, "fc7": 4096}`` for torchvision 1.0."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown AlexNet layout {layout!r}; choose one of {LAYOUTS}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    sizes = {name: _scaled(c, width, g) for name, c, _, _, _, g, _, _ in _CONVS[layout]}
    sizes["fc6"] = sizes["fc7"] = max(1, int(round(_FC * width)))
    return sizes


def local_response_norm(x: jax.Array, *, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> jax.Array:
    r"""Cross-channel local response normalisation (Krizhevsky et al. 2012, section 3.3; Caffe's convention).

    .. math:: b_c = a_c \Big/ \Big(k + \frac{\alpha}{n} \sum_{c'=c-\lfloor n/2 \rfloor}^{c+\lfloor n/2 \rfloor}
              a_{c'}^2\Big)^{\beta}

    Args:
        x: ``(n, H, W, C)`` activations.
        size: window ``n`` over channels (odd).
        alpha, beta, k: the constants (Caffe/torch divide ``alpha`` by ``size``).

    Returns:
        ``(n, H, W, C)``.
    """
    half = size // 2
    sq = jnp.pad(jnp.square(x), ((0, 0), (0, 0), (0, 0), (half, size - 1 - half)))
    window = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1), "VALID")
    return x / jnp.power(k + alpha / size * window, beta)


def _max_pool(x, *, ceil_mode: bool):
    h, w = x.shape[1:3]
    pads = []
    for n in (h, w):
        out = (math.ceil((n - 3) / 2) if ceil_mode else (n - 3) // 2) + 1
        pads.append((0, max(0, (out - 1) * 2 + 3 - n)))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                 ((0, 0), pads[0], pads[1], (0, 0)))


def adaptive_avg_pool(x: jax.Array, *, output_size: int) -> jax.Array:
    """``torch.nn.AdaptiveAvgPool2d``: bin i covers ``[floor(i*H/o), ceil((i+1)*H/o))``.

    Args:
        x: ``(n, H, W, C)``.
        output_size: ``o``.

    Returns:
        ``(n, o, o, C)``.
    """
    h, w = x.shape[1:3]
    if (h, w) == (output_size, output_size):
        return x

    def bins(n):
        return [(i * n // output_size, -(-(i + 1) * n // output_size)) for i in range(output_size)]

    rows = [jnp.mean(x[:, a:b], axis=1) for a, b in bins(h)]  # each (n, W, C)
    x = jnp.stack(rows, axis=1)
    cols = [jnp.mean(x[:, :, a:b], axis=2) for a, b in bins(w)]
    return jnp.stack(cols, axis=2)


class AlexNet(nn.Module):
    """AlexNet returning fc7 (after ReLU) as ``"features"`` and fc8 as ``"logits"``.

    Attributes:
        layout: ``"torchvision"`` or ``"caffe"`` (see the module docstring).
        width: multiplier on every channel count and on the fc width.
        num_classes: fc8 width.
        dropout_rate: dropout before fc6 and fc7 when ``train=True`` (needs a ``"dropout"`` rng).
    """

    layout: str = "torchvision"
    width: float = 1.0
    num_classes: int = 1000
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """Forward pass.

        Args:
            x: ``(n, H, W, 3)`` normalised images (224 for torchvision, 227 for caffe; other sizes work).
            train: apply dropout.

        Returns:
            ``{"features": (n, fc7), "logits": (n, num_classes), "pool5": (n, 6, 6, C5)}``.
        """
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"AlexNet expects (n, H, W, 3) images, got shape {x.shape}")
        sizes = layer_sizes(layout=self.layout, width=self.width)
        caffe = self.layout == "caffe"
        for name, _, k, s, p, g, lrn, pool in _CONVS[self.layout]:
            x = nn.Conv(sizes[name], (k, k), strides=s, padding=((p, p), (p, p)), feature_group_count=g,
                        dtype=x.dtype, param_dtype=x.dtype, name=name)(x)
            x = nn.relu(x)
            if lrn:
                x = local_response_norm(x)
            if pool:
                x = _max_pool(x, ceil_mode=caffe)
        pool5 = adaptive_avg_pool(x, output_size=_POOL_GRID)
        h = pool5.reshape(pool5.shape[0], -1)  # (h, w, c) order; the importer permutes fc6 to match
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        h = nn.relu(nn.Dense(sizes["fc6"], dtype=x.dtype, param_dtype=x.dtype, name="fc6")(h))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        fc7 = nn.relu(nn.Dense(sizes["fc7"], dtype=x.dtype, param_dtype=x.dtype, name="fc7")(h))
        logits = nn.Dense(self.num_classes, dtype=x.dtype, param_dtype=x.dtype, name="fc8")(fc7)
        return {"features": fc7, "logits": logits, "pool5": pool5}


# ----------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------

def _source_key(layout: str, layer: str) -> str:
    return _TV_KEYS[layer] if layout == "torchvision" else layer


def infer_config(state_dict: Mapping[str, np.ndarray], *, layout: str = "torchvision") -> dict[str, Any]:
    """Width multiplier and class count implied by a state dict (from conv1's filters and fc8's rows)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown AlexNet layout {layout!r}; choose one of {LAYOUTS}")
    key = _source_key(layout, "conv1") + ".weight"
    if key not in state_dict:
        raise ValueError(f"state dict has no {key!r}: not a {layout}-layout AlexNet (keys: "
                         f"{sorted(state_dict)[:6]} ...)")
    base = _CONVS[layout][0][1]
    width = np.shape(state_dict[key])[0] / base
    num_classes = int(np.shape(state_dict[_source_key(layout, "fc8") + ".weight"])[0])
    return {"layout": layout, "width": float(width), "num_classes": num_classes}


def state_dict_to_variables(state_dict: Mapping[str, np.ndarray], *, layout: str = "torchvision",
                            dtype=jnp.float32) -> tuple[dict, dict[str, Any]]:
    """Convert a torchvision/Caffe AlexNet state dict to Flax variables for :class:`AlexNet`.

    Args:
        state_dict: name -> array (see the module docstring for the keys and layouts).
        layout: ``"torchvision"`` or ``"caffe"``.
        dtype: float dtype of the returned parameters.

    Returns:
        ``(variables, config)`` where ``config`` holds ``layout``, ``width`` and ``num_classes`` for the module.

    Raises:
        ValueError: a key is missing or a shape does not match the architecture (the message names it).
    """
    cfg = infer_config(state_dict, layout=layout)
    sizes = layer_sizes(layout=layout, width=cfg["width"])
    if _CONVS[layout][0][1] * cfg["width"] != sizes["conv1"]:
        raise ValueError(f"conv1 has {np.shape(state_dict[_source_key(layout, 'conv1') + '.weight'])[0]} filters, "
                         f"not a width multiple of {_CONVS[layout][0][1]}")
    params: dict = {}
    c_in = 3

    def get(layer, part, shape):
        key = f"{_source_key(layout, layer)}.{part}"
        if key not in state_dict:
            raise ValueError(f"state dict is missing {key!r} ({layout} layout)")
        arr = np.asarray(state_dict[key])
        if arr.shape != shape:
            raise ValueError(f"{key!r} has shape {arr.shape}, expected {shape} for a {layout} AlexNet of width "
                             f"{cfg['width']:g}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{key!r} contains non-finite values")
        return arr

    for name, _, k, _, _, g, _, _ in _CONVS[layout]:
        c_out = sizes[name]
        w = get(name, "weight", (c_out, c_in // g, k, k))
        b = get(name, "bias", (c_out,))
        params[name] = {"kernel": jnp.asarray(np.transpose(w, (2, 3, 1, 0)), dtype), "bias": jnp.asarray(b, dtype)}
        c_in = c_out
    grid = _POOL_GRID
    w6 = get("fc6", "weight", (sizes["fc6"], c_in * grid * grid))
    # Source flattens pool5 as (c, h, w); Flax flattens NHWC as (h, w, c): permute fc6's input rows.
    w6 = w6.reshape(sizes["fc6"], c_in, grid, grid).transpose(2, 3, 1, 0).reshape(grid * grid * c_in, sizes["fc6"])
    params["fc6"] = {"kernel": jnp.asarray(w6, dtype), "bias": jnp.asarray(get("fc6", "bias", (sizes["fc6"],)), dtype)}
    params["fc7"] = {"kernel": jnp.asarray(get("fc7", "weight", (sizes["fc7"], sizes["fc6"])).T, dtype),
                     "bias": jnp.asarray(get("fc7", "bias", (sizes["fc7"],)), dtype)}
    n_cls = cfg["num_classes"]
    params["fc8"] = {"kernel": jnp.asarray(get("fc8", "weight", (n_cls, sizes["fc7"])).T, dtype),
                     "bias": jnp.asarray(get("fc8", "bias", (n_cls,)), dtype)}
    return {"params": params}, cfg


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a flat name -> array mapping from ``.npz`` (no pickle) or ``.safetensors``.

    Args:
        path: the weights file.

    Returns:
        ``{name: np.ndarray}``.

    Raises:
        FileNotFoundError, ValueError: missing file, unknown extension, or a file that needs pickle.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        return dict(load_file(path))
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except ValueError as e:
            raise ValueError(f"{path}: cannot read without pickle ({e}); re-save the arrays as plain numeric "
                             "arrays (np.savez) or safetensors") from e
    raise ValueError(f"{path}: unsupported weights format; use .npz or .safetensors (convert a PyTorch .pth with "
                     "dcca_jax.visual.alexnet.convert_torch_checkpoint)")


def load_alexnet(path: str | os.PathLike, *, layout: str = "torchvision",
                 dtype=jnp.float32) -> tuple[AlexNet, dict]:
    """Build :class:`AlexNet` and its variables from a weights file.

    Args:
        path: ``.npz`` or ``.safetensors`` in the given layout.
        layout: ``"torchvision"`` or ``"caffe"``.
        dtype: parameter dtype.

    Returns:
        ``(module, variables)``.
    """
    variables, cfg = state_dict_to_variables(read_weights(path), layout=layout, dtype=dtype)
    return AlexNet(layout=cfg["layout"], width=cfg["width"], num_classes=cfg["num_classes"]), variables


def convert_torch_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Convert a PyTorch AlexNet checkpoint (``.pth``, e.g. torchvision's ``alexnet-owt-7be5be79.pth``) to ``.npz``.

    Uses ``torch.load(..., weights_only=True)``, which refuses to run code from the file. torch is an optional
    dependency (``pip install torch``), imported only here. A ``{"state_dict": ...}`` wrapper and a
    ``module.`` prefix (DataParallel) are unwrapped.

    Args:
        src: the ``.pth``/``.pt`` file.
        dst: the ``.npz`` to write (atomically).

    Returns:
        The keys written.
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError("convert_torch_checkpoint needs PyTorch (pip install torch); the rest of dcca_jax does "
                          "not. Alternatively save the state dict as safetensors elsewhere.") from e
    sd = torch.load(os.fspath(src), map_location="cpu", weights_only=True)
    if isinstance(sd, Mapping) and "state_dict" in sd:
        sd = sd["state_dict"]
    arrays = {k.removeprefix("module."): v.detach().cpu().float().numpy() for k, v in sd.items()}
    atomic_save_npz(dst, **arrays)
    return sorted(arrays)
