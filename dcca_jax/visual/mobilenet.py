"""MobileNetV2 1.0/224 in Flax, with weights imported from the ImageNet-pretrained (uint8) TFLite file.

The network (Sandler et al. 2018, Table 2): a 3x3/2 convolution to 32 channels, 17 inverted-residual
blocks (1x1 expansion, 3x3 depthwise, 1x1 linear projection; residual when stride 1 and equal widths),
a 1x1 convolution to 1280 channels, global average pooling (the 1280-d pre-logits feature, the visual
view of this project) and a 1x1 convolution to 1001 ImageNet logits (index 0 = background).
Every convolution is followed by its folded batch norm (a bias) and ReLU6, except the projections and the
logits, which are linear. All padding is TensorFlow "SAME" (for stride 2 on even input, one pixel at the
bottom/right only), which is what ``padding="SAME"`` in Flax/XLA does too.

Weights: :func:`load_tflite_params` parses the ``.tflite`` flatbuffer with the maintained ``tflite``
package and dequantises each tensor, ``w = scale * (q - zero_point)`` (per-tensor, or per-channel along
the tensor's ``quantized_dimension``; int32 biases carry scale ``s_in * s_w`` in the file). TFLite
layouts are converted to Flax's HWIO: convolutions ``OHWI -> HWIO``, depthwise ``1HW(C*m) -> HW1(C*m)``.
The loader checks that the graph in the file is MobileNetV2 1.0 (op sequence, strides, padding, fused
ReLU6, shapes) and raises ``ValueError`` naming the tensor otherwise.

The float model is not bit-exact with the uint8 interpreter (activations are re-quantised there after
every op). With ``emulate_uint8=True`` the model also rounds every activation to the file's uint8 grid
(scale and zero point per tensor), which brings it much closer to the reference kernels.

References:
    M. Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
    B. Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
    Inference", CVPR 2018 (the uint8 scheme: real = scale * (q - zero_point)).
"""
from __future__ import annotations

import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# (expansion t, output channels c, repeats n, first stride s): Sandler et al. 2018, Table 2.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
NUM_FEATURES = 1280
NUM_CLASSES = 1001
INPUT_SIZE = 224


def _block_specs():
    """Per block: (name, expansion, in channels, out channels, stride)."""
    specs, c_in, i = [], 32, 0
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for j in range(n):
            name = "expanded_conv" if i == 0 else f"expanded_conv_{i}"
            specs.append((name, t, c_in, c, s if j == 0 else 1))
            c_in, i = c, i + 1
    return specs


BLOCKS = _block_specs()
# Every layer whose output can be pooled (``pool_blocks``), in network order, with its output width.
POOLABLE = {"Conv": 32, **{b[0]: b[3] for b in BLOCKS}, "Conv_1": NUM_FEATURES}
BLOCK_NORMS = ("none", "l2")


def check_pool_blocks(pool_blocks) -> tuple[str, ...]:
    """``pool_blocks`` as a tuple of distinct layer names of :data:`POOLABLE` (ValueError naming the bad ones)."""
    names = tuple(str(b) for b in pool_blocks)
    bad = [b for b in names if b not in POOLABLE]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"pool_blocks must be distinct layer names of MobileNetV2, one of {list(POOLABLE)}; got "
                         f"{list(names)} (unknown: {bad})")
    return names


def concat_blocks(pooled: dict, pool_blocks, *, block_norm: str = "none"):
    r"""Concatenate pooled block activations in the order of ``pool_blocks``, each optionally L2-normalised.

    With ``block_norm="l2"`` each block ``b`` contributes :math:`g_b / \max(\lVert g_b \rVert_2, 10^{-12})`, so
    every block has unit norm and the wide 1280-d layer does not dominate distances and covariances.

    Args:
      pooled: layer name -> ``(n, width)`` globally average-pooled activations.
      pool_blocks: the layers to use (see :func:`check_pool_blocks`).
      block_norm: ``"none"`` or ``"l2"``.

    Returns:
      ``(n, sum of widths)``.
    """
    if block_norm not in BLOCK_NORMS:
        raise ValueError(f"block_norm must be one of {BLOCK_NORMS}, got {block_norm!r}")
    parts = [pooled[b] for b in check_pool_blocks(pool_blocks)]
    if block_norm == "l2":
        parts = [p / jnp.maximum(jnp.linalg.norm(p, axis=-1, keepdims=True), 1e-12) for p in parts]
    return jnp.concatenate(parts, axis=-1)


