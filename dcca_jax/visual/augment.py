r"""Image batches for end-to-end training: decode once, augment deterministically, load in the background.

Training images go through (in this order, as torchvision's ImageNet recipe):

1. random resized crop: a crop covering a fraction ``a ~ U(scale)`` of the image area with aspect ratio
   ``r = exp(U(log ratio))`` (width / height), at a uniform position, resized to ``size x size`` (Pillow's
   bilinear filter); after 10 failed draws the largest centred crop of the clipped ratio is used;
2. horizontal flip with probability 1/2;
3. colour jitter, in a random order of the three, each with a factor ``f ~ U(1 - j, 1 + j)``:
   brightness ``x' = f x``; contrast ``x' = f x + (1 - f) mean(grey(x))``; saturation
   ``x' = f x + (1 - f) grey(x)`` with ``grey = 0.299 R + 0.587 G + 0.114 B``; clipped to [0, 255];
4. the network's normalisation (:func:`dcca_jax.visual.images.normalise`).

Every random draw of image ``index`` in epoch ``epoch`` comes from ``numpy.random.default_rng([seed, epoch,
index])``: the batches do not depend on the order in which threads run, and a resumed run sees exactly the
batches the interrupted one would have seen.  Evaluation images get the deterministic geometry of
:func:`dcca_jax.visual.images.resize_and_crop` (shorter side to ``size / crop_fraction``, centre crop).

Decoding (JPEG -> uint8 RGB, EXIF orientation, colour mode; :func:`dcca_jax.visual.images.open_image`) happens once per
image in :class:`DecodedImages`, which keeps the native-size arrays in memory (Corel5k: 5,000 images of
192 x 128 pixels, 370 MB), so epochs do not re-decode JPEGs.  A missing or corrupt file raises
:class:`dcca_jax.visual.images.ImageLoadError` naming the file, or (``on_error="skip"``) is recorded in
``DecodedImages.failed`` and left out of ``DecodedImages.ok``.
"""
from __future__ import annotations

import collections
import concurrent.futures
import math
import os
from typing import Iterator, Sequence

import ml_collections
import numpy as np
from PIL import Image

from dcca_jax.visual.images import DEFAULT_MAX_PIXELS, ImageLoadError, normalise, read_image, resize_and_crop

__all__ = [
    "augment_config",
    "DecodedImages",
    "decode_image",
    "random_resized_crop_box",
    "augment_image",
    "eval_image",
    "image_rng",
    "BatchLoader",
]

_GREY = np.array([0.299, 0.587, 0.114], np.float32)


def augment_config() -> ml_collections.ConfigDict:
    """Augmentation settings with their defaults (see the module docstring)."""
    c = ml_collections.ConfigDict()
    c.size = 224  # network input side
    c.crop_fraction = 0.875  # evaluation geometry (resize shorter side to size / f, centre crop)
    c.scale = (0.35, 1.0)  # area fraction of the random crop
    c.ratio = (3.0 / 4.0, 4.0 / 3.0)  # aspect ratio (w / h) range of the random crop
    c.flip = True
    c.brightness = 0.2
    c.contrast = 0.2
    c.saturation = 0.2
    c.normalisation = "mobilenet_v2"
    c.random = True  # False: training batches get the evaluation view (no augmentation; an ablation)
    return c


def _check_config(c) -> None:
    lo, hi = (float(v) for v in c.scale)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1; got {tuple(c.scale)}.")
    rlo, rhi = (float(v) for v in c.ratio)
    if not 0.0 < rlo <= rhi:
        raise ValueError(f"ratio must satisfy 0 < low <= high; got {tuple(c.ratio)}.")
    for k in ("brightness", "contrast", "saturation"):
        if not 0.0 <= float(c[k]) < 1.0:
            raise ValueError(f"{k} jitter must be in [0, 1); got {c[k]}.")
    if int(c.size) < 1:
        raise ValueError(f"size must be >= 1; got {c.size}.")


