"""Tests of dcca_jax.visual.augment: deterministic augmentation, crop/flip/jitter against numpy oracles, the loader."""
import math

import numpy as np
import pytest
from PIL import Image

from dcca_jax.visual import augment
from dcca_jax.visual.images import ImageLoadError, load_image


def _write_images(tmp_path, n=6, shape=(24, 36)):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        a = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        p = tmp_path / f"img{i}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def _config(**kw):
    c = augment.augment_config()
    c.size = 16
    for k, v in kw.items():
        c[k] = v
    return c


def test_decoded_images_roundtrip(tmp_path):
    paths = _write_images(tmp_path, n=3)
    d = augment.DecodedImages(paths)
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(d[i], np.asarray(Image.open(p).convert("RGB")))
    assert d.ok == [0, 1, 2] and d.failed == []
    assert d.nbytes == 3 * 24 * 36 * 3


def test_augmentation_deterministic_and_differs_across_epochs(tmp_path):
    d = augment.DecodedImages(_write_images(tmp_path, n=2))
    c = _config()
    a = augment.augment_image(d[0], augment.image_rng(3, 1, 0), c)
    b = augment.augment_image(d[0], augment.image_rng(3, 1, 0), c)
    np.testing.assert_array_equal(a, b)
    other_epoch = augment.augment_image(d[0], augment.image_rng(3, 2, 0), c)
    other_seed = augment.augment_image(d[0], augment.image_rng(4, 1, 0), c)
    assert np.abs(a - other_epoch).max() > 1.0
    assert np.abs(a - other_seed).max() > 1.0
    assert a.shape == (16, 16, 3) and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 255


def test_loader_batches_independent_of_layout_and_threads(tmp_path):
    d = augment.DecodedImages(_write_images(tmp_path, n=5))
    c = _config()
    order = [4, 0, 3, 1, 2]
    l1 = augment.BatchLoader(d, c, batch_size=2, train=True, seed=7, num_workers=1, prefetch=1)
    l2 = augment.BatchLoader(d, c, batch_size=3, train=True, seed=7, num_workers=2, prefetch=3)
    b1 = np.concatenate(list(l1.batches(order, epoch=5)))
    b2 = np.concatenate(list(l2.batches(order, epoch=5)))
    np.testing.assert_array_equal(b1, b2)
    assert [len(b) for b in l1.batches(order, epoch=5)] == [2, 2, 1]
    # each row is the augmented image of that index, normalised (u - 128) / 128
    for row, i in zip(b1, order):
        want = augment.augment_image(d[i], augment.image_rng(7, 5, i), c)
        np.testing.assert_allclose(row, (want - 128.0) / 128.0, rtol=0, atol=1e-6)
    # resuming from batch 1 gives the remaining batches
    rest = np.concatenate(list(l1.batches(order, epoch=5, start_batch=1)))
    np.testing.assert_array_equal(rest, b1[2:])


def test_full_crop_and_flip_match_numpy_oracle(tmp_path):
    d = augment.DecodedImages(_write_images(tmp_path, n=1, shape=(24, 36)))
    img = d[0]
    r = 36 / 24
    c = _config(scale=(1.0, 1.0), ratio=(r, r), brightness=0.0, contrast=0.0, saturation=0.0)
    resized = np.asarray(Image.fromarray(img).resize((16, 16), Image.Resampling.BILINEAR, reducing_gap=None),
                         np.float32)
    flips = 0
    for idx in range(20):
        out = augment.augment_image(img, augment.image_rng(0, 0, idx), c)
        # replay the random stream: area, log-ratio, top, left, flip
        rng = augment.image_rng(0, 0, idx)
        rng.uniform(1.0, 1.0)
        rng.uniform(math.log(r), math.log(r))
        assert rng.integers(0, 1) == 0 and rng.integers(0, 1) == 0
        flip = rng.uniform() < 0.5
        flips += flip
        np.testing.assert_array_equal(out, resized[:, ::-1] if flip else resized)
    assert 0 < flips < 20