def _fake_quant(x, scale, zero_point):
    """Round to the uint8 grid ``scale * (clip(round(x / scale) + zp, 0, 255) - zp)``.

    The zero point is an integer, so this equals ``scale * clip(round(x / scale), -zp, 255 - zp)`` (fewer ops).
    """
    return jnp.clip(jnp.round(x * (1.0 / scale)), -zero_point, 255.0 - zero_point) * scale


def depthwise_conv_same(x: jax.Array, kernel: jax.Array, *, stride: int) -> jax.Array:
    """Depthwise convolution with TensorFlow "SAME" padding as a sum of shifted, scaled copies.

    XLA's CPU backend runs grouped convolutions with one channel per group far slower than this
    formulation (about 4x on a 112x112x96 map), which it fuses into one elementwise loop.

    Args:
        x: ``(n, H, W, C)``.
        kernel: ``(k, k, 1, C)`` (Flax HWIO with one input channel per group).
        stride: spatial stride.

    Returns:
        ``(n, ceil(H / stride), ceil(W / stride), C)``.
    """
    k = kernel.shape[0]
    h, w = x.shape[1:3]
    oh, ow = -(-h // stride), -(-w // stride)
    ph, pw = max((oh - 1) * stride + k - h, 0), max((ow - 1) * stride + k - w, 0)
    xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = None
    for i in range(k):
        for j in range(k):
            tap = xp[:, i:i + (oh - 1) * stride + 1:stride, j:j + (ow - 1) * stride + 1:stride, :] * kernel[i, j, 0]
            out = tap if out is None else out + tap
    return out


class _DepthwiseConv(nn.Module):
    """Depthwise k x k convolution + bias; parameters laid out like ``nn.Conv(feature_group_count=C)``."""

    features: int
    kernel_size: int
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (self.kernel_size, self.kernel_size, 1, self.features), x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), x.dtype)
        return depthwise_conv_same(x, kernel, stride=self.stride) + bias


class _PointwiseConv(nn.Module):
    """1x1 convolution + bias as a matrix product; parameters laid out like ``nn.Conv`` (kernel ``(1, 1, I, O)``).

    XLA's CPU backend runs a 1x1 ``conv_general_dilated`` several times slower than the equivalent dot.
    """

    features: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features), x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), x.dtype)
        return jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0]) + bias


class QConv(nn.Module):
    """Convolution + bias [+ BatchNorm] (+ ReLU6), optionally re-quantising its output like the uint8 interpreter.

    ``batch_norm`` inserts a BatchNorm after the (folded) convolution, for fine-tuning with batch statistics
    (:mod:`dcca_jax.finetune`, ``batch_norm="update"``); the pretrained network has none.
    """

    features: int
    kernel: int
    stride: int = 1
    groups: int = 1
    relu6: bool = True
    emulate_uint8: bool = False
    batch_norm: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if self.groups == 1 and self.kernel == 1 and self.stride == 1:
            x = _PointwiseConv(self.features, name="conv")(x)
        elif self.groups == 1:
            x = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride, padding="SAME",
                        dtype=x.dtype, param_dtype=x.dtype, name="conv")(x)
        elif self.groups == self.features == x.shape[-1]:
            x = _DepthwiseConv(self.features, self.kernel, self.stride, name="conv")(x)
        else:
            raise ValueError(f"only plain (groups=1) and depthwise convolutions are supported, got groups="
                             f"{self.groups} for {x.shape[-1]} -> {self.features} channels")
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=x.dtype, param_dtype=x.dtype, name="bn")(x)
        if self.relu6:
            x = jnp.clip(x, 0.0, 6.0)
        if self.emulate_uint8:
            qp = self.variable("quant", "out", lambda: jnp.array([1.0, 0.0], jnp.float32)).value
            x = _fake_quant(x, qp[0].astype(x.dtype), qp[1].astype(x.dtype))
        return x