def decode_image(path: str | os.PathLike, *, min_side: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one file to an upright uint8 RGB ``(H, W, 3)`` array with the package's reader.

    :func:`dcca_jax.visual.images.open_image` does the work (same refusals, colour rules and orientation as
    every other stage). Native size unless ``min_side`` is given: then a large image is shrunk by an integer
    factor while its shorter side stays at least ``min_side``.

    Raises:
      ImageLoadError: the file is missing, empty, not an image, truncated, corrupt or over ``max_pixels``.
    """
    return read_image(path, min_side=min_side, max_pixels=max_pixels)


class DecodedImages:
    """Native-size uint8 RGB images decoded once and kept in memory.

    Args:
      paths: image files, in dataset order.
      on_error: ``"raise"`` (default; :class:`ImageLoadError` naming the file) or ``"skip"`` (the failure is
        recorded in ``failed`` as ``(index, path, reason)`` and the index left out of ``ok``).
      num_workers: decoding threads (Pillow releases the GIL while decoding).
      min_side, max_pixels: see :func:`decode_image` (``min_side`` bounds the memory of large photos).

    Attributes:
      images: list of ``(H_i, W_i, 3)`` uint8 arrays (``None`` for a skipped file).
      ok: indices that decoded, ascending.
      failed: ``[(index, path, reason), ...]``.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], *, on_error: str = "raise", num_workers: int = 2,
                 min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip'; got {on_error!r}.")
        self.paths = [os.fspath(p) for p in paths]

        def one(p):
            try:
                return decode_image(p, min_side=min_side, max_pixels=max_pixels), None
            except ImageLoadError as e:
                if on_error == "raise":
                    raise
                return None, e

        with concurrent.futures.ThreadPoolExecutor(max(1, int(num_workers))) as ex:
            results = list(ex.map(one, self.paths))
        self.images = [r[0] for r in results]
        self.failed = [(i, e.path, e.reason) for i, (_, e) in enumerate(results) if e is not None]
        self.ok = [i for i, (a, _) in enumerate(results) if a is not None]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        img = self.images[i]
        if img is None:
            raise ImageLoadError(self.paths[i], "was skipped at decoding (see DecodedImages.failed)")
        return img

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.images if a is not None))


