r"""JEC, the Joint Equal Contribution baseline of Makadia, Pavlovic and Kumar (ECCV 2008).

Seven global features per image, each with its own distance:

====== ====================================================================== ==========
name   feature                                                                distance
====== ====================================================================== ==========
rgb    joint RGB histogram, 16 bins per channel (4,096 bins)                   L1
hsv    joint HSV histogram, 16 bins per channel (4,096 bins)                   L1
lab    joint CIE-LAB histogram, 16 bins per channel (4,096 bins)               KL
haar   Haar responses (horizontal, vertical, diagonal) of a 64x64 grey image   L1
       in non-overlapping blocks of 2, 4 and 8 pixels (4,032 values)
haarq  the same responses quantised to -1 / 0 / +1                            L1
gabor  mean Gabor magnitude (3 scales x 4 orientations) in a 4x4 grid of a     L1
       128x128 grey image (192 values)
gaborq histogram of the Gabor phase quantised to 4 quadrants, per filter and   L1
       grid cell (768 values)
====== ====================================================================== ==========

JEC distance: each feature's distances are divided by their maximum over training pairs (so each lies in
[0, 1]) and the seven are averaged with equal weights (:func:`jec_distances`).  Label transfer is Makadia's greedy
procedure (:func:`jec_transfer`): the nearest neighbour's tags ranked by training frequency first, then tags of
the next neighbours ranked by co-occurrence with those tags times their local frequency.

Parameters the paper does not pin down and that are chosen here: the 16-bin LAB ranges (L in [0, 100], a and b
in [-128, 128)); KL(query || training) on histograms smoothed with 1e-4 per bin; the Haar block sizes (2, 4, 8) on
a 64x64 resize and a dead zone of half a grey level for HaarQ; the Gabor filters (one-sided Gaussians in the
frequency domain at 1/4, 1/8 and 1/16 cycle per pixel, bandwidth one octave) on a 128x128 resize; the maximum of
each distance estimated on ``n_scale`` training rows against all training images.  Images are resized to squares
for the texture features (Corel5k photos are 3:2 or 2:3).  Files are read by the package's one reader
(:func:`dcca_jax.visual.images.open_image`) at a working size (shorter side shrunk towards 256 pixels, at most
2^20 pixels; smaller images as decoded), and an unreadable file is listed, not fatal.

References:
  Makadia, Pavlovic, Kumar. A new baseline for image annotation. ECCV 2008.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pathlib
import zipfile
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.typing import ArrayLike
from PIL import Image

from dcca_jax._io import atomic_save_npz
from dcca_jax.visual import images as images_lib

FEATURES = ("rgb", "hsv", "lab", "haar", "haarq", "gabor", "gaborq")
KL_FEATURES = ("lab",)
_TERNARY_FEATURES = ("haarq",)  # L1 of -1/0/+1 entries by matrix products (exact)
_BINS = 16
_HAAR_SIZE = 64
_HAAR_BLOCKS = (2, 4, 8)
_GABOR_SIZE = 128
_GABOR_FREQS = (0.25, 0.125, 0.0625)
_GABOR_ANGLES = (0.0, 45.0, 90.0, 135.0)
_GABOR_GRID = 4
_KL_EPS = 1e-4
# Working size of the features: shorter side shrunk towards 256 px, at most 2^20 pixels (see compute_jec_features).
_WORK_SIDE = 256
_WORK_PIXELS = 1 << 20
# From this many images on, compute_jec_features remembers the bins of the colours it met (ColourBinCache).
_CACHE_MIN_IMAGES = 100


# ---------------------------------------------------------------------------------------------- colour spaces

def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """HSV in [0, 1]^3 of RGB in [0, 1] (..., 3); hue of grey pixels is 0 (as ``colorsys``)."""
    rgb = np.asarray(rgb, np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    c = mx - mn
    safe = np.where(c > 0, c, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h = np.where(c > 0, h / 6.0, 0.0)
    s = np.where(mx > 0, c / np.where(mx > 0, mx, 1.0), 0.0)
    return np.stack([h, s, mx], -1)


_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_D65 = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    r"""CIE-LAB (D65) of sRGB in [0, 1] (..., 3): L in [0, 100], a and b roughly in [-128, 128]."""
    return _linear_rgb_to_lab(_srgb_to_linear(np.asarray(rgb, np.float64)))


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


# The linear value of each 8-bit level: the same numbers as _srgb_to_linear(level / 255), without a power per pixel.
_LINEAR_OF_LEVEL = _srgb_to_linear(np.arange(256) / 255.0)


def _linear_rgb_to_lab(lin: np.ndarray) -> np.ndarray:
    xyz = lin @ _RGB_TO_XYZ.T / _D65
    d = 6.0 / 29.0
    f = np.where(xyz > d ** 3, np.cbrt(xyz), xyz / (3 * d * d) + 4.0 / 29.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]),
                     200.0 * (f[..., 1] - f[..., 2])], -1)


def joint_histogram(values: np.ndarray, *, low: Sequence[float], high: Sequence[float],
                    bins: int = _BINS) -> np.ndarray:
    """Normalised joint histogram of 3-channel values (..., 3) with ``bins`` equal bins per channel in [low, high).

    Returns:
      (bins**3,) histogram summing to 1 (values outside the range fall into the edge bins).
    """
    v = np.asarray(values, np.float64).reshape(-1, 3)
    return joint_histograms(v, np.array([len(v)]), low=low, high=high, bins=bins)[0]


def joint_histograms(values: np.ndarray, counts: Sequence[int], *, low: Sequence[float], high: Sequence[float],
                     bins: int = _BINS) -> np.ndarray:
    """:func:`joint_histogram` of several images at once: ``values`` (sum(counts), 3) holds their pixels one
    image after the other, ``counts[i]`` pixels of image i.

    Returns:
      (len(counts), bins**3) histograms, each summing to 1 (an image without pixels: all zero).
    """
    v = np.asarray(values, np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] != np.sum(counts, dtype=np.int64):
        raise ValueError(f"values {v.shape} must be (sum(counts)={np.sum(counts)}, 3) for {len(counts)} counts")
    return _histograms_of_bins(_joint_bins(v, low=low, high=high, bins=bins), counts, bins=bins)


def _joint_bins(v: np.ndarray, *, low, high, bins: int) -> np.ndarray:
    """The joint bin (0 .. bins^3 - 1) of each row of ``v`` (m, 3)."""
    lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
    q = np.clip(((v - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
    return (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]


def _histograms_of_bins(bin_of_pixel: np.ndarray, counts: Sequence[int], *, bins: int) -> np.ndarray:
    counts = np.asarray(counts, np.int64)
    idx = np.repeat(np.arange(len(counts), dtype=np.int64) * bins ** 3, counts) + bin_of_pixel
    h = np.bincount(idx, minlength=len(counts) * bins ** 3).astype(np.float64).reshape(len(counts), bins ** 3)
    return h / np.maximum(counts, 1)[:, None]


_COLOUR_SPACES = {  # name: (conversion of 8-bit levels (m, 3), histogram low, histogram high)
    "rgb": (lambda levels: levels / 255.0, (0, 0, 0), (1, 1, 1)),
    "hsv": (lambda levels: rgb_to_hsv(levels / 255.0), (0, 0, 0), (1, 1, 1)),
    "lab": (lambda levels: _linear_rgb_to_lab(_LINEAR_OF_LEVEL[levels]), (0, -128, -128), (100, 128, 128)),
}


def _colour_bins(levels: np.ndarray, space: str) -> np.ndarray:
    """The joint histogram bin of each 8-bit RGB pixel (m, 3) in colour space ``space`` (see the module table)."""
    convert, low, high = _COLOUR_SPACES[space]
    return _joint_bins(convert(levels), low=low, high=high, bins=_BINS)


class ColourBinCache:
    """The RGB, HSV and LAB histogram bins of the 24-bit colours met so far (96 MB of tables).

    A colour is converted (:func:`rgb_to_hsv`, :func:`rgb_to_lab`) the first time it is met and looked up after
    that: the same bins as converting every pixel, at a fraction of the cost once thousands of images share
    their colours. Threads may share one cache (they only ever write the bins the conversions give).
    """

    _UNKNOWN = np.iinfo(np.uint16).max  # bins are < 16^3

    def __init__(self):
        self.tables = {space: np.full(1 << 24, self._UNKNOWN, np.uint16) for space in _COLOUR_SPACES}

    def bins(self, levels: np.ndarray, space: str) -> np.ndarray:
        """The joint bin (int64 (m,)) of each 8-bit RGB pixel of ``levels`` (m, 3) in ``space``."""
        code = (levels[:, 0].astype(np.int64) << 16) | (levels[:, 1].astype(np.int64) << 8) | levels[:, 2]
        table = self.tables[space]
        b = table[code]
        miss = b == self._UNKNOWN
        if miss.any():
            b[miss] = _colour_bins(levels[miss], space)
            table[code[miss]] = b[miss]
        return b.astype(np.int64)


# ---------------------------------------------------------------------------------------------- texture

def haar_responses(grey: np.ndarray, *, blocks: Sequence[int] = _HAAR_BLOCKS) -> np.ndarray:
    r"""Haar responses of square grey images in non-overlapping blocks (Makadia's "Haar" feature).

    For a block of side b split into quadrants with means :math:`m_{00}, m_{01}, m_{10}, m_{11}`:
    horizontal :math:`(m_{00}+m_{01}-m_{10}-m_{11})/2`, vertical :math:`(m_{00}+m_{10}-m_{01}-m_{11})/2`,
    diagonal :math:`(m_{00}+m_{11}-m_{01}-m_{10})/2`.

    Args:
      grey: (n, s, s) grey images in [0, 1], s divisible by every block size.
      blocks: block sides (even).

    Returns:
      (n, sum_b 3 (s/b)^2) responses, block sizes in order, then orientation, then block position.
    """
    g = np.asarray(grey, np.float64)
    n, s, _ = g.shape
    out = []
    for b in blocks:
        if s % b or b % 2:
            raise ValueError(f"image side {s} must be divisible by the even block size {b}")
        m = g.reshape(n, s // b, 2, b // 2, s // b, 2, b // 2).mean(axis=(3, 6))  # (n, s/b, 2, s/b, 2)
        m00, m01, m10, m11 = m[:, :, 0, :, 0], m[:, :, 0, :, 1], m[:, :, 1, :, 0], m[:, :, 1, :, 1]
        for r in ((m00 + m01 - m10 - m11), (m00 + m10 - m01 - m11), (m00 + m11 - m01 - m10)):
            out.append((r / 2).reshape(n, -1))
    return np.concatenate(out, axis=1)


def quantise_haar(responses: np.ndarray, *, dead_zone: float = 0.5 / 255) -> np.ndarray:
    """Makadia's "HaarQ": the sign of each Haar response, 0 inside a dead zone (default half a grey level)."""
    r = np.asarray(responses)
    return np.where(np.abs(r) <= dead_zone, 0.0, np.sign(r))


def gabor_bank(size: int = _GABOR_SIZE, *, freqs: Sequence[float] = _GABOR_FREQS,
               angles_deg: Sequence[float] = _GABOR_ANGLES) -> np.ndarray:
    r"""Frequency responses (F, size, size) of one-sided Gabor filters (complex, analytic output).

    .. math::
        G(u, v) = \exp\!\Big(-\frac{(u - f\cos\theta)^2 + (v - f\sin\theta)^2}{2\sigma_f^2}\Big),\quad
        \sigma_f = f / (3\sqrt{2\ln 2} / 2)\ \text{(one-octave bandwidth)}
    """
    u = np.fft.fftfreq(size)
    uu, vv = np.meshgrid(u, u, indexing="xy")
    bank = []
    for f in freqs:
        sf = f / (1.5 * np.sqrt(2 * np.log(2)))
        for a in np.deg2rad(angles_deg):
            bank.append(np.exp(-((uu - f * np.cos(a)) ** 2 + (vv - f * np.sin(a)) ** 2) / (2 * sf * sf)))
    return np.stack(bank)


def gabor_features(grey: np.ndarray, *, grid: int = _GABOR_GRID, bank: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Makadia's "Gabor" (mean magnitude per filter and grid cell) and "GaborQ" (quantised phase histograms).

    Args:
      grey: (n, s, s) grey images in [0, 1].
      grid: cells per side.
      bank: (F, s, s) filters from :func:`gabor_bank` (built when None).

    Returns:
      (gabor (n, F * grid^2), gaborq (n, F * grid^2 * 4)); each GaborQ cell histogram sums to 1.
    """
    g = np.asarray(grey, np.float64)
    n, s, _ = g.shape
    bank = gabor_bank(s) if bank is None else bank
    n_f, c = bank.shape[0], s // grid
    spec = np.fft.fft2(g - g.mean(axis=(1, 2), keepdims=True))
    # numpy's FFT, not scipy's: their roundings differ, enough to move a pixel across a phase quadrant (once in
    # Corel5k's 4,500 training images), and the quadrant histograms must stay those of the per-image code
    resp = np.fft.ifft2(spec[:, None] * bank[None])
    mag = np.abs(resp).reshape(n, -1, grid, c, grid, c).mean(axis=(3, 5)).reshape(n, -1)
    quad = ((np.angle(resp) + np.pi) / (np.pi / 2)).astype(np.int64).clip(0, 3)
    del resp
    # the quadrant histogram of every (image, filter, cell) by one bincount: cell index of each pixel, times 4
    cell = (np.arange(s) // c)[:, None] * grid + (np.arange(s) // c)[None, :]  # (s, s)
    base = (np.arange(n * n_f, dtype=np.int64) * grid * grid)[:, None, None] + cell  # (n * F, s, s)
    idx = base.reshape(n, n_f, s, s) * 4 + quad
    hist = np.bincount(idx.ravel(), minlength=n * n_f * grid * grid * 4).reshape(n, -1) / float(c * c)
    return mag, hist


# ---------------------------------------------------------------------------------------------- features

def image_features(rgb: np.ndarray, *, bank: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The seven JEC features of one RGB image (h, w, 3) uint8 (see the module table)."""
    return {f: v[0] for f, v in batch_features([rgb], bank=bank).items()}


def batch_features(images: Sequence[np.ndarray], *, bank: np.ndarray | None = None,
                   colour_cache: ColourBinCache | None = None) -> dict[str, np.ndarray]:
    """The seven JEC features of a batch of RGB images, each (h_i, w_i, 3) uint8 (sizes may differ).

    The colour histograms are computed over the pixels of all images at once, the texture features on the
    stacked grey resizes; every image gets the numbers it would get alone (:func:`image_features`).

    Args:
      images: RGB images.
      bank: Gabor filters of :func:`gabor_bank` (built when None).
      colour_cache: a :class:`ColourBinCache` to look colours up in (the same bins as converting each pixel).

    Returns:
      {feature name: (n, d_feature) float64} for the names in :data:`FEATURES`.
    """
    images = [np.asarray(im) for im in images]
    for i, im in enumerate(images):
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise ValueError(f"image {i}: expected an RGB image (h, w, 3) uint8, got shape {im.shape} {im.dtype}")
    if not images:
        return {f: np.zeros((0, _feature_width(f))) for f in FEATURES}
    counts = [im.shape[0] * im.shape[1] for im in images]
    levels = np.concatenate([im.reshape(-1, 3) for im in images])  # (sum counts, 3) uint8
    colour = {}
    for space in _COLOUR_SPACES:
        bins = _colour_bins(levels, space) if colour_cache is None else colour_cache.bins(levels, space)
        colour[space] = _histograms_of_bins(bins, counts, bins=_BINS)
    greys = [Image.fromarray(im).convert("L") for im in images]
    grey_h = np.stack([np.asarray(g.resize((_HAAR_SIZE, _HAAR_SIZE), Image.BILINEAR), np.float64) for g in greys]) / 255
    grey_g = np.stack([np.asarray(g.resize((_GABOR_SIZE, _GABOR_SIZE), Image.BILINEAR), np.float64) for g in greys]) / 255
    haar = haar_responses(grey_h)
    gabor, gaborq = gabor_features(grey_g, bank=bank)
    return {**colour, "haar": haar, "haarq": quantise_haar(haar), "gabor": gabor, "gaborq": gaborq}


class JecFeatures(dict):
    """``{feature name: (n, d_feature)}`` from :func:`compute_jec_features`, with the images that could not be
    read: ``ok`` ``(n,)`` bool and ``failed`` ``[{"index", "path", "reason"}, ...]``; their rows are NaN."""

    def __init__(self, features: dict[str, np.ndarray], ok: np.ndarray, failed: list[dict]):
        super().__init__(features)
        self.ok = np.asarray(ok, bool)
        self.failed = list(failed)


def _cache_key(paths: Sequence[str], max_pixels: int) -> str:
    blob = "\n".join(paths) + f"\nreader: max_pixels={max_pixels} work={_WORK_SIDE},{_WORK_PIXELS}"
    return hashlib.sha256(blob.encode()).hexdigest()


def compute_jec_features(paths: Sequence[str | os.PathLike], *, cache_path: str | os.PathLike | None = None,
                         dtype=np.float32, num_workers: int = 2, max_pixels: int = images_lib.DEFAULT_MAX_PIXELS,
                         skip: Mapping[str, str] | None = None, chunk_size: int = 16) -> JecFeatures:
    """JEC features of image files, cached to ``cache_path`` (an ``.npz``) when given.

    Images are read by the package's reader (:func:`dcca_jax.visual.images.open_image`) at a working size: an
    image is shrunk by an integer factor while its shorter side stays at least 256 pixels and until at most
    2^20 pixels remain (JPEGs decoded reduced), so a 12 MP photo costs a few MB. Images at or under that size
    (Corel5k's 192x128, the synthetic set's 128x128) are used exactly as decoded. A file that cannot be read
    is skipped, logged and listed in ``failed`` (its row is NaN), never fatal. The cache stores a hash of the
    path list and of the reader settings and is reused only when both match; otherwise it is rebuilt.

    Args:
      paths: image files (any format Pillow reads; converted to RGB).
      cache_path: ``.npz`` file to read or write.
      dtype: storage dtype of the features.
      num_workers: threads, each reading and featurising ``chunk_size`` images at a time (:func:`batch_features`).
      max_pixels: images whose declared size has more pixels are refused before decoding.
      skip: ``{path: reason}`` of images an earlier stage could not read: they are not read again, and are
        listed as failed with that reason.
      chunk_size: images per batch of :func:`batch_features` (its temporaries are about 6 MB per image).

    Returns:
      A :class:`JecFeatures`: {feature name: (n_images, d_feature)} for the names in :data:`FEATURES`, with
      ``ok`` and ``failed``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    paths = [str(p) for p in paths]
    skip = {str(k): v for k, v in (skip or {}).items()}
    key = _cache_key(paths, max_pixels)
    if cache_path is not None and pathlib.Path(cache_path).exists():
        try:
            with np.load(cache_path, allow_pickle=False) as z:
                if str(z["paths_sha256"]) == key and all(f in z for f in FEATURES) and "ok" in z:
                    logging.info("JEC features: loaded %d images from %s", len(paths), cache_path)
                    return JecFeatures({f: z[f] for f in FEATURES}, z["ok"], json.loads(str(z["failed"])))
            logging.info("JEC features: cache %s is for another image list or reader; recomputing", cache_path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            logging.warning("JEC features: cache %s is unreadable (%s: %s); recomputing", cache_path,
                            type(e).__name__, e)
    bank = gabor_bank(_GABOR_SIZE)
    # Converting colours costs about 8 ms per Corel5k image; photos share most of their colours.
    cache = ColourBinCache() if len(paths) >= _CACHE_MIN_IMAGES else None

    def read(i: int) -> np.ndarray | str:
        p = paths[i]
        if p in skip:
            return f"skipped: {skip[p]}"
        try:
            return images_lib.read_image(p, min_side=_WORK_SIDE, max_pixels=max_pixels, max_work_pixels=_WORK_PIXELS)
        except images_lib.ImageLoadError as e:
            logging.warning("JEC features: skipping unreadable image %s: %s", e.path, e.reason)
            return e.reason

    def chunk(start: int) -> list[dict[str, np.ndarray] | str]:
        rows = [read(i) for i in range(start, min(start + chunk_size, len(paths)))]
        good = [r for r in rows if not isinstance(r, str)]
        feats = batch_features(good, bank=bank, colour_cache=cache)
        position = np.cumsum([not isinstance(r, str) for r in rows]) - 1  # row of each image in ``feats``
        return [r if isinstance(r, str) else {f: v[j] for f, v in feats.items()} for r, j in zip(rows, position)]

    feats = {f: np.full((len(paths), _feature_width(f)), np.nan, dtype) for f in FEATURES}
    ok = np.zeros(len(paths), bool)
    failed = []
    # Pillow's decoder and resizes, numpy's large element-wise operations and FFTs release the GIL: each
    # thread featurises its own chunk of images, so the threads use several cores
    with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
        starts = range(0, len(paths), chunk_size)
        for start, rows in zip(starts, pool.map(chunk, starts)):
            for i, r in enumerate(rows, start):
                if isinstance(r, str):
                    failed.append({"index": i, "path": paths[i], "reason": r})
                else:
                    ok[i] = True
                    for f in FEATURES:
                        feats[f][i] = r[f]
            if (start + chunk_size) // 1000 > start // 1000:
                logging.info("JEC features: %d / %d images", min(start + chunk_size, len(paths)), len(paths))
    if failed:
        logging.warning("JEC features: %d of %d images could not be read (listed in .failed)", len(failed), len(paths))
    if cache_path is not None:
        atomic_save_npz(cache_path, paths_sha256=key, ok=ok, failed=json.dumps(failed), **feats)
    return JecFeatures(feats, ok, failed)


def _feature_width(name: str) -> int:
    n_filters = len(_GABOR_FREQS) * len(_GABOR_ANGLES) * _GABOR_GRID ** 2
    haar = sum(3 * (_HAAR_SIZE // b) ** 2 for b in _HAAR_BLOCKS)
    return {"rgb": _BINS ** 3, "hsv": _BINS ** 3, "lab": _BINS ** 3, "haar": haar, "haarq": haar,
            "gabor": n_filters, "gaborq": 4 * n_filters}[name]


# ---------------------------------------------------------------------------------------------- distances

@jax.jit
def l1_distances(a: ArrayLike, b: ArrayLike) -> jax.Array:
    r"""Pairwise L1 distances :math:`\sum_d |a_{id} - b_{jd}|`, (n_a, n_b), one row of ``a`` at a time."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a {a.shape} and b {b.shape} must be (n, d) with the same d")
    return jax.lax.map(lambda r: jnp.abs(b - r).sum(-1), a, batch_size=8)


def kl_distances(a: ArrayLike, b: ArrayLike, *, eps: float = _KL_EPS) -> jax.Array:
    r"""Pairwise KL divergences :math:`KL(a_i \| b_j) = \sum_d a_{id} \log(a_{id} / b_{jd})` of histograms
    smoothed by ``eps`` per bin and renormalised, (n_a, n_b)."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a {a.shape} and b {b.shape} must be (n, d) with the same d")
    a = (a + eps) / (a + eps).sum(1, keepdims=True)
    b = (b + eps) / (b + eps).sum(1, keepdims=True)
    return (a * jnp.log(a)).sum(1, keepdims=True) - a @ jnp.log(b).T


@jax.jit
def ternary_l1_distances(a: ArrayLike, b: ArrayLike) -> jax.Array:
    r"""Pairwise L1 distances of rows whose entries are -1, 0 or +1 (HaarQ), by two matrix products.

    .. math::
        |a - b| = |a| + |b| - |a||b| - ab \quad (a, b \in \{-1, 0, 1\}),\qquad
        D = |A|\mathbf{1}\mathbf{1}^T + \mathbf{1}\mathbf{1}^T|B|^T - |A||B|^T - AB^T

    Every term is an integer below :math:`2^{24}` for d < 2^22, so float32 gives the exact distances (equal to
    :func:`l1_distances`) at the cost of a matrix product.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a {a.shape} and b {b.shape} must be (n, d) with the same d")
    hi = jax.lax.Precision.HIGHEST
    a_abs, b_abs = jnp.abs(a), jnp.abs(b)
    return (a_abs.sum(1)[:, None] + b_abs.sum(1)[None, :] - jnp.matmul(a_abs, b_abs.T, precision=hi)
            - jnp.matmul(a, b.T, precision=hi))


def feature_distances(name: str, a: ArrayLike, b: ArrayLike) -> jax.Array:
    """Distance matrix (n_a, n_b) of one JEC feature with that feature's distance (KL for LAB, L1 else; the L1
    of HaarQ by :func:`ternary_l1_distances`, exact and six times cheaper)."""
    if name not in FEATURES:
        raise ValueError(f"unknown JEC feature {name!r}; choose from {FEATURES}")
    if name in KL_FEATURES:
        return kl_distances(a, b)
    return ternary_l1_distances(a, b) if name in _TERNARY_FEATURES else l1_distances(a, b)


def distance_scales(train: dict[str, np.ndarray], *, n_scale: int = 500, seed: int = 0) -> dict[str, float]:
    """Maximum of each feature's distance over training pairs (``n_scale`` random training rows x all)."""
    n = next(iter(train.values())).shape[0]
    rows = np.random.default_rng(seed).choice(n, size=min(n_scale, n), replace=False)
    return {f: float(jnp.max(feature_distances(f, train[f][rows], train[f]))) for f in FEATURES}


def jec_distances(query: dict[str, np.ndarray], train: dict[str, np.ndarray], *, scales: dict[str, float],
                  features: Sequence[str] = FEATURES) -> jax.Array:
    r"""JEC's combined distance: the mean of the features' distances, each divided by its training maximum.

    .. math::
        D(q, t) = \frac{1}{|F|} \sum_{f \in F} \frac{d_f(q, t)}{\max_{t, t'} d_f(t, t')}

    Args:
      query: {feature: (n_q, d_f)}.
      train: {feature: (n_t, d_f)}.
      scales: {feature: max distance} (:func:`distance_scales`).
      features: features to combine (all seven by default).

    Returns:
      (n_q, n_t) distances.
    """
    total = 0.0
    for f in features:
        total = total + feature_distances(f, query[f], train[f]) / scales[f]
    return total / len(features)


# ---------------------------------------------------------------------------------------------- transfer

def jec_transfer(distances: ArrayLike, train_labels: ArrayLike, *, n_tags: int = 5, k: int = 5) -> np.ndarray:
    r"""Makadia et al.'s greedy label transfer; returns scores whose top ``n_tags`` are the transferred tags.

    1. Rank the tags of the nearest neighbour :math:`I_1` by their training frequency; transfer the
       ``n_tags`` highest.
    2. If fewer than ``n_tags`` were transferred, rank the tags of neighbours :math:`I_2 .. I_k` (not yet
       transferred) by :math:`\mathrm{cooc}(w)\cdot\mathrm{local}(w)`: the summed training co-occurrence
       :math:`\sum_{t \in T_1} C_{tw}` with the transferred tags (the training frequency of w when
       :math:`I_1` has no tag) times the number of neighbours :math:`I_2..I_k` carrying w; ties go to the more
       frequent word.  Transfer the highest until ``n_tags`` are transferred.

    Args:
      distances: (n_q, n_t) query-to-training distances.
      train_labels: (n_t, V) 0/1 training tags.
      n_tags: tags per image.
      k: neighbours considered (Makadia use 5).

    Returns:
      (n_q, V) float scores: transferred tags get decreasing positive scores in transfer order, all other tags
      -inf (so :func:`dcca_jax.tagging.metrics.top_n_indicator` recommends exactly the transferred tags, fewer than
      ``n_tags`` when the neighbours have fewer distinct tags).

    References:
      Makadia, Pavlovic, Kumar, ECCV 2008, Section 4 ("Label transfer").
    """
    d = np.asarray(distances, np.float64)
    y = np.asarray(train_labels) > 0
    if d.ndim != 2 or d.shape[1] != y.shape[0]:
        raise ValueError(f"distances {d.shape} must be (n_queries, n_train={y.shape[0]}) for train_labels {y.shape}")
    if not 0 < k <= d.shape[1]:
        raise ValueError(f"k={k} must lie in [1, n_train={d.shape[1]}]")
    freq = y.sum(0).astype(np.float64)
    cooc = y.T.astype(np.float64) @ y.astype(np.float64)
    np.fill_diagonal(cooc, 0.0)
    n_q, v = d.shape[0], y.shape[1]
    # tie-break keys: frequency, then the lower word index (a tiny decreasing offset)
    tie = freq + (v - np.arange(v)) / (v + 1.0) * 1e-3
    nn = np.argsort(d, axis=1, kind="stable")[:, :k]
    scores = np.full((n_q, v), -np.inf)
    for q in range(n_q):
        first = np.flatnonzero(y[nn[q, 0]])
        first = first[np.argsort(-tie[first], kind="stable")][:n_tags]
        order = list(first)
        if len(order) < n_tags and k > 1:
            local = y[nn[q, 1:]].sum(0).astype(np.float64)
            co = cooc[first].sum(0) if len(first) else freq
            rank = co * local * (tie.max() + 1) + tie  # lexicographic: co * local, then frequency
            rank[local == 0] = -np.inf
            rank[first] = -np.inf
            cand = np.argsort(-rank, kind="stable")
            order += [w for w in cand[:n_tags - len(order)] if np.isfinite(rank[w])]
        scores[q, order] = np.arange(len(order), 0, -1, dtype=np.float64)
    return scores