class InvertedResidual(nn.Module):
    """Expand (1x1, ReLU6) -> depthwise 3x3 (ReLU6) -> project (1x1, linear) [+ residual]."""

    expansion: int
    in_channels: int
    out_channels: int
    stride: int
    emulate_uint8: bool = False
    batch_norm: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        kw = dict(emulate_uint8=self.emulate_uint8, batch_norm=self.batch_norm, bn_momentum=self.bn_momentum,
                  bn_epsilon=self.bn_epsilon)
        hidden = self.in_channels * self.expansion
        y = x
        if self.expansion != 1:
            y = QConv(hidden, 1, name="expand", **kw)(y, train=train)
        y = QConv(hidden, 3, stride=self.stride, groups=hidden, name="depthwise", **kw)(y, train=train)
        y = QConv(self.out_channels, 1, relu6=False, name="project", **kw)(y, train=train)
        if self.stride == 1 and self.in_channels == self.out_channels:
            y = y + x
            if self.emulate_uint8:
                qp = self.variable("quant", "add", lambda: jnp.array([1.0, 0.0], jnp.float32)).value
                y = _fake_quant(y, qp[0].astype(y.dtype), qp[1].astype(y.dtype))
        return y


class MobileNetV2(nn.Module):
    """MobileNetV2 1.0 (ImageNet, 1001 classes) returning the pre-logits feature and the logits.

    Attributes:
        num_classes: logits width (1001 for the TFLite ImageNet model: 0 = background).
        emulate_uint8: round every activation to the uint8 grid of the imported file (needs the
            ``"quant"`` collection from :func:`load_tflite_params`).
    """

    num_classes: int = NUM_CLASSES
    emulate_uint8: bool = False
    pool_blocks: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """Forward pass.

        Args:
            x: ``(n, 224, 224, 3)`` images normalised as ``(u - 128) / 128`` (see
                :func:`dcca_jax.visual.images.normalise`).
            train: unused (the folded batch norm has no training mode); kept for the common API.

        Returns:
            ``{"features": (n, 1280), "logits": (n, num_classes)}`` (no logits when ``num_classes == 0``), plus
            ``"blocks": {name: (n, width)}``, the globally average-pooled output of each layer of ``pool_blocks``
            (``"Conv_1"``'s is ``features`` itself).
        """
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"MobileNetV2 expects (n, H, W, 3) images, got shape {x.shape}")
        if self.emulate_uint8:
            qp = self.variable("quant", "input", lambda: jnp.array([1.0, 0.0], jnp.float32)).value
            x = _fake_quant(x, qp[0].astype(x.dtype), qp[1].astype(x.dtype))
        want = check_pool_blocks(self.pool_blocks)
        blocks = {}
        x = QConv(32, 3, stride=2, emulate_uint8=self.emulate_uint8, name="Conv")(x)
        if "Conv" in want:
            blocks["Conv"] = jnp.mean(x, axis=(1, 2))
        for name, t, c_in, c_out, s in BLOCKS:
            x = InvertedResidual(t, c_in, c_out, s, emulate_uint8=self.emulate_uint8, name=name)(x)
            if name in want:
                blocks[name] = jnp.mean(x, axis=(1, 2))
        x = QConv(NUM_FEATURES, 1, emulate_uint8=self.emulate_uint8, name="Conv_1")(x)
        features = jnp.mean(x, axis=(1, 2))
        if self.emulate_uint8:
            qp = self.variable("quant", "avgpool", lambda: jnp.array([1.0, 0.0], jnp.float32)).value
            features = _fake_quant(features, qp[0].astype(x.dtype), qp[1].astype(x.dtype))
        if "Conv_1" in want:
            blocks["Conv_1"] = features
        out = {"features": features, "blocks": blocks}
        if self.num_classes:
            out["logits"] = nn.Dense(self.num_classes, dtype=x.dtype, param_dtype=x.dtype, name="Logits")(features)
        return out


# ----------------------------------------------------------------------------------------------------------
# TFLite import
# ----------------------------------------------------------------------------------------------------------

_TFL_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}


def _builtin_names():
    import tflite
    return {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}


