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


def test_ternary_l1_is_exact():
    rng = np.random.default_rng(4)
    a, b = rng.integers(-1, 2, (7, 4032)).astype(np.float32), rng.integers(-1, 2, (9, 4032)).astype(np.float32)
    a[0] = 0
    want = cdist(a.astype(np.float64), b.astype(np.float64), "cityblock")
    np.testing.assert_array_equal(np.asarray(jec.ternary_l1_distances(a, b), np.float64), want)
    np.testing.assert_array_equal(jec.feature_distances("haarq", a, b), jec.l1_distances(a, b))


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


# ------------------------------------------------------------------------------ batched features vs per image

def _reference_image_features(rgb):
    """The per-image implementation the batched one replaced (independent oracle: one image at a time,
    float64, the phase quadrants one-hot averaged)."""
    x = rgb.astype(np.float64) / 255.0
    img = Image.fromarray(rgb)
    grey_h = np.asarray(img.convert("L").resize((64, 64), Image.BILINEAR), np.float64) / 255
    grey_g = np.asarray(img.convert("L").resize((128, 128), Image.BILINEAR), np.float64) / 255

    def hist(v, low, high):
        v = v.reshape(-1, 3)
        lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
        q = np.clip(((v - lo) / (hi - lo) * 16).astype(np.int64), 0, 15)
        h = np.bincount((q[:, 0] * 16 + q[:, 1]) * 16 + q[:, 2], minlength=4096).astype(np.float64)
        return h / h.sum()

    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = x.max(-1), x.min(-1)
    c = mx - mn
    safe = np.where(c > 0, c, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hsv = np.stack([np.where(c > 0, h / 6.0, 0.0), np.where(mx > 0, c / np.where(mx > 0, mx, 1.0), 0.0), mx], -1)
    lin = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    xyz = lin @ np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                          [0.0193339, 0.1191920, 0.9503041]]).T / np.array([0.95047, 1.0, 1.08883])
    d = 6.0 / 29.0
    f = np.where(xyz > d ** 3, np.cbrt(xyz), xyz / (3 * d * d) + 4.0 / 29.0)
    lab = np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], -1)
    haar = []
    for b_ in (2, 4, 8):
        m = grey_h.reshape(64 // b_, 2, b_ // 2, 64 // b_, 2, b_ // 2).mean(axis=(2, 5))
        m00, m01, m10, m11 = m[:, 0, :, 0], m[:, 0, :, 1], m[:, 1, :, 0], m[:, 1, :, 1]
        haar += [((m00 + m01 - m10 - m11) / 2).ravel(), ((m00 + m10 - m01 - m11) / 2).ravel(),
                 ((m00 + m11 - m01 - m10) / 2).ravel()]
    haar = np.concatenate(haar)
    bank = jec.gabor_bank(128)
    resp = np.fft.ifft2(np.fft.fft2(grey_g - grey_g.mean())[None] * bank)  # (12, 128, 128)
    mag = np.abs(resp).reshape(12, 4, 32, 4, 32).mean(axis=(2, 4)).ravel()
    quad = ((np.angle(resp) + np.pi) / (np.pi / 2)).astype(np.int64).clip(0, 3)
    gaborq = (quad[..., None] == np.arange(4)).reshape(12, 4, 32, 4, 32, 4).mean(axis=(2, 4)).ravel()
    return {"rgb": hist(x, (0, 0, 0), (1, 1, 1)), "hsv": hist(hsv, (0, 0, 0), (1, 1, 1)),
            "lab": hist(lab, (0, -128, -128), (100, 128, 128)), "haar": haar,
            "haarq": np.where(np.abs(haar) <= 0.5 / 255, 0.0, np.sign(haar)), "gabor": mag, "gaborq": gaborq}


def _assert_batched_equals_per_image(images):
    got = jec.batch_features(images)
    for i, im in enumerate(images):
        want = _reference_image_features(im)
        for k in jec.FEATURES:
            np.testing.assert_allclose(got[k][i], want[k], rtol=0, atol=1e-6, err_msg=f"image {i}, feature {k}")


def test_batched_features_equal_per_image_code_synthetic():
    rng = np.random.default_rng(7)
    images = []
    for i in range(20):  # Corel's 3:2 and 2:3 shapes, squares, odd sizes; smooth and noisy content
        h, w = [(128, 192), (192, 128), (128, 128), (97, 61)][i % 4]
        yy, xx = np.mgrid[:h, :w] / max(h, w)
        smooth = np.stack([np.sin(6 * xx + i), np.cos(5 * yy - i), np.sin(3 * (xx + yy))], -1) * 0.5 + 0.5
        noise = rng.random((h, w, 3)) * (i % 3) / 4
        images.append((np.clip(smooth + noise, 0, 1) * 255).astype(np.uint8))
    images[0][:] = 128  # a grey image (zero texture, hue 0)
    _assert_batched_equals_per_image(images)


def test_batched_features_equal_per_image_code_corel5k():
    from dcca_jax.visual import images as images_lib
    from tests.conftest import shared_path

    _, paths = images_lib.read_list_file(shared_path("data", "corel5k", "corel5k_test_list.txt"))
    # 148030: a training photo where another FFT's rounding (scipy's) moved pixels across a phase quadrant
    paths = list(paths[:19]) + [shared_path("data", "corel5k", "148000", "148030.jpeg")]
    images = [images_lib.read_image(p, min_side=256, max_work_pixels=1 << 20) for p in paths]
    _assert_batched_equals_per_image(images)


def test_colour_cache_gives_the_bins_of_the_conversions():
    rng = np.random.default_rng(8)
    levels = rng.integers(0, 256, (20000, 3), dtype=np.uint8)
    levels[:8] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [1, 2, 3],
                  [254, 255, 253]]
    cache = jec.ColourBinCache()
    for space, (convert, low, high) in {"rgb": (lambda v: v / 255.0, (0, 0, 0), (1, 1, 1)),
                                        "hsv": (lambda v: jec.rgb_to_hsv(v / 255.0), (0, 0, 0), (1, 1, 1)),
                                        "lab": (lambda v: jec.rgb_to_lab(v / 255.0), (0, -128, -128), (100, 128, 128))
                                        }.items():
        want = jec.joint_histograms(convert(levels), np.ones(len(levels), int), low=low, high=high).argmax(1)
        np.testing.assert_array_equal(cache.bins(levels[:12000], space), want[:12000], err_msg=space)
        np.testing.assert_array_equal(cache.bins(levels, space), want, err_msg=space)  # part met, part new
    images = [rng.integers(0, 256, (30 + i, 20, 3), dtype=np.uint8) for i in range(3)]
    direct, looked_up = jec.batch_features(images), jec.batch_features(images, colour_cache=cache)
    for k in jec.FEATURES:
        np.testing.assert_array_equal(looked_up[k], direct[k])
