"""AlexNet: torchvision/Caffe weight import checked against an independent numpy forward pass."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcca_jax.visual import alexnet

# ---- independent numpy oracle, written in the source (NCHW, OIHW) layout ------------------------------------


def np_conv(x, w, b, *, stride, pad, groups):
    """NCHW x OIHW convolution by explicit patch extraction (no lax)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    o, ig, k, _ = w.shape
    oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((n, o, oh, ow))
    og = o // groups
    for g in range(groups):
        xs = x[:, g * ig:(g + 1) * ig]
        patches = np.lib.stride_tricks.sliding_window_view(xs, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
        out[:, g * og:(g + 1) * og] = np.einsum("nchwij,ocij->nohw", patches[:, :, :oh, :ow], w[g * og:(g + 1) * og])
    return out + b[None, :, None, None]


def np_maxpool(x, *, ceil_mode):
    n, c, h, w = x.shape

    def size(m):
        return (math.ceil((m - 3) / 2) if ceil_mode else (m - 3) // 2) + 1

    out = np.full((n, c, size(h), size(w)), -np.inf)
    for i in range(size(h)):
        for j in range(size(w)):
            out[:, :, i, j] = x[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(2, 3))
    return out


def np_adaptive_avg(x, o):
    n, c, h, w = x.shape
    out = np.zeros((n, c, o, o))
    for i in range(o):
        for j in range(o):
            h0, h1 = (i * h) // o, -(-((i + 1) * h) // o)
            w0, w1 = (j * w) // o, -(-((j + 1) * w) // o)
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return out


def np_lrn(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    c = x.shape[1]
    out = np.empty_like(x)
    for i in range(c):
        lo, hi = max(0, i - size // 2), min(c, i + size // 2 + 1)
        out[:, i] = x[:, i] / (k + alpha / size * np.sum(x[:, lo:hi] ** 2, axis=1)) ** beta
    return out


def np_alexnet(sd, x_nhwc, layout):
    """fc7 (after ReLU) and fc8 of AlexNet, computed in NCHW exactly as torchvision / Caffe define it."""
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    x = np.transpose(x_nhwc, (0, 3, 1, 2)).astype(np.float64)
    if layout == "torchvision":
        spec = [("features.0", 4, 2, 1, False, True), ("features.3", 1, 2, 1, False, True),
                ("features.6", 1, 1, 1, False, False), ("features.8", 1, 1, 1, False, False),
                ("features.10", 1, 1, 1, False, True)]
        fcs = ["classifier.1", "classifier.4", "classifier.6"]
    else:
        spec = [("conv1", 4, 0, 1, True, True), ("conv2", 1, 2, 2, True, True), ("conv3", 1, 1, 1, False, False),
                ("conv4", 1, 1, 2, False, False), ("conv5", 1, 1, 2, False, True)]
        fcs = ["fc6", "fc7", "fc8"]
    for key, s, p, g, lrn, pool in spec:
        x = relu(np_conv(x, sd[key + ".weight"], sd[key + ".bias"], stride=s, pad=p, groups=g))
        if lrn:
            x = np_lrn(x)
        if pool:
            x = np_maxpool(x, ceil_mode=layout == "caffe")
    x = np_adaptive_avg(x, 6).reshape(x.shape[0], -1)  # torch.flatten(x, 1): channel-first
    h = relu(x @ sd[fcs[0] + ".weight"].T + sd[fcs[0] + ".bias"])
    fc7 = relu(h @ sd[fcs[1] + ".weight"].T + sd[fcs[1] + ".bias"])
    return fc7, fc7 @ sd[fcs[2] + ".weight"].T + sd[fcs[2] + ".bias"]


def random_state_dict(layout, width, num_classes, seed=0):
    """A source-layout state dict with He-scaled random weights (so activations neither vanish nor explode)."""
    rng = np.random.default_rng(seed)
    sizes = alexnet.layer_sizes(layout=layout, width=width)
    convs = alexnet._CONVS[layout]
    sd, c_in = {}, 3
    for name, _, k, _, _, g, _, _ in convs:
        key = alexnet._source_key(layout, name)
        fan_in = c_in // g * k * k
        sd[key + ".weight"] = (rng.standard_normal((sizes[name], c_in // g, k, k)) * np.sqrt(2 / fan_in)).astype(np.float32)
        sd[key + ".bias"] = (0.1 * rng.standard_normal(sizes[name])).astype(np.float32)
        c_in = sizes[name]
    dims = [(sizes["fc6"], c_in * 36), (sizes["fc7"], sizes["fc6"]), (num_classes, sizes["fc7"])]
    for name, (o, i) in zip(("fc6", "fc7", "fc8"), dims):
        key = alexnet._source_key(layout, name)
        sd[key + ".weight"] = (rng.standard_normal((o, i)) * np.sqrt(2 / i)).astype(np.float32)
        sd[key + ".bias"] = (0.1 * rng.standard_normal(o)).astype(np.float32)
    return sd


@pytest.mark.parametrize("layout,size", [("torchvision", 224), ("torchvision", 99), ("caffe", 227)])
def test_import_matches_numpy_oracle(tmp_path, layout, size):
    width, n_cls = 1 / 16, 10
    sd = random_state_dict(layout, width, n_cls)
    path = tmp_path / "alexnet.npz"
    np.savez(path, **sd)
    model, variables = alexnet.load_alexnet(path, layout=layout)
    assert (model.layout, model.width, model.num_classes) == (layout, width, n_cls)
    x = np.random.default_rng(1).standard_normal((2, size, size, 3)).astype(np.float32)
    out = jax.jit(model.apply)(variables, jnp.asarray(x))
    fc7, logits = np_alexnet(sd, x, layout)
    assert out["features"].shape == (2, 256) and out["features"].dtype == jnp.float32
    assert np.mean(fc7 > 0) > 0.2  # the oracle comparison is not vacuous (ReLU not all dead)
    scale = np.abs(fc7).max()
    np.testing.assert_allclose(np.asarray(out["features"]), fc7, atol=1e-4 * scale, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(out["logits"]), logits, atol=1e-4 * np.abs(logits).max(), rtol=1e-4)


def test_safetensors_and_float64(tmp_path):
    from safetensors.numpy import save_file

    sd = random_state_dict("torchvision", 1 / 16, 7, seed=3)
    save_file(sd, str(tmp_path / "w.safetensors"))
    model, variables = alexnet.load_alexnet(tmp_path / "w.safetensors", dtype=jnp.float64)
    x = np.random.default_rng(2).standard_normal((1, 67, 67, 3))
    out = model.apply(variables, jnp.asarray(x))
    assert out["features"].dtype == jnp.float64
    fc7, _ = np_alexnet(sd, x, "torchvision")
    np.testing.assert_allclose(np.asarray(out["features"]), fc7, rtol=1e-10, atol=1e-10)


def test_full_width_param_count_and_shapes():
    # torchvision's alexnet has 61,100,840 parameters (its documented count); BVLC AlexNet 60,965,224.
    for layout, size, expected in (("torchvision", 224, 61_100_840), ("caffe", 227, 60_965_224)):
        model = alexnet.AlexNet(layout=layout)
        x = jnp.zeros((1, size, size, 3), jnp.float32)
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        n = sum(np.prod(v.shape) for v in jax.tree_util.tree_leaves(variables))
        assert n == expected, layout
        out = jax.eval_shape(model.apply, variables, x)
        assert out["features"].shape == (1, 4096) and out["pool5"].shape == (1, 6, 6, 256)


def test_errors(tmp_path):
    sd = random_state_dict("torchvision", 1 / 16, 5)
    bad = dict(sd)
    del bad["classifier.4.weight"]
    with pytest.raises(ValueError, match="classifier.4.weight"):
        alexnet.state_dict_to_variables(bad)
    bad = dict(sd)
    bad["features.3.weight"] = bad["features.3.weight"][:, :2]
    with pytest.raises(ValueError, match=r"features.3.weight.*shape"):
        alexnet.state_dict_to_variables(bad)
    with pytest.raises(ValueError, match="caffe-layout"):
        alexnet.state_dict_to_variables(sd, layout="caffe")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    np.savez(tmp_path / "obj.npz", a=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        alexnet.read_weights(tmp_path / "obj.npz")
    with pytest.raises(ValueError, match="unsupported weights format"):
        alexnet.read_weights(tmp_path / "obj.npy")


def test_lrn_matches_oracle():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 7)) * 30
    got = alexnet.local_response_norm(jnp.asarray(x))
    want = np.transpose(np_lrn(np.transpose(x, (0, 3, 1, 2))), (0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10)


def test_torch_converter_is_optional(tmp_path):
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs PyTorch"):
            alexnet.convert_torch_checkpoint(tmp_path / "x.pth", tmp_path / "x.npz")
        return
    sd = random_state_dict("torchvision", 1 / 16, 4)
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "x.pth")
    keys = alexnet.convert_torch_checkpoint(tmp_path / "x.pth", tmp_path / "x.npz")
    assert keys == sorted(sd)
    back = alexnet.read_weights(tmp_path / "x.npz")
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