def _tensor_array(model, graph, index: int, path: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int]:
    """Raw array of a constant tensor plus its (scale, zero_point, quantized_dimension)."""
    t = graph.Tensors(index)
    name = t.Name().decode()
    if t.Type() not in _TFL_DTYPES:
        raise ValueError(f"{path}: tensor {name!r} has unsupported TFLite type {t.Type()}")
    raw = model.Buffers(t.Buffer()).DataAsNumpy()
    if isinstance(raw, int) or raw.size == 0:
        raise ValueError(f"{path}: tensor {name!r} is not a constant (no data buffer)")
    arr = np.frombuffer(raw.tobytes(), dtype=_TFL_DTYPES[t.Type()]).reshape(t.ShapeAsNumpy())
    q = t.Quantization()
    scale = zp = None
    qdim = 0
    if q is not None and q.ScaleLength() > 0:
        scale = q.ScaleAsNumpy().astype(np.float64)
        zp = q.ZeroPointAsNumpy().astype(np.float64) if q.ZeroPointLength() else np.zeros_like(scale)
        qdim = q.QuantizedDimension()
    return arr, scale, zp, qdim


def dequantise(arr: np.ndarray, scale: np.ndarray | None, zero_point: np.ndarray | None,
               quantized_dimension: int = 0) -> np.ndarray:
    r"""Real value of a quantised tensor (float tensors pass through).

    .. math:: w = s \, (q - z)

    with ``s`` and ``z`` either scalars (per-tensor) or vectors along ``quantized_dimension`` (per-channel).

    Args:
        arr: the stored integers (any shape).
        scale: ``(1,)`` or ``(arr.shape[quantized_dimension],)``, or None for a float tensor.
        zero_point: same shape as ``scale`` (None means 0).
        quantized_dimension: the per-channel axis.

    Returns:
        float64 array of ``arr``'s shape.
    """
    if scale is None or np.issubdtype(arr.dtype, np.floating):
        return np.asarray(arr, np.float64)
    zero_point = np.zeros_like(scale) if zero_point is None else zero_point
    if scale.size == 1:
        return (arr.astype(np.float64) - float(zero_point.reshape(-1)[0])) * float(scale.reshape(-1)[0])
    if scale.size != arr.shape[quantized_dimension]:
        raise ValueError(f"per-channel scale of length {scale.size} does not match axis {quantized_dimension} "
                         f"of a tensor of shape {arr.shape}")
    shape = [1] * arr.ndim
    shape[quantized_dimension] = -1
    return (arr.astype(np.float64) - zero_point.reshape(shape)) * scale.reshape(shape)


_LAYER_RE = re.compile(r"MobilenetV2/(Conv_1|Conv|expanded_conv(?:_\d+)?/(?:expand|depthwise|project)"
                       r"|Logits/Conv2d_1c_1x1)/")


def _layer_key(weight_name: str) -> str | None:
    m = _LAYER_RE.search(weight_name)
    return m.group(1) if m else None


def _expected_layers():
    """Flax path (tuple) of every convolution, keyed by its TF-slim scope, with its stride and ReLU6 flag."""
    layers = {"Conv": (("Conv", "conv"), 2, True, 3, False)}
    for name, t, _, _, s in BLOCKS:
        if t != 1:
            layers[f"{name}/expand"] = ((name, "expand", "conv"), 1, True, 1, False)
        layers[f"{name}/depthwise"] = ((name, "depthwise", "conv"), s, True, 3, True)
        layers[f"{name}/project"] = ((name, "project", "conv"), 1, False, 1, False)
    layers["Conv_1"] = (("Conv_1", "conv"), 1, True, 1, False)
    layers["Logits/Conv2d_1c_1x1"] = (("Logits",), 1, False, 1, False)
    return layers


def _set(tree: dict, path: tuple[str, ...], leaf: str, value):
    node = tree
    for p in path:
        node = node.setdefault(p, {})
    node[leaf] = value