def image_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of image ``index`` in ``epoch`` (independent of batch layout and thread timing)."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator, *, scale: Sequence[float],
                            ratio: Sequence[float]) -> tuple[int, int, int, int]:
    r"""A random crop ``(left, top, crop_w, crop_h)`` of area fraction ``a ~ U(scale)`` and ratio ``w/h ~ logU(ratio)``.

    .. math:: w = \mathrm{round}\sqrt{a H W r},\quad h = \mathrm{round}\sqrt{a H W / r}

    retried up to 10 times until it fits in the image; otherwise the largest centred crop whose ratio is
    ``clip(W / H, ratio)`` (torchvision's ``RandomResizedCrop.get_params``).
    """
    area = float(height * width)
    log_r = (math.log(float(ratio[0])), math.log(float(ratio[1])))
    for _ in range(10):
        target = area * rng.uniform(float(scale[0]), float(scale[1]))
        r = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * r)))
        h = int(round(math.sqrt(target / r)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < float(ratio[0]):
        w, h = width, int(round(width / float(ratio[0])))
    elif in_ratio > float(ratio[1]):
        h, w = height, int(round(height * float(ratio[1])))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _colour_jitter(x: np.ndarray, rng: np.random.Generator, c) -> np.ndarray:
    """Brightness / contrast / saturation in a random order (float32 in and out, clipped to [0, 255])."""
    ops = []
    if c.brightness > 0:
        ops.append(("brightness", rng.uniform(1 - c.brightness, 1 + c.brightness)))
    if c.contrast > 0:
        ops.append(("contrast", rng.uniform(1 - c.contrast, 1 + c.contrast)))
    if c.saturation > 0:
        ops.append(("saturation", rng.uniform(1 - c.saturation, 1 + c.saturation)))
    for j in rng.permutation(len(ops)):
        kind, f = ops[j]
        f = np.float32(f)
        if kind == "brightness":
            x = x * f
        elif kind == "contrast":
            x = f * x + (1 - f) * np.float32(np.mean(x @ _GREY))
        else:
            x = f * x + (1 - f) * (x @ _GREY)[..., None]
        x = np.clip(x, 0.0, 255.0)
    return x


def augment_image(image: np.ndarray, rng: np.random.Generator, config: ml_collections.ConfigDict) -> np.ndarray:
    """One training view: random resized crop, flip, colour jitter (see the module docstring).

    Args:
      image: ``(H, W, 3)`` uint8 RGB.
      rng: its random stream (:func:`image_rng`).
      config: :func:`augment_config`.

    Returns:
      ``(size, size, 3)`` float32 in [0, 255] (not yet normalised).
    """
    size = int(config.size)
    h, w = image.shape[:2]
    left, top, cw, ch = random_resized_crop_box(h, w, rng, scale=config.scale, ratio=config.ratio)
    img = Image.fromarray(image).crop((left, top, left + cw, top + ch))
    img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    x = np.asarray(img, dtype=np.float32)
    if config.flip and rng.uniform() < 0.5:
        x = x[:, ::-1]
    return _colour_jitter(x, rng, config)


def eval_image(image: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
    """The evaluation view: shorter side to ``size / crop_fraction``, centre ``size x size`` crop; float32 [0, 255]."""
    img = resize_and_crop(Image.fromarray(image), size=int(config.size), crop_fraction=float(config.crop_fraction))
    return np.asarray(img, dtype=np.float32)


class BatchLoader:
    """Normalised float32 image batches, prepared by background threads with a bounded queue.

    ``loader.batches(indices, epoch=e)`` yields ``(n_b, size, size, 3)`` arrays for consecutive slices of
    ``indices`` of length ``batch_size`` (the last one may be shorter), in order.  At most ``prefetch`` batches
    are being prepared or waiting at any time, so memory stays bounded while the accelerator (or the XLA CPU
    threads) works on the current one.  ``train=True`` augments with the streams ``image_rng(seed, e, i)``;
    ``train=False`` (or ``config.random=False``) gives the evaluation view.  An exception in a worker (e.g. :class:`ImageLoadError` for a
    skipped image) is raised by the iterator.

    Args:
      images: :class:`DecodedImages`.
      config: :func:`augment_config`.
      batch_size: images per batch.
      train: augment (True) or evaluation geometry (False).
      seed: the augmentation seed.
      num_workers: threads preparing batches.
      prefetch: bounded queue length (batches in flight).
    """

    def __init__(self, images: DecodedImages, config: ml_collections.ConfigDict, *, batch_size: int,
                 train: bool, seed: int = 0, num_workers: int = 1, prefetch: int = 2):
        _check_config(config)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
        self.images, self.config = images, config
        self.batch_size, self.train, self.seed = int(batch_size), bool(train), int(seed)
        self.num_workers, self.prefetch = max(1, int(num_workers)), max(1, int(prefetch))

    def make_batch(self, indices: Sequence[int], *, epoch: int) -> np.ndarray:
        """The normalised batch of ``indices`` (synchronously)."""
        if self.train and self.config.get("random", True):
            views = [augment_image(self.images[i], image_rng(self.seed, epoch, i), self.config) for i in indices]
        else:
            views = [eval_image(self.images[i], self.config) for i in indices]
        return normalise(np.stack(views), normalisation=self.config.normalisation, dtype=np.float32)

    def batches(self, indices: Sequence[int], *, epoch: int = 0, start_batch: int = 0) -> Iterator[np.ndarray]:
        """Yields the batches of ``indices`` from batch number ``start_batch`` on (background-prepared)."""
        indices = [int(i) for i in indices]
        slices = [indices[s:s + self.batch_size] for s in range(0, len(indices), self.batch_size)][start_batch:]
        with concurrent.futures.ThreadPoolExecutor(self.num_workers) as ex:
            pending: collections.deque = collections.deque()
            it = iter(slices)
            for sl in it:
                pending.append(ex.submit(self.make_batch, sl, epoch=epoch))
                if len(pending) >= self.prefetch:
                    break
            try:
                while pending:
                    out = pending.popleft().result()
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.append(ex.submit(self.make_batch, nxt, epoch=epoch))
                    yield out
            finally:
                for f in pending:
                    f.cancel()
