"""Batched extraction: padding, failures, cache atomicity and resume, both backbones."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from dcca_jax.visual import extract
from dcca_jax.visual import images

SIZE = 16


def _toy_backbone(calls=None, fail_after=None):
    """Features = per-channel mean and max of the normalised image (a numpy oracle is trivial)."""

    @jax.jit
    def f(x):
        return jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=1)

    def apply(x):
        if calls is not None:
            calls.append(x.shape)
            if fail_after is not None and len(calls) > fail_after:
                raise KeyboardInterrupt("simulated interruption")
        return f(x)

    pre = images.Preprocess(size=SIZE, crop_fraction=1.0, normalisation="mobilenet_v2")
    return extract.Backbone("toy", apply, pre, 6, {"backbone": "toy"})


def _oracle(path):
    x = images.normalise(images.load_image(path, size=SIZE, crop_fraction=1.0), normalisation="mobilenet_v2")
    return np.concatenate([x.mean(axis=(0, 1)), x.max(axis=(0, 1))])


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(11):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        if i in (3, 8):
            p.write_bytes(b"corrupt" * 5)
        else:
            Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_features_failures_and_fixed_batch_shape(image_files):
    calls = []
    res = extract.extract_features(image_files, backbone=_toy_backbone(calls), batch_size=4, shard_size=8)
    assert all(shape == (4, SIZE, SIZE, 3) for shape in calls)  # the last, partial batch is padded
    assert res.features.shape == (11, 6) and res.features.dtype == np.float32
    assert res.ok.tolist() == [i not in (3, 8) for i in range(11)]
    assert [(f["index"], f["path"]) for f in res.failed] == [(3, image_files[3]), (8, image_files[8])]
    assert all(np.isnan(res.features[[3, 8]]).ravel())
    for i in np.nonzero(res.ok)[0]:
        np.testing.assert_allclose(res.features[i], _oracle(image_files[i]), rtol=1e-6, atol=1e-6)


def test_cache_resume_after_interruption(image_files, tmp_path):
    cache = tmp_path / "cache"
    calls = []
    with pytest.raises(KeyboardInterrupt):
        # shard_size 4 = one batch per shard: shards 0 and 1 complete, the third call is interrupted.
        extract.extract_features(image_files, backbone=_toy_backbone(calls, fail_after=2), batch_size=4,
                                 shard_size=4, cache_dir=cache)
    assert sorted(f for f in os.listdir(cache) if f.endswith(".npy")) == ["shard_00000.npy", "shard_00001.npy"]
    assert not [f for f in os.listdir(cache) if ".tmp" in f]  # no half-written files left behind

    calls = []
    res = extract.extract_features(image_files, backbone=_toy_backbone(calls), batch_size=4, shard_size=4,
                                   cache_dir=cache)
    assert len(calls) == 1 and res.n_computed == 3  # only the last shard (images 8..10) was recomputed
    full = extract.extract_features(image_files, backbone=_toy_backbone(), batch_size=4, shard_size=4)
    np.testing.assert_array_equal(res.features, full.features)
    assert res.failed == full.failed and res.ok.tolist() == full.ok.tolist()

    again = extract.extract_features(image_files, backbone=_toy_backbone(), batch_size=4, shard_size=4,
                                     cache_dir=cache)
    assert again.n_computed == 0
    np.testing.assert_array_equal(again.features, full.features)

    with pytest.raises(ValueError, match="different job"):
        extract.extract_features(image_files[:-1], backbone=_toy_backbone(), batch_size=4, shard_size=4,
                                 cache_dir=cache)
    with open(cache / "index.json") as f:
        assert json.load(f)["n"] == 11


def test_alexnet_backbone_through_config(image_files, tmp_path):
    from dcca_jax.visual import alexnet
    from tests.visual.test_alexnet import np_alexnet, random_state_dict

    sd = random_state_dict("torchvision", 1 / 16, 5)
    np.savez(tmp_path / "a.npz", **sd)
    cfg = extract.backbone_config()
    cfg.backbone = "alexnet"
    cfg.alexnet.weights_path = str(tmp_path / "a.npz")
    bb = extract.build_backbone(cfg)
    assert bb.dim == 256 and bb.preprocess.normalisation == "alexnet"
    res = extract.extract_features(image_files[:3], backbone=bb, batch_size=2)
    x = np.stack([images.normalise(images.load_image(p, size=224, crop_fraction=0.875), normalisation="alexnet")
                  for p in image_files[:3]])
    want, _ = np_alexnet(sd, x, "torchvision")
    np.testing.assert_allclose(res.features, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert alexnet.layer_sizes(width=1 / 16)["fc7"] == 256


def test_bad_config():
    cfg = extract.backbone_config()
    cfg.backbone = "vgg16"
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        extract.build_backbone(cfg)
    cfg = extract.backbone_config()
    with pytest.raises(ValueError, match="tflite_path is empty"):
        extract.build_backbone(cfg)
    assert isinstance(cfg, ml_collections.ConfigDict)


@pytest.mark.parametrize("workers", [1, 3])
def test_decode_pool_keeps_order_and_failures(image_files, workers):
    """Batches of 2 over a pool of workers (several batches in flight) land in input order, failures recorded."""
    res = extract.extract_features(image_files, backbone=_toy_backbone(), batch_size=2, shard_size=4,
                                   decode_workers=workers, prefetch=2)
    assert res.ok.tolist() == [i not in (3, 8) for i in range(11)]
    assert [(f["index"], f["path"]) for f in res.failed] == [(3, image_files[3]), (8, image_files[8])]
    want = np.stack([_oracle(p) for p in np.asarray(image_files)[res.ok]])
    np.testing.assert_allclose(res.features[res.ok], want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="decode_workers must be >= 1"):
        extract.extract_features(image_files, backbone=_toy_backbone(), decode_workers=0)


def test_uint8_backbone_gets_unpadded_uint8_images(image_files):
    """A backbone with ``input_uint8`` (the LiteRT engine) sees each batch's decoded images as they are."""
    seen = []

    def apply(u8):
        seen.append((u8.dtype, u8.shape))
        return u8.reshape(len(u8), -1).astype(np.float32).mean(1, keepdims=True)

    pre = images.Preprocess(size=SIZE, crop_fraction=1.0, normalisation="mobilenet_v2")
    bb = extract.Backbone("toy8", apply, pre, 1, {"backbone": "toy8"}, engine="litert", input_uint8=True)
    res = extract.extract_features(image_files, backbone=bb, batch_size=4, decode_workers=2)
    assert [s for _, s in seen] == [(3, SIZE, SIZE, 3), (4, SIZE, SIZE, 3), (2, SIZE, SIZE, 3)]  # 3, 8 failed
    assert all(d == np.uint8 for d, _ in seen)
    want = [images.load_image(p, size=SIZE, crop_fraction=1.0).astype(np.float64).mean() for p in
            np.asarray(image_files)[res.ok]]
    np.testing.assert_allclose(res.features[res.ok, 0], want, rtol=1e-6)