def load_tflite_params(path: str | os.PathLike, *, dtype=jnp.float32) -> dict[str, Any]:
    """Import MobileNetV2 1.0/224 weights from a TFLite file, dequantised to float.

    Args:
        path: the ``.tflite`` file (e.g. ``mobilenet_v2_1.0_224_quant.tflite``; float models work too).
        dtype: float dtype of the returned arrays.

    Returns:
        Flax variables ``{"params": ..., "quant": ...}`` for :class:`MobileNetV2`; ``"quant"`` holds each
        activation's ``[scale, zero_point]`` (only used with ``emulate_uint8=True``; absent for float files).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a MobileNetV2 1.0 graph this importer understands (the message names
            the offending operator or tensor).
    """
    import tflite  # runtime dependency; imported lazily so the module loads without it

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TFLite model not found: {path}")
    with open(path, "rb") as f:
        buf = f.read()
    try:
        model = tflite.Model.GetRootAsModel(buf, 0)
        graph = model.Subgraphs(0)
        n_ops = graph.OperatorsLength()
    except Exception as e:  # noqa: BLE001 - flatbuffers raises assorted errors on garbage
        raise ValueError(f"{path}: not a readable TFLite flatbuffer ({e})") from e
    names = _builtin_names()
    expected = _expected_layers()
    params: dict = {}
    quant: dict = {}
    seen: set[str] = set()
    quantised_model = False

    def act_qparams(tensor_index):
        q = graph.Tensors(tensor_index).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        return np.array([q.ScaleAsNumpy()[0], q.ZeroPointAsNumpy()[0]], np.float32)

    input_q = act_qparams(graph.Inputs(0))
    if input_q is not None:
        quant["input"] = jnp.asarray(input_q)
        quantised_model = True
    block_of_add: list[str] = [b[0] for b in BLOCKS if b[4] == 1 and b[2] == b[3]]
    add_i = 0
    for i in range(n_ops):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        opname = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        ins, outs = op.InputsAsNumpy(), op.OutputsAsNumpy()
        if opname in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            wname = graph.Tensors(ins[1]).Name().decode()
            key = _layer_key(wname)
            if key is None or key not in expected:
                raise ValueError(f"{path}: operator {i} ({opname}) has weight {wname!r}, which is not a layer of "
                                 "MobileNetV2 1.0; this importer only reads that architecture")
            fpath, stride, relu6, ksize, depthwise = expected[key]
            opts = tflite.Conv2DOptions() if opname == "CONV_2D" else tflite.DepthwiseConv2DOptions()
            raw_opts = op.BuiltinOptions()
            opts.Init(raw_opts.Bytes, raw_opts.Pos)
            act = opts.FusedActivationFunction()
            want_act = tflite.ActivationFunctionType.RELU6 if relu6 else tflite.ActivationFunctionType.NONE
            if (opname == "DEPTHWISE_CONV_2D") != depthwise:
                raise ValueError(f"{path}: layer {key} is {opname}, expected "
                                 f"{'DEPTHWISE_CONV_2D' if depthwise else 'CONV_2D'}")
            if (opts.StrideH(), opts.StrideW()) != (stride, stride):
                raise ValueError(f"{path}: layer {key} has stride {(opts.StrideH(), opts.StrideW())}, expected {stride}")
            if opts.Padding() != tflite.Padding.SAME:
                raise ValueError(f"{path}: layer {key} uses padding {opts.Padding()}, only SAME (0) is supported")
            if act != want_act:
                raise ValueError(f"{path}: layer {key} has fused activation {act}, expected {want_act}")
            if depthwise and opts.DepthMultiplier() != 1:
                raise ValueError(f"{path}: layer {key} has depth multiplier {opts.DepthMultiplier()}, expected 1")
            w = dequantise(*_tensor_array(model, graph, ins[1], path))
            b = dequantise(*_tensor_array(model, graph, ins[2], path))
            if depthwise:  # (1, H, W, C) -> (H, W, 1, C): Flax grouped conv with one input per group
                if w.shape[0] != 1 or w.shape[1:3] != (ksize, ksize):
                    raise ValueError(f"{path}: depthwise weight {wname!r} has shape {w.shape}, expected (1, {ksize}, "
                                     f"{ksize}, C)")
                kernel = w[0][:, :, None, :]
            else:  # OHWI -> HWIO
                if w.shape[1:3] != (ksize, ksize):
                    raise ValueError(f"{path}: weight {wname!r} has shape {w.shape}, expected (O, {ksize}, {ksize}, I)")
                kernel = np.transpose(w, (1, 2, 3, 0))
            if b.shape != (kernel.shape[-1],):
                raise ValueError(f"{path}: bias of {key} has shape {b.shape}, expected ({kernel.shape[-1]},)")
            if key == "Logits/Conv2d_1c_1x1":
                _set(params, fpath, "kernel", jnp.asarray(kernel[0, 0], dtype))
            else:
                _set(params, fpath, "kernel", jnp.asarray(kernel, dtype))
                oq = act_qparams(outs[0])
                if oq is not None:
                    _set(quant, fpath[:-1], "out", jnp.asarray(oq))
            _set(params, fpath, "bias", jnp.asarray(b, dtype))
            seen.add(key)
        elif opname == "ADD":
            if add_i >= len(block_of_add):
                raise ValueError(f"{path}: more residual ADD operators than MobileNetV2 1.0 has ({len(block_of_add)})")
            oq = act_qparams(outs[0])
            if oq is not None:
                _set(quant, (block_of_add[add_i],), "add", jnp.asarray(oq))
            add_i += 1
        elif opname in ("AVERAGE_POOL_2D", "MEAN"):
            oq = act_qparams(outs[0])
            if oq is not None:
                quant["avgpool"] = jnp.asarray(oq)
        elif opname in ("RESHAPE", "SOFTMAX", "SQUEEZE", "QUANTIZE", "DEQUANTIZE"):
            continue
        else:
            raise ValueError(f"{path}: operator {i} is {opname}, which MobileNetV2 1.0 does not contain")
    missing = sorted(set(expected) - seen)
    if missing:
        raise ValueError(f"{path}: layers missing from the file: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if add_i != len(block_of_add):
        raise ValueError(f"{path}: found {add_i} residual ADD operators, MobileNetV2 1.0 has {len(block_of_add)}")
    variables = {"params": params}
    if quantised_model:
        variables["quant"] = quant
    return variables


def num_params(variables) -> int:
    """Number of scalars in the ``"params"`` collection."""
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(variables["params"])))


