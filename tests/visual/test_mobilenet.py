"""MobileNetV2: architecture, dequantisation, and agreement with the TFLite interpreter on Corel5k photos."""
from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.conftest import shared_path

from dcca_jax.visual import images
from dcca_jax.visual import mobilenet

MODEL = ("models", "mobilenet_v2_1.0_224_quant", "mobilenet_v2_1.0_224_quant.tflite")


def _hand_param_count(num_classes=1001):
    """Folded-BN MobileNetV2 1.0 parameter count from the paper's Table 2 (weights + biases)."""
    n = 3 * 3 * 3 * 32 + 32
    c_in = 32
    for t, c, reps, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                          (6, 160, 3, 2), (6, 320, 1, 1)):
        for _ in range(reps):
            h = c_in * t
            if t != 1:
                n += c_in * h + h
            n += 9 * h + h
            n += h * c + c
            c_in = c
    n += 320 * 1280 + 1280
    n += 1280 * num_classes + num_classes
    return n


def test_architecture_shapes_and_param_count():
    model = mobilenet.MobileNetV2()
    x = jnp.zeros((2, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    n = sum(np.prod(v.shape) for v in jax.tree_util.tree_leaves(variables["params"]))
    assert n == _hand_param_count() == 3_489_097
    out = jax.eval_shape(model.apply, variables, x)
    assert out["features"].shape == (2, 1280) and out["logits"].shape == (2, 1001)


def test_dequantise_per_tensor_and_per_channel():
    q = np.array([[0, 128, 255], [10, 20, 30]], np.uint8)
    np.testing.assert_allclose(mobilenet.dequantise(q, np.array([0.5]), np.array([128])), (q.astype(float) - 128) * 0.5)
    s, z = np.array([0.1, 2.0]), np.array([1, -3])
    np.testing.assert_allclose(mobilenet.dequantise(q.astype(np.int8), s, z, 0),
                               [[(0 - 1) * 0.1, (-128 - 1) * 0.1, (-1 - 1) * 0.1], [26.0, 46.0, 66.0]])
    with pytest.raises(ValueError, match="per-channel scale of length 2"):
        mobilenet.dequantise(q, s, z, 1)
    f = np.array([1.5, -2.0], np.float32)
    np.testing.assert_array_equal(mobilenet.dequantise(f, None, None), f)


def test_bad_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        mobilenet.load_tflite_params(tmp_path / "none.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="bad.tflite"):
        mobilenet.load_tflite_params(bad)


@functools.lru_cache(maxsize=1)
def _reference(path, kernels):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {"experimental_op_resolver_type": OpResolverType.BUILTIN_REF} if kernels == "reference" else {}
    with warnings.catch_warnings():  # preserve_all_tensors is "for debugging": that is what we do
        warnings.simplefilter("ignore", UserWarning)
        interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True, **kw)
    interp.allocate_tensors()
    return interp


def _tflite_outputs(model_path, batch, kernels):
    interp = _reference(model_path, kernels)
    detail = {d["name"]: d for d in interp.get_tensor_details()}["MobilenetV2/Logits/AvgPool"]
    scale, zero = detail["quantization"]
    inp = interp.get_input_details()[0]["index"]
    out = interp.get_output_details()[0]["index"]
    feats, probs = [], []
    for im in batch:
        interp.set_tensor(inp, im[None])
        interp.invoke()
        feats.append((interp.get_tensor(detail["index"]).reshape(-1).astype(np.float64) - zero) * scale)
        probs.append(interp.get_tensor(out)[0].astype(np.float64) / 256.0)
    _reference.cache_clear()
    return np.stack(feats), np.stack(probs)


@functools.lru_cache(maxsize=1)
def _jax_outputs(model_path, list_file):
    """16 Corel5k photos (spread over the 50 folders) and the Flax model's outputs, float and uint8-emulating."""
    _, paths = images.read_list_file(list_file)
    batch = images.load_batch(paths[::31][:16])
    assert not batch.failed and batch.images.shape == (16, 224, 224, 3)
    variables = mobilenet.load_tflite_params(model_path)
    x = jnp.asarray(images.normalise(batch.images, normalisation="mobilenet_v2"))
    return batch.images, {e: mobilenet.make_apply_fn(variables, emulate_uint8=e)(x) for e in (True, False)}


@pytest.mark.shared_data
@pytest.mark.parametrize("kernels", ["xnnpack", "reference"])
def test_agrees_with_tflite_interpreter_on_corel5k(kernels):
    pytest.importorskip("ai_edge_litert")
    model_path = shared_path(*MODEL)
    list_file = shared_path("data", "corel5k", "corel5k_test_list.txt")
    u8, jax_out = _jax_outputs(str(model_path), str(list_file))
    ref_feats, ref_probs = _tflite_outputs(model_path, u8, kernels)
    for emulate, min_cos, min_gap in ((True, 0.99, 0.05), (False, 0.98, 0.10)):
        out = jax_out[emulate]
        feats = np.asarray(out["features"], np.float64)
        cos = np.sum(feats * ref_feats, 1) / np.linalg.norm(feats, axis=1) / np.linalg.norm(ref_feats, axis=1)
        assert cos.min() >= min_cos, (emulate, np.round(cos, 4))
        # Top-1: the same class wherever the reference is decided (top-2 probability gap > min_gap). Near-ties
        # (gap of a few uint8 levels) flip between TFLite's own XNNPACK and reference kernels as well; the
        # plain float model (no activation rounding) also flips one image with a 6-8% gap.
        top = np.asarray(out["logits"]).argmax(1)
        sp = np.sort(ref_probs, 1)
        decided = sp[:, -1] - sp[:, -2] > min_gap
        assert decided.sum() >= 8
        np.testing.assert_array_equal(top[decided], ref_probs.argmax(1)[decided])
        top3 = np.argsort(np.asarray(out["logits"]), 1)[:, -3:]
        assert all(r in t for r, t in zip(ref_probs.argmax(1), top3))


@pytest.mark.parametrize("size,stride", [(7, 1), (8, 2), (9, 2), (6, 1)])
def test_depthwise_same_padding_matches_numpy(size, stride):
    rng = np.random.default_rng(size + stride)
    x = rng.standard_normal((2, size, size + 1, 5))
    k = rng.standard_normal((3, 3, 1, 5))
    got = np.asarray(mobilenet.depthwise_conv_same(jnp.asarray(x), jnp.asarray(k), stride=stride))
    # TensorFlow SAME: out = ceil(in / s), total pad = max((out - 1) s + k - in, 0), the smaller half first.
    outs, pads = [], []
    for n in (size, size + 1):
        o = -(-n // stride)
        t = max((o - 1) * stride + 3 - n, 0)
        outs.append(o)
        pads.append((t // 2, t - t // 2))
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    want = np.zeros((2, outs[0], outs[1], 5))
    for a in range(outs[0]):
        for b in range(outs[1]):
            win = xp[:, a * stride:a * stride + 3, b * stride:b * stride + 3, :]
            want[:, a, b] = np.einsum("nijc,ijc->nc", win, k[:, :, 0])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.shared_data
def test_uint8_emulation_agrees_on_200_photos_through_extract():
    """The production path (extract_features, uint8 emulation) against TFLite XNNPACK on 200 test photos."""
    pytest.importorskip("ai_edge_litert")
    from dcca_jax.visual import extract

    model_path = shared_path(*MODEL)
    _, paths = images.read_list_file(shared_path("data", "corel5k", "corel5k_test_list.txt"))
    paths = paths[:200]
    cfg = extract.backbone_config()
    cfg.mobilenet_v2.tflite_path = str(model_path)
    cfg.engine = "jax"  # the JAX port (on a CPU, "auto" would pick LiteRT, tested in test_litert.py)
    res = extract.extract_features(paths, backbone=extract.build_backbone(cfg), batch_size=50)
    assert res.ok.all()
    ref, _ = _tflite_outputs(model_path, images.load_batch(paths).images, "xnnpack")
    cos = np.sum(res.features * ref, 1) / np.linalg.norm(res.features, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99, np.sort(cos)[:5]


# ---------------------------------------------------------------------------------------------- feature levers
@functools.lru_cache(maxsize=1)
def _random_params():
    """A randomly initialised backbone (no logits), read-only: the levers are weight-agnostic."""
    shapes = jax.eval_shape(mobilenet.MobileNetV2(num_classes=0).init, jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(1)  # He-scaled numpy draws: flax's init compiles for about a minute on 2 cores

    def draw(s):
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0
        return jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in), s.shape) if fan_in else rng.normal(0, 0.1, s.shape),
                           jnp.float32)

    return jax.tree_util.tree_map(draw, shapes["params"])


def _images(n=3, size=32, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def test_pool_blocks_shapes_and_the_1280_part_is_the_plain_feature():
    from dcca_jax.finetune import BackboneSegment, LAYERS

    v = {"params": _random_params()}
    x = _images()
    out = mobilenet.make_apply_fn(v, pool_blocks=tuple(mobilenet.POOLABLE))(x)
    assert "logits" not in out and set(out["blocks"]) == set(mobilenet.POOLABLE)
    for name, width in mobilenet.POOLABLE.items():
        assert out["blocks"][name].shape == (3, width)
    np.testing.assert_array_equal(out["blocks"]["Conv_1"], out["features"])
    # an independent forward pass up to expanded_conv_12 (the fine-tuning module), pooled in numpy
    stop = LAYERS.index("expanded_conv_12") + 1
    seg = jax.jit(BackboneSegment(0, stop).apply)({"params": {n: v["params"][n] for n in LAYERS[:stop]}}, x)
    np.testing.assert_allclose(out["blocks"]["expanded_conv_12"], np.asarray(seg).mean(axis=(1, 2)), rtol=1e-5,
                               atol=1e-6)
    blocks = ("expanded_conv_16", "Conv_1")
    want = np.concatenate([np.asarray(out["blocks"][b]) / np.linalg.norm(out["blocks"][b], axis=1, keepdims=True)
                           for b in blocks], axis=1)
    np.testing.assert_allclose(mobilenet.concat_blocks(out["blocks"], blocks, block_norm="l2"), want, rtol=1e-6)
    np.testing.assert_array_equal(mobilenet.concat_blocks(out["blocks"], ("Conv_1",)), out["features"])
    with pytest.raises(ValueError, match="expanded_conv_99"):
        mobilenet.make_feature_fn(v, pool_blocks=("expanded_conv_99",))
    with pytest.raises(ValueError, match="block_norm"):
        mobilenet.make_feature_fn(v, block_norm="zscore")


def test_flip_tta_is_the_mean_of_the_image_and_its_mirror():
    v = {"params": _random_params()}
    x = _images(seed=2)
    flip, dim = mobilenet.make_feature_fn(v, pool_blocks=("expanded_conv_15", "Conv_1"), tta="flip")
    assert dim == 160 + 1280
    mirrored = np.ascontiguousarray(np.flip(x, axis=2))
    # the plain network on both (one compiled function): the image and its numpy mirror in one batch
    both = mobilenet.make_apply_fn(v, pool_blocks=("expanded_conv_15", "Conv_1"))(np.concatenate([x, mirrored]))
    plain = np.concatenate([np.asarray(both["blocks"][b]) for b in ("expanded_conv_15", "Conv_1")], axis=1)
    want = (plain[:len(x)] + plain[len(x):]) / 2
    np.testing.assert_allclose(flip(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())  # float32, batch 3 vs 6
    assert not np.allclose(plain[:len(x)], want, atol=1e-4)  # random images are not mirror-symmetric
    with pytest.raises(ValueError, match="tta"):
        mobilenet.make_feature_fn(v, tta="crops10")


def test_backbone_params_round_trip_and_bad_files(tmp_path):
    params = _random_params()
    path = tmp_path / "ft.npz"
    mobilenet.save_backbone_params(path, params, meta={"seed": 0})
    back = mobilenet.load_backbone_params(path)["params"]
    flat = lambda t: dict(jax.tree_util.tree_flatten_with_path(t)[0])
    assert flat(back).keys() == flat(params).keys()
    for k, a in flat(params).items():  # stored as float32
        np.testing.assert_array_equal(flat(back)[k], np.asarray(a, np.float32))
    with pytest.raises(FileNotFoundError, match="finetuned_backbone.npz"):
        mobilenet.load_backbone_params(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a fine-tuned MobileNetV2 weights file"):
        mobilenet.load_backbone_params(tmp_path / "other.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable npz"):
        mobilenet.load_backbone_params(tmp_path / "garbage.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["Conv_1/conv/kernel"] = arrays["Conv_1/conv/kernel"][..., :640]
    np.savez(tmp_path / "narrow.npz", **arrays)
    with pytest.raises(ValueError, match="Conv_1/conv/kernel"):
        mobilenet.load_backbone_params(tmp_path / "narrow.npz")
    bad = dict(params)
    bad.pop("Conv")
    with pytest.raises(ValueError, match="not a MobileNetV2"):
        mobilenet.save_backbone_params(tmp_path / "x.npz", bad)