def test_random_crop_box_is_inside_and_matches_slicing(tmp_path):
    d = augment.DecodedImages(_write_images(tmp_path, n=1, shape=(30, 40)))
    img = d[0]
    c = _config(scale=(0.2, 0.6), flip=False, brightness=0.0, contrast=0.0, saturation=0.0)
    for idx in range(30):
        left, top, w, h = augment.random_resized_crop_box(30, 40, augment.image_rng(1, 0, idx), scale=c.scale,
                                                          ratio=c.ratio)
        assert 0 <= left and left + w <= 40 and 0 <= top and top + h <= 30
        assert 0.2 * 1200 * 0.8 <= w * h <= 0.6 * 1200 * 1.2  # rounding of w, h
        assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15
        out = augment.augment_image(img, augment.image_rng(1, 0, idx), c)
        oracle = np.asarray(Image.fromarray(np.ascontiguousarray(img[top:top + h, left:left + w])).resize(
            (16, 16), Image.Resampling.BILINEAR, reducing_gap=None), np.float32)
        np.testing.assert_array_equal(out, oracle)


def test_brightness_jitter_matches_oracle_and_saturation_keeps_grey(tmp_path):
    d = augment.DecodedImages(_write_images(tmp_path, n=1, shape=(16, 16)))
    img = d[0]
    c = _config(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, brightness=0.5, contrast=0.0, saturation=0.0)
    out = augment.augment_image(img, augment.image_rng(2, 0, 0), c)
    rng = augment.image_rng(2, 0, 0)
    rng.uniform(1.0, 1.0), rng.uniform(0.0, 0.0), rng.integers(0, 1), rng.integers(0, 1)
    f = np.float32(rng.uniform(0.5, 1.5))
    np.testing.assert_allclose(out, np.clip(img.astype(np.float32) * f, 0, 255), rtol=1e-6)
    grey = np.repeat(img[..., :1], 3, axis=2)  # R = G = B: saturation changes nothing
    cs = _config(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, brightness=0.0, contrast=0.0, saturation=0.9)
    np.testing.assert_allclose(augment.augment_image(grey, augment.image_rng(0, 0, 0), cs), grey, atol=1e-3)


def test_eval_view_matches_images_load_image(tmp_path):
    paths = _write_images(tmp_path, n=2)
    d = augment.DecodedImages(paths)
    c = _config(crop_fraction=0.875)
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(augment.eval_image(d[i], c), load_image(p, size=16, crop_fraction=0.875))


def test_corrupt_file_is_named_or_skipped(tmp_path):
    paths = _write_images(tmp_path, n=2)
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageLoadError, match="broken.jpeg"):
        augment.DecodedImages([paths[0], bad, paths[1]])
    d = augment.DecodedImages([paths[0], bad, paths[1]], on_error="skip")
    assert d.ok == [0, 2] and d.failed[0][0] == 1 and d.failed[0][1].endswith("broken.jpeg")
    loader = augment.BatchLoader(d, _config(), batch_size=2, train=False)
    with pytest.raises(ImageLoadError, match="broken.jpeg"):
        list(loader.batches([0, 1, 2]))
    with pytest.raises(ImageLoadError, match="missing.png"):
        augment.DecodedImages([tmp_path / "missing.png"])


def test_bad_config_raises():
    with pytest.raises(ValueError, match="scale"):
        augment.BatchLoader(None, _config(scale=(0.5, 1.5)), batch_size=2, train=True)
    with pytest.raises(ValueError, match="brightness"):
        augment.BatchLoader(None, _config(brightness=1.5), batch_size=2, train=True)


def test_random_false_gives_the_evaluation_view(tmp_path):
    d = augment.DecodedImages(_write_images(tmp_path, n=3))
    c = _config(random=False)
    got = np.concatenate(list(augment.BatchLoader(d, c, batch_size=2, train=True, seed=1).batches([2, 0, 1], epoch=3)))
    want = np.stack([(augment.eval_image(d[i], c) - 128.0) / 128.0 for i in (2, 0, 1)])
    np.testing.assert_allclose(got, want, atol=1e-6)