def make_apply_fn(variables, *, emulate_uint8: bool = False, pool_blocks=()):
    """A jitted ``images -> {"features", "logits", "blocks"}`` for normalised ``(n, 224, 224, 3)`` float images.

    Args:
        variables: from :func:`load_tflite_params` (``dtype=jnp.bfloat16`` gives a bf16 network: images are
            cast to the weights' dtype and the outputs come back in it) or :func:`load_backbone_params` (no
            logits: the output has none).
        emulate_uint8: see :class:`MobileNetV2`.
        pool_blocks: layers whose pooled outputs are returned under ``"blocks"`` (see :class:`MobileNetV2`).

    Returns:
        ``apply(x) -> dict`` (jitted; weights are closed-over constants of the variables' dtype).
    """
    model = MobileNetV2(emulate_uint8=emulate_uint8, pool_blocks=check_pool_blocks(pool_blocks),
                        num_classes=NUM_CLASSES if "Logits" in variables["params"] else 0)
    if emulate_uint8 and "quant" not in variables:
        raise ValueError("emulate_uint8=True needs the 'quant' collection of a quantised TFLite file")
    used = variables if emulate_uint8 else {"params": variables["params"]}
    pdt = jax.tree_util.tree_leaves(variables["params"])[0].dtype

    @jax.jit
    def apply(v, x):
        # Every layer computes in its input's dtype: with bf16 weights (load_tflite_params(dtype=bfloat16)) a
        # float32 image would promote the whole network back to float32.
        if jnp.dtype(pdt).itemsize < 4 and jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(pdt)
        return model.apply(v, x)

    return lambda x: apply(used, x)


TTA_MODES = ("none", "flip")


def make_feature_fn(variables, *, emulate_uint8: bool = False, pool_blocks=(), block_norm: str = "none",
                    tta: str = "none"):
    r"""A jitted ``images -> (n, dim)`` feature function: pooled blocks, view averaging, per-block normalisation.

    For each view :math:`v` of an image (``tta="none"``: the image; ``"flip"``: it and its horizontal mirror
    ``x[:, :, ::-1]``) the network's pooled outputs :math:`g_b(v)` of the layers ``pool_blocks`` (default: the
    1280-d ``"Conv_1"``, the plain pre-logits feature) are averaged over the views,
    :math:`\bar g_b = \frac{1}{|V|}\sum_v g_b(v)`, then each block is normalised (``block_norm``) and the blocks
    are concatenated in the order given (:func:`concat_blocks`).

    Returns:
      ``(apply, dim)``: ``apply(x) -> (n, dim)`` for normalised ``(n, S, S, 3)`` images, and ``dim``.
    """
    blocks = check_pool_blocks(pool_blocks or ("Conv_1",))
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
    if block_norm not in BLOCK_NORMS:
        raise ValueError(f"block_norm must be one of {BLOCK_NORMS}, got {block_norm!r}")
    net = make_apply_fn(variables, emulate_uint8=emulate_uint8, pool_blocks=blocks)

    def apply(x):
        pooled = net(x)["blocks"]
        if tta == "flip":
            mirrored = net(x[:, :, ::-1, :])["blocks"]
            pooled = {b: (pooled[b] + mirrored[b]) / 2 for b in blocks}
        return concat_blocks(pooled, blocks, block_norm=block_norm)

    return apply, int(sum(POOLABLE[b] for b in blocks))


