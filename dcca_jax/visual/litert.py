"""MobileNetV2 features on CPU through the LiteRT (``ai-edge-litert``) interpreter and its XNNPACK kernels.

The JAX port (:mod:`dcca_jax.visual.mobilenet`) runs the same ``.tflite`` file about 4x slower on a CPU; this
backend runs the file itself, so its features are those of the TFLite reference (bit-identical for the uint8
model: same kernels, same graph). It is what :func:`dcca_jax.visual.extract.build_backbone` uses on a CPU when
the package is installed (``engine="auto"``); the JAX port stays for GPU/TPU, batch runs and fine-tuning.

The file's only output is the softmax; the 1280-d pre-logits are the tensor ``MobilenetV2/Logits/AvgPool``.
Rather than keeping every intermediate tensor (``experimental_preserve_all_tensors``, a debugging mode),
:func:`feature_model` patches a copy of the flatbuffer held in memory: the subgraph's output becomes the
pooled tensor and the operators after it (the 1x1 logits convolution, the squeeze and the softmax) are dropped.
The interpreter then runs one image per ``invoke`` (batch 1, the file's own shape: resizing the input to a
batch was not clearly faster on 2 cores, see BUILD.md) with ``num_threads`` XNNPACK threads (default: the
usable cores); ``invoke`` releases the GIL, so the decode workers of
:func:`~dcca_jax.visual.extract.extract_features` run alongside it.
"""
from __future__ import annotations

import os

import numpy as np

AVGPOOL = "MobilenetV2/Logits/AvgPool"
INSTALL_HINT = "pip install ai-edge-litert (or pip install -e .[litert])"


def import_interpreter():
    """The ``ai_edge_litert`` ``Interpreter`` class, or an ImportError saying what to install."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise ImportError(f"the LiteRT engine needs the ai-edge-litert package ({e}); {INSTALL_HINT}, or set "
                          "engine='jax' to use the JAX port") from e
    return Interpreter


def _usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which a container's CPU set narrows; else the count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def available() -> bool:
    """True when ``ai_edge_litert`` imports."""
    try:
        import_interpreter()
    except ImportError:
        return False
    return True


def feature_model(model: bytes, *, tensor: str = AVGPOOL) -> tuple[bytes, int]:
    """A copy of a one-subgraph ``.tflite`` flatbuffer whose output is ``tensor``, ops after it dropped.

    Two fields of the flatbuffer are overwritten in place (same lengths, so no offset moves): the single entry
    of the subgraph's ``outputs`` vector becomes the index of ``tensor``, and the length of its ``operators``
    vector becomes one past the operator that writes ``tensor`` (the operators are stored in execution order,
    so the ones after it only feed the old output).

    Args:
        model: the file's bytes.
        tensor: name of the tensor to expose.

    Returns:
        ``(patched bytes, number of operators dropped)``.

    Raises:
        ValueError: the file has several subgraphs or outputs, or no tensor/operator of that name.
    """
    import tflite

    buf = bytearray(model)
    m = tflite.Model.GetRootAsModel(buf, 0)
    if m.SubgraphsLength() != 1:
        raise ValueError(f"expected a model with one subgraph, got {m.SubgraphsLength()}")
    g = m.Subgraphs(0)
    if g.OutputsLength() != 1:
        raise ValueError(f"expected a model with one output, got {g.OutputsLength()}")
    names = [g.Tensors(i).Name().decode() for i in range(g.TensorsLength())]
    if tensor not in names:
        raise ValueError(f"the model has no tensor named {tensor!r}")
    t = names.index(tensor)
    producers = [i for i in range(g.OperatorsLength())
                 if t in [g.Operators(i).Outputs(j) for j in range(g.Operators(i).OutputsLength())]]
    if not producers:
        raise ValueError(f"no operator of the model writes {tensor!r}")
    n_ops = producers[0] + 1
    out_vec = g._tab.Vector(g._tab.Offset(8))  # SubGraph field 2 (outputs): the first element's position
    buf[out_vec:out_vec + 4] = int(t).to_bytes(4, "little")
    ops_vec = g._tab.Vector(g._tab.Offset(10))  # field 3 (operators); its uint32 length sits just before
    dropped = g.OperatorsLength() - n_ops
    buf[ops_vec - 4:ops_vec] = int(n_ops).to_bytes(4, "little")
    return bytes(buf), dropped


class LiteRTFeatures:
    """Pre-logit features of a TFLite image model, one image per ``invoke``.

    Call it with ``(n, S, S, 3)`` images (uint8 for a quantised file, normalised float otherwise) to get
    ``(n, dim)`` float32 features, dequantised with the tensor's scale and zero point. Not thread-safe: one
    instance serves one thread (as in :func:`~dcca_jax.visual.extract.extract_features`).

    Args:
        path: the ``.tflite`` file.
        num_threads: interpreter threads (default: the cores this process may run on).
        tensor: the feature tensor (:data:`AVGPOOL`).
    """

    def __init__(self, path: str | os.PathLike, *, num_threads: int | None = None, tensor: str = AVGPOOL):
        interpreter_cls = import_interpreter()
        with open(path, "rb") as f:
            content, self.dropped_ops = feature_model(f.read(), tensor=tensor)
        self.num_threads = int(num_threads or _usable_cores())
        self._interp = interpreter_cls(model_content=content, num_threads=self.num_threads)
        self._interp.allocate_tensors()
        inp = self._interp.get_input_details()[0]
        out = self._interp.get_output_details()[0]
        self._in, self._out = inp["index"], out["index"]
        self.input_dtype = np.dtype(inp["dtype"])
        self.input_shape = tuple(int(s) for s in inp["shape"])
        self.dim = int(np.prod(out["shape"][1:]))
        self.scale, self.zero_point = (float(q) for q in out["quantization"])

    def raw(self, image: np.ndarray) -> np.ndarray:
        """The feature tensor of one ``(S, S, 3)`` image, as stored (uint8 for a quantised file), ``(dim,)``."""
        self._interp.set_tensor(self._in, np.ascontiguousarray(image, self.input_dtype)[None])
        self._interp.invoke()
        return self._interp.get_tensor(self._out).reshape(self.dim)

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"images must have shape (n, {', '.join(map(str, self.input_shape[1:]))}), "
                             f"got {x.shape}")
        if self.input_dtype == np.uint8 and x.dtype != np.uint8:
            raise ValueError(f"this quantised model takes uint8 images, got dtype {x.dtype}")
        out = np.empty((len(x), self.dim), np.float32)
        for i, im in enumerate(x):
            out[i] = self.raw(im)
        if self.scale:  # quantised output: real = scale * (q - zero_point)
            out = (out - self.zero_point) * np.float32(self.scale)
        return out
