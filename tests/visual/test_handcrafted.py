"""The hand-crafted backbone: training statistics fixed, so an image's feature does not depend on its batch."""
import numpy as np
import pytest

from dcca_jax.visual import handcrafted


def _jec(n, seed):
    rng = np.random.default_rng(seed)
    return {"hsv": rng.random((n, 4096)), "lab": rng.random((n, 4096)), "gabor": rng.random((n, 192)) * 3}


def test_batch_statistics_give_the_old_formula():
    f = _jec(7, 0)
    mean, std = handcrafted.gabor_statistics(f)
    x = handcrafted.handcrafted_from_jec(f, gabor_mean=mean, gabor_std=std)
    g = (f["gabor"] - f["gabor"].mean(0)) / (f["gabor"].std(0) + 1e-6) / np.sqrt(192)
    hsv = np.sqrt(f["hsv"].reshape(7, 8, 2, 8, 2, 8, 2).sum(axis=(2, 4, 6)).reshape(7, 512))
    assert x.shape == (7, handcrafted.DIM) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, :512], hsv, rtol=1e-6)
    np.testing.assert_allclose(x[:, 1024:], g, rtol=1e-5, atol=1e-6)


def test_one_image_alone_equals_its_row_in_a_batch():
    train, test = _jec(20, 1), _jec(5, 2)
    mean, std = handcrafted.gabor_statistics(train)
    batch = handcrafted.handcrafted_from_jec(test, gabor_mean=mean, gabor_std=std)
    one = handcrafted.handcrafted_from_jec({k: v[3:4] for k, v in test.items()}, gabor_mean=mean, gabor_std=std)
    np.testing.assert_array_equal(one[0], batch[3])
    ok = np.ones(20, bool)
    ok[0] = False
    assert not np.allclose(handcrafted.gabor_statistics(train, ok)[0], mean)
    with pytest.raises(ValueError, match="do not match"):
        handcrafted.handcrafted_from_jec(test, gabor_mean=mean[:10], gabor_std=std)