def test_mobilenet_levers_through_config_change_features_and_fingerprint(image_files, tmp_path):
    from dcca_jax.visual import mobilenet
    from tests.visual.test_mobilenet import _random_params

    params = _random_params()
    mobilenet.save_backbone_params(tmp_path / "a.npz", params)
    tweaked = jax.tree_util.tree_map(lambda a: a, params)
    tweaked["Conv_1"] = {"conv": {"kernel": params["Conv_1"]["conv"]["kernel"] * 1.5,
                                  "bias": params["Conv_1"]["conv"]["bias"]}}
    mobilenet.save_backbone_params(tmp_path / "b.npz", tweaked)
    cfg = extract.backbone_config()
    cfg.mobilenet_v2.finetuned_checkpoint = str(tmp_path / "a.npz")
    cfg.mobilenet_v2.input_size = 32
    cfg.crop_fraction = 1.0
    bb_a = extract.build_backbone(cfg)
    assert bb_a.needs_jax and bb_a.dim == 1280 and bb_a.preprocess.size == 32
    engine, why = extract.resolve_engine(cfg)  # "auto": a lever keeps MobileNetV2 on the JAX port
    assert bb_a.engine == engine == "jax" and "finetuned_checkpoint" in why and "input_size" in why
    paths = [p for i, p in enumerate(image_files[:5]) if i != 3]
    res_a = extract.extract_features(paths, backbone=bb_a, batch_size=4, cache_dir=tmp_path / "cache")
    x = np.stack([images.normalise(images.load_image(p, size=32, crop_fraction=1.0), normalisation="mobilenet_v2")
                  for p in paths])
    want = mobilenet.make_apply_fn({"params": params})(x)["features"]  # the saved weights, applied directly
    np.testing.assert_allclose(res_a.features, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    cfg.mobilenet_v2.finetuned_checkpoint = str(tmp_path / "b.npz")
    bb_b = extract.build_backbone(cfg)
    assert bb_b.fingerprint["weights_sha256"] != bb_a.fingerprint["weights_sha256"]
    assert not np.allclose(extract.extract_features(paths, backbone=bb_b, batch_size=4).features, res_a.features)
    cfg.mobilenet_v2.finetuned_checkpoint = str(tmp_path / "a.npz")
    cfg.mobilenet_v2.pool_blocks = ("expanded_conv_16", "Conv_1")
    cfg.mobilenet_v2.block_norm = "l2"
    cfg.mobilenet_v2.tta = "flip"
    bb_c = extract.build_backbone(cfg)
    assert bb_c.dim == 1600 and {"pool_blocks", "block_norm", "tta"} <= set(bb_c.fingerprint)
    with pytest.raises(ValueError, match="different job"):  # the cache index tells the levers apart
        extract.extract_features(paths, backbone=bb_c, batch_size=4, cache_dir=tmp_path / "cache")
    assert extract.changed_levers(extract.backbone_config().mobilenet_v2) == {}
    cfg.mobilenet_v2.finetuned_checkpoint = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        extract.build_backbone(cfg)
