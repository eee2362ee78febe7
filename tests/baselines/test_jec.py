"""JEC features, distances and greedy label transfer against colorsys/scipy oracles and hand computations."""
import colorsys

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist
from scipy.stats import entropy

from dcca_jax.baselines import jec


def test_rgb_to_hsv_matches_colorsys():
    rgb = np.random.default_rng(0).random((200, 3))
    rgb[:5] = [[0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]
    np.testing.assert_allclose(jec.rgb_to_hsv(rgb), [colorsys.rgb_to_hsv(*p) for p in rgb], atol=1e-12)


def test_rgb_to_lab_reference_colours():
    # published sRGB (D65) -> CIE-LAB values
    lab = jec.rgb_to_lab(np.array([[1.0, 0, 0], [1, 1, 1], [0, 0, 0], [0, 0, 1]]))
    np.testing.assert_allclose(lab[0], [53.24, 80.09, 67.20], atol=0.02)
    np.testing.assert_allclose(lab[1], [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(lab[2], [0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(lab[3], [32.30, 79.19, -107.86], atol=0.02)


def test_joint_histogram_matches_histogramdd():
    v = np.random.default_rng(1).random((500, 3)) * [100, 256, 256] - [0, 128, 128]
    h = jec.joint_histogram(v, low=(0, -128, -128), high=(100, 128, 128), bins=4)
    ref, _ = np.histogramdd(v, bins=4, range=[(0, 100), (-128, 128), (-128, 128)])
    np.testing.assert_allclose(h, ref.ravel() / 500)


def test_haar_responses_hand_case_and_loop():
    g = np.array([[[1.0, 0], [0, 0]]])
    np.testing.assert_allclose(jec.haar_responses(g, blocks=(2,)), [[0.5, 0.5, 0.5]])
    rng = np.random.default_rng(2)
    img = rng.random((1, 8, 8))
    got = jec.haar_responses(img, blocks=(4,))[0]
    want = []
    for kind in range(3):
        for bi in range(2):
            for bj in range(2):
                blk = img[0, 4 * bi:4 * bi + 4, 4 * bj:4 * bj + 4]
                m = [[blk[:2, :2].mean(), blk[:2, 2:].mean()], [blk[2:, :2].mean(), blk[2:, 2:].mean()]]
                want.append([(m[0][0] + m[0][1] - m[1][0] - m[1][1]) / 2, (m[0][0] + m[1][0] - m[0][1] - m[1][1]) / 2,
                             (m[0][0] + m[1][1] - m[0][1] - m[1][0]) / 2][kind])
    np.testing.assert_allclose(got, want)
    np.testing.assert_array_equal(jec.quantise_haar(np.array([0.3, -0.2, 0.001])), [1, -1, 0])


def test_gabor_picks_grating_orientation_and_scale():
    x = np.arange(128)
    grating = 0.5 + 0.5 * np.cos(2 * np.pi * 0.125 * x)[None, :].repeat(128, 0)  # varies along x
    mag, hist = jec.gabor_features(grating[None])
    per_filter = mag.reshape(12, 16).mean(1)  # filters ordered (freq, angle)
    assert np.argmax(per_filter) == 1 * 4 + 0  # f = 1/8, angle 0
    np.testing.assert_allclose(hist.reshape(12 * 16, 4).sum(1), 1.0)


def test_distances_against_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.random((7, 30)), rng.random((9, 30))
    np.testing.assert_allclose(jec.l1_distances(a, b), cdist(a, b, "cityblock"), rtol=1e-10)
    ha, hb = a / a.sum(1, keepdims=True), b / b.sum(1, keepdims=True)
    ha[0, :5] = 0
    ha[0] /= ha[0].sum()
    sa, sb = (ha + 1e-4), (hb + 1e-4)
    want = np.array([[entropy(sa[i], sb[j]) for j in range(9)] for i in range(7)])
    np.testing.assert_allclose(jec.kl_distances(ha, hb), want, rtol=1e-8)


def test_jec_distances_scaled_average():
    rng = np.random.default_rng(4)
    tr = {f: rng.random((20, 6)) for f in jec.FEATURES}
    q = {f: rng.random((3, 6)) for f in jec.FEATURES}
    scales = jec.distance_scales(tr, n_scale=20)
    np.testing.assert_allclose(scales["rgb"], cdist(tr["rgb"], tr["rgb"], "cityblock").max())
    d = jec.jec_distances(q, tr, scales=scales, features=("rgb", "hsv"))
    want = (cdist(q["rgb"], tr["rgb"], "cityblock") / scales["rgb"]
            + cdist(q["hsv"], tr["hsv"], "cityblock") / scales["hsv"]) / 2
    np.testing.assert_allclose(d, want, rtol=1e-10)


def _transfer_case():
    y = np.zeros((7, 6))
    for i, tags in enumerate([{0, 1}, {2, 3}, {2, 4}, {5}, {0, 2}, {1, 4}, {1, 4}]):
        y[i, list(tags)] = 1
    d = np.array([[0.1, 0.2, 0.3, 0.4, 0.9, 0.9, 0.9]])
    return d, y


def test_jec_transfer_hand_computed_greedy_order():
    d, y = _transfer_case()
    # step 1: nearest tags {0, 1} by frequency (w1: 3, w0: 2); step 2 among t1..t3: co-occurrence x local
    # frequency: w2 1 x 2 = 2, w4 2 x 1 = 2 (tie -> frequency 3 = 3 -> lower index), w3 0, w5 0.
    s = jec.jec_transfer(d, y, n_tags=4, k=4)
    np.testing.assert_array_equal(np.argsort(-s[0], kind="stable")[:4], [1, 0, 2, 4])
    assert np.isneginf(s[0, [3, 5]]).all()
    s5 = jec.jec_transfer(d, y, n_tags=5, k=4)
    np.testing.assert_array_equal(np.argsort(-s5[0], kind="stable")[:5], [1, 0, 2, 4, 3])
    s1 = jec.jec_transfer(d, y, n_tags=1, k=4)
    assert np.isfinite(s1[0]).sum() == 1 and s1[0, 1] > 0
    # the neighbours hold only 6 distinct tags: at most 6 are transferred
    assert np.isfinite(jec.jec_transfer(d, y, n_tags=6, k=2)[0]).sum() == 4


def test_compute_features_cache(tmp_path):
    rng = np.random.default_rng(5)
    paths = []
    for i, shape in enumerate([(40, 60, 3), (60, 40, 3)]):
        p = tmp_path / f"im{i}.png"
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(p)
        paths.append(p)
    cache = tmp_path / "c" / "jec.npz"
    f = jec.compute_jec_features(paths, cache_path=cache)
    assert cache.exists() and f["rgb"].shape == (2, 4096) and f["gaborq"].shape == (2, 768)
    np.testing.assert_allclose(f["rgb"].sum(1), 1, rtol=1e-5)
    again = jec.compute_jec_features(paths, cache_path=cache)
    for k in jec.FEATURES:
        np.testing.assert_array_equal(f[k], again[k])
    one = jec.compute_jec_features(paths[:1], cache_path=cache)  # another list: recomputed, not reused
    np.testing.assert_array_equal(one["lab"], f["lab"][:1])
    # An unreadable file is listed, not fatal; a file an earlier stage skipped is not read again.
    got = jec.compute_jec_features([paths[0], tmp_path / "missing.png", paths[1]], skip={str(paths[1]): "bad"})
    assert got.ok.tolist() == [True, False, False] and np.isnan(got["rgb"][1:]).all()
    assert [(f["index"], f["path"].endswith("missing.png")) for f in got.failed] == [(1, True), (2, False)]
    assert "not found" in got.failed[0]["reason"] and got.failed[1]["reason"] == "skipped: bad"
    np.testing.assert_array_equal(got["gabor"][0], f["gabor"][0])


def test_features_of_small_images_are_those_of_the_decoded_file(tmp_path):
    # The synthetic set's 128x128 images (and Corel5k's 192x128) are under JEC's working size: the reader
    # hands over exactly the decoded pixels, so the hand-crafted backbone's features did not change.
    from dcca_jax.data import synthetic

    cfg = synthetic.synthetic_config()
    cfg.n_images, cfg.image_size = 6, 128
    root = synthetic.generate(tmp_path / "syn", config=cfg)
    paths = sorted((root / "images").glob("*.png"))[:3]
    got = jec.compute_jec_features(paths)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            want = jec.image_features(np.asarray(im.convert("RGB")))
        for k in jec.FEATURES:
            np.testing.assert_array_equal(got[k][i], want[k].astype(np.float32))
    # A 1200x900 photo is read at 400x300 (shorter side kept >= 256).
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (900, 1200, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as im:
        small = np.asarray(im.reduce(3))
    big = jec.compute_jec_features([tmp_path / "b.png"])
    np.testing.assert_allclose(big["rgb"][0], jec.image_features(small)["rgb"], atol=1e-7)