# ----------------------------------------------------------------------------------------------------------
# Fine-tuned weights (npz export / import)
# ----------------------------------------------------------------------------------------------------------

FINETUNED_FORMAT = "dcca_jax.mobilenet_v2.params/1"


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": leaf}} -> {"a/b": leaf}``."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _reference_shapes() -> dict[str, tuple[int, ...]]:
    """Shape of every backbone parameter (logits excluded), from an abstract ``MobileNetV2().init``."""
    shapes = jax.eval_shape(lambda: MobileNetV2().init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    return {k: tuple(v.shape) for k, v in _flatten(shapes["params"]).items() if not k.startswith("Logits/")}


def save_backbone_params(path: str | os.PathLike, params: dict, *, meta: dict | None = None) -> None:
    """Write a MobileNetV2 backbone params tree (folded batch norm; logits dropped) as an npz.

    Keys are ``"<layer>/<conv>/<kernel|bias>"`` paths of :func:`load_tflite_params`'s tree plus
    ``__format__`` and ``__meta__`` (JSON), so :func:`load_backbone_params` can check the file.
    """
    import json

    from dcca_jax import _io

    flat = {k: np.asarray(v) for k, v in _flatten(params).items() if not k.startswith("Logits/")}
    ref = _reference_shapes()
    bad = sorted(set(ref) ^ set(flat)) or [k for k in ref if tuple(flat[k].shape) != ref[k]]
    if bad:
        raise ValueError(f"params are not a MobileNetV2 1.0 backbone (folded batch norm): mismatched {bad[:5]}")
    _io.atomic_save_npz(path, __format__=np.array(FINETUNED_FORMAT),
                        __meta__=np.array(json.dumps(meta or {})), **{k: v.astype(np.float32) for k, v in flat.items()})


def load_backbone_params(path: str | os.PathLike, *, dtype=jnp.float32) -> dict[str, Any]:
    """Read :func:`save_backbone_params`' npz back as Flax variables ``{"params": ...}`` (no logits).

    Raises:
        FileNotFoundError: no file at ``path`` (the message says how such a file is made).
        ValueError: not such a file, or a layer is missing or has the wrong shape (named).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"fine-tuned MobileNetV2 weights not found: {path} (written as "
                                "<workdir>/finetune_seed<k>/finetuned_backbone.npz by experiments/finetune_corel5k.py)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - zipfile / numpy raise assorted errors on garbage
        raise ValueError(f"{path}: not a readable npz of fine-tuned MobileNetV2 weights ({e})") from e
    fmt = str(arrays.pop("__format__", ""))
    arrays.pop("__meta__", None)
    if fmt != FINETUNED_FORMAT:
        raise ValueError(f"{path}: not a fine-tuned MobileNetV2 weights file (format {fmt!r}, expected "
                         f"{FINETUNED_FORMAT!r}); export one with dcca_jax.visual.mobilenet.save_backbone_params")
    ref = _reference_shapes()
    missing = sorted(set(ref) - set(arrays))
    extra = sorted(set(arrays) - set(ref))
    wrong = [f"{k} {arrays[k].shape} (expected {ref[k]})" for k in ref if k in arrays and arrays[k].shape != ref[k]]
    if missing or extra or wrong:
        raise ValueError(f"{path}: not MobileNetV2 1.0 backbone weights: missing {missing[:3]}, unexpected "
                         f"{extra[:3]}, wrong shape {wrong[:3]}")
    params: dict = {}
    for k, v in arrays.items():
        parts = k.split("/")
        _set(params, tuple(parts[:-1]), parts[-1], jnp.asarray(v, dtype))
    return {"params": params}
