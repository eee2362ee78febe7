"""Image loading for the visual view: decode, fix orientation and colour, resize, centre-crop, normalise.

Decoding uses Pillow, so JPEG, PNG, BMP, GIF (first frame), TIFF and WebP are read. Every image becomes
8-bit RGB: greyscale, palette, CMYK (Adobe-inverted JPEGs included), 16-bit and alpha images are converted
(alpha is composited on white, the usual choice for photographs shown on a page). The EXIF orientation tag
is applied before anything else, so a photo taken sideways is seen upright.

Geometry: the shorter side is resized to ``round(size / crop_fraction)`` (aspect ratio kept, Pillow's
antialiased bilinear filter) and the central ``size x size`` square is cropped: with ``crop_fraction=0.875``
and ``size=224`` this is the classic "resize 256, centre-crop 224" ImageNet evaluation protocol.

Normalisation is each network's own (:data:`NORMALISATIONS`):
- ``"mobilenet_v2"``: the quantised TFLite model's input mapping ``(u - 128) / 128`` (scale 1/128, zero
  point 128), so the float model sees exactly what the uint8 reference sees.
- ``"alexnet"``: torchvision's ``(u / 255 - mean) / std`` with the ImageNet mean and std.
- ``"caffe"``: BVLC Caffe's BGR order with the ImageNet mean pixel subtracted, range 0..255.

Every file is read by :func:`open_image` (the package's one reader, also used by the hand-crafted backbone,
JEC, fine-tuning and the gallery): it refuses missing, empty, corrupt and over-sized files (declared pixel
count above ``max_pixels``, checked before decoding) with :class:`ImageLoadError` naming the file and the
reason, and decodes large images at reduced size (JPEG DCT scaling, then an integer box reduction) so that a
12 MP photo costs a few MB. The batch helpers (:func:`load_batch`) catch the error and return the path with
the reason, so a batch job never crashes.
"""
from __future__ import annotations

import dataclasses
import math
import os
import struct
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# BVLC reference CaffeNet/AlexNet mean pixel (B, G, R) of ilsvrc_2012_mean.binaryproto.
CAFFE_MEAN_BGR = np.array([104.00699, 116.66877, 122.67892], np.float32)

NORMALISATIONS = ("mobilenet_v2", "alexnet", "caffe", "none")

# The declared-size limit, in pixels (width x height, read from the header before decoding). Pillow's own
# default `Image.MAX_IMAGE_PIXELS` (1 GiB / 4 bytes / 3 channels): an image above it is refused by name, and
# Pillow's process-wide setting is never changed. A 12 MP photo is 12,000,000.
DEFAULT_MAX_PIXELS = 89_478_485


class ImageLoadError(Exception):
    """An image that cannot be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Geometry of the network input.

    Attributes:
        size: side of the square crop fed to the network (224 for both backbones).
        crop_fraction: fraction of the resized shorter side that the crop keeps (0 < f <= 1).
        normalisation: one of :data:`NORMALISATIONS`.
        max_pixels: images whose declared size has more pixels are refused before decoding
            (:data:`DEFAULT_MAX_PIXELS`).
    """

    size: int = 224
    crop_fraction: float = 0.875
    normalisation: str = "mobilenet_v2"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"Preprocess.size must be >= 1, got {self.size}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"Preprocess.crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"unknown normalisation {self.normalisation!r}; choose one of {NORMALISATIONS}")
        if self.max_pixels < 1:
            raise ValueError(f"Preprocess.max_pixels must be >= 1, got {self.max_pixels}")


# Pillow's own transposition table for each EXIF orientation (as `ImageOps.exif_transpose`).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S")


def _reduction(width: int, height: int, *, min_side: int | None, max_work_pixels: int | None) -> int:
    """The integer factor an image can be shrunk by: its shorter side stays >= ``min_side``; and at least
    the factor that brings it under ``max_work_pixels`` (that bound wins for very thin strips)."""
    factor = 1
    if min_side:
        factor = max(1, min(width, height) // int(min_side))
    if max_work_pixels and width * height > max_work_pixels:
        factor = max(factor, math.ceil(math.sqrt(width * height / max_work_pixels)))
    return factor


def _sixteen_to_8bit(img: Image.Image, sixteen: bool) -> Image.Image:
    """Mode ``I``/``F`` (16-bit sources arrive as ``I``) to ``L``: 16-bit values v become round(v / 257)."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        hi = float(arr.max(initial=0.0))
        scale = 255.0 if hi <= 1.0 else (1.0 if hi <= 255.0 else 255.0 / hi)
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), mode="L")
    hi = int(arr.max(initial=0))
    if sixteen or 255 < hi <= 65535:
        out = (np.clip(arr, 0, 65535) + 128) // 257  # = round(v / 257): 65535 -> 255, 32896 -> 128
    elif hi <= 255:
        out = np.clip(arr, 0, 255)
    else:  # 32-bit integers beyond 16 bits: stretch the image's own maximum to 255
        out = np.clip(arr, 0, None).astype(np.int64) * 255 // hi
    return Image.fromarray(out.astype(np.uint8), mode="L")


def open_image(path: str | os.PathLike, *, min_side: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_work_pixels: int | None = None) -> Image.Image:
    r"""The package's one image reader: a file to an upright 8-bit RGB Pillow image, reduced when asked.

    Every consumer (CNN extraction, the hand-crafted backbone, JEC, fine-tuning, the gallery) reads through
    this function, so they skip the same files for the same reasons. The steps, in order:

    1. A missing or zero-byte file is refused.
    2. The header is read (``Image.open`` decodes no pixels). A declared size ``w x h > max_pixels`` is refused
       before anything is decoded (a "pixel bomb": a small file with a huge header); Pillow's own
       ``DecompressionBombError`` (above ``2 * Image.MAX_IMAGE_PIXELS``) is refused the same way.
    3. The image is shrunk by the integer factor :math:`f` of :func:`_reduction` (the shorter side stays at
       least ``min_side``; at most ``max_work_pixels`` remain): JPEGs are decoded at reduced size by the
       decoder's DCT scaling (``img.draft``, 1/2, 1/4 or 1/8), then ``Image.reduce`` (a box filter) takes the
       rest. Without ``min_side``/``max_work_pixels``, or when the image is already small (``f = 1``), the
       pixels are exactly the decoded file's.
    4. Colour: 16-bit greyscale (``I;16``, ``I;16B``, ``I``) becomes ``round(v / 257)``; palette, 1-bit,
       greyscale and CMYK are converted to RGB; alpha (``RGBA``, ``LA``, palette transparency) is composited
       on white, as a photo shown on a white page.
    5. The EXIF orientation is applied (Pillow's table of ``ImageOps.exif_transpose``), so a photo taken
       sideways is seen upright.

    Args:
      path: an image file (JPEG, PNG, BMP, GIF first frame, TIFF, WebP, ...).
      min_side: the working size: shrink while the shorter side stays >= this (None: never for this reason).
      max_pixels: refuse images whose declared size has more pixels (:data:`DEFAULT_MAX_PIXELS`).
      max_work_pixels: shrink until at most this many pixels remain (None: no bound).

    Returns:
      A loaded Pillow image of mode ``"RGB"``, at least 1x1.

    Raises:
      ImageLoadError: naming the path and the reason (missing, empty, not an image, truncated, corrupt, over
        the pixel limit).
    """
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise ImageLoadError(path, "empty file (0 bytes)")
        with Image.open(path) as img:
            img.seek(0)  # first frame of animated GIF/WebP/TIFF
            w, h = img.size
            if w < 1 or h < 1:
                raise ImageLoadError(path, f"empty image of size {w}x{h}")
            if w * h > max_pixels:
                raise ImageLoadError(path, _too_big(w, h, max_pixels))
            factor = _reduction(w, h, min_side=min_side, max_work_pixels=max_work_pixels)
            if factor > 1 and img.format == "JPEG":
                img.draft("RGB", (-(-w // factor), -(-h // factor)))
            img.load()  # decode now, inside the try, so truncation is caught here
            orientation = img.getexif().get(_ORIENTATION_TAG)
            return _finish(img, min_side=min_side, max_work_pixels=max_work_pixels, orientation=orientation)
    except ImageLoadError:
        raise
    except FileNotFoundError as e:
        raise ImageLoadError(path, f"file not found ({e.strerror})") from e
    except Image.DecompressionBombError as e:
        raise ImageLoadError(path, f"refused before decoding: {e} (Pillow's limit, 2 x Image.MAX_IMAGE_PIXELS)") from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(path, "not a recognised image format (corrupt or not an image)") from e
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, struct.error) as e:
        raise ImageLoadError(path, f"{type(e).__name__}: {e}") from e


def _too_big(w: int, h: int, max_pixels: int) -> str:
    return (f"declared size {w}x{h} = {w * h / 1e6:.1f} MP exceeds the limit of {max_pixels / 1e6:.1f} MP; refused "
            "before decoding (raise max_pixels, in the pipeline --config.visual.max_pixels, to read it)")


def _finish(img: Image.Image, *, min_side, max_work_pixels, orientation) -> Image.Image:
    """Steps 3-5 of :func:`open_image` on a loaded image."""
    sixteen = img.mode in _SIXTEEN_BIT
    if sixteen:
        img = img.convert("I")  # Image.reduce does not take I;16
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("P", "PA"):
        # A palette with transparency must go through RGBA, or the transparent colour leaks through.
        img = img.convert("RGBA") if (img.mode == "PA" or "transparency" in img.info) else img.convert("RGB")
    factor = _reduction(*img.size, min_side=min_side, max_work_pixels=max_work_pixels)
    if factor > 1:
        img = img.reduce(factor)
    if img.mode in ("I", "F"):
        img = _sixteen_to_8bit(img, sixteen)
    img = to_rgb(img)
    method = _ORIENTATION.get(orientation)
    if method is not None:
        img = img.transpose(method)
    return img


def read_image(path: str | os.PathLike, *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_work_pixels: int | None = None) -> np.ndarray:
    """:func:`open_image` as a uint8 ``(H, W, 3)`` array (same arguments, same :class:`ImageLoadError`)."""
    return np.asarray(open_image(path, min_side=min_side, max_pixels=max_pixels, max_work_pixels=max_work_pixels),
                      dtype=np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited on white, CMYK and 16-bit handled).

    16-bit values v become ``round(v / 257)`` (65535 -> 255); mode ``I`` with values up to 255 is taken as
    8-bit; ``F`` in [0, 1] is scaled by 255.

    Args:
        img: a decoded Pillow image in any mode.

    Returns:
        An image of mode ``"RGB"``.
    """
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        # A palette with transparency must go through RGBA, or the transparent colour leaks through.
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
        img = _sixteen_to_8bit(img, img.mode in _SIXTEEN_BIT)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV: Pillow's converters (CMYK JPEGs from Adobe are already un-inverted by
    # the JPEG decoder).
    return img.convert("RGB")


def resize_and_crop(img: Image.Image, *, size: int, crop_fraction: float) -> Image.Image:
    """Resize the shorter side to ``round(size / crop_fraction)`` and crop the central ``size x size``.

    Args:
        img: an RGB image of any size.
        size: output side in pixels.
        crop_fraction: the crop's share of the resized shorter side.

    Returns:
        An RGB image of exactly ``(size, size)``.
    """
    w, h = img.size
    short = max(size, int(round(size / crop_fraction)))
    if w <= h:
        new_w, new_h = short, max(short, int(round(h * short / w)))
    else:
        new_w, new_h = max(short, int(round(w * short / h))), short
    left = (new_w - size) // 2
    top = (new_h - size) // 2
    if new_w * new_h > 16 * size * size:
        # A thin strip (4000x3 -> 341333x256) would cost hundreds of MB resized whole: resample only the
        # crop's source box (same filter scale and sample positions; may differ by one grey level).
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return img.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
    return img.crop((left, top, left + size, top + size))


def load_image(path: str | os.PathLike, *, size: int = 224, crop_fraction: float = 0.875,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one image file to a uint8 RGB ``(size, size, 3)`` array, upright and centre-cropped.

    The file is read by :func:`open_image` at the working size ``round(size / crop_fraction)`` (so a large
    JPEG is decoded reduced), then :func:`resize_and_crop`.

    Args:
        path: image file (JPEG, PNG, BMP, GIF first frame, TIFF, WebP, ...).
        size: side of the square output.
        crop_fraction: see :func:`resize_and_crop`.
        max_pixels: see :func:`open_image`.

    Returns:
        ``(size, size, 3)`` uint8 array.

    Raises:
        ImageLoadError: the file is missing, empty, unreadable, not an image, truncated, corrupt or too large.
    """
    path = os.fspath(path)
    img = open_image(path, min_side=max(size, int(round(size / crop_fraction))), max_pixels=max_pixels)
    try:
        arr = np.asarray(resize_and_crop(img, size=size, crop_fraction=crop_fraction), dtype=np.uint8)
    except (OSError, ValueError, MemoryError) as e:
        raise ImageLoadError(path, f"{type(e).__name__}: {e}") from e
    if arr.shape != (size, size, 3):
        raise ImageLoadError(path, f"decoded to shape {arr.shape}, expected {(size, size, 3)}")
    return arr


def normalise(images: np.ndarray, *, normalisation: str, dtype=np.float32) -> np.ndarray:
    """Map uint8 RGB images to a network's input range.

    .. math::
        \\text{mobilenet\\_v2}: x = (u - 128) / 128 \\qquad
        \\text{alexnet}: x = (u / 255 - \\mu) / \\sigma \\qquad
        \\text{caffe}: x = u_{BGR} - \\mu_{BGR}

    Args:
        images: ``(..., H, W, 3)`` uint8 RGB.
        normalisation: one of :data:`NORMALISATIONS`.
        dtype: output float dtype.

    Returns:
        ``(..., H, W, 3)`` float array.
    """
    images = np.asarray(images)
    if images.shape[-1:] != (3,):
        raise ValueError(f"images must end in 3 RGB channels, got shape {images.shape}")
    x = images.astype(np.float32)
    if normalisation == "mobilenet_v2":
        x = (x - 128.0) / 128.0
    elif normalisation == "alexnet":
        x = (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    elif normalisation == "caffe":
        x = x[..., ::-1] - CAFFE_MEAN_BGR
    elif normalisation == "none":
        pass
    else:
        raise ValueError(f"unknown normalisation {normalisation!r}; choose one of {NORMALISATIONS}")
    return x.astype(dtype)


@dataclasses.dataclass
class LoadedBatch:
    """Result of :func:`load_batch`.

    Attributes:
        images: ``(n_ok, size, size, 3)`` uint8 for the images that decoded.
        ok: indices (into the requested paths) of those images, in order.
        failed: ``[(path, reason), ...]`` for the ones that did not.
    """

    images: np.ndarray
    ok: list[int]
    failed: list[tuple[str, str]]


def load_batch(paths: Sequence[str | os.PathLike], *, preprocess: Preprocess = Preprocess()) -> LoadedBatch:
    """Decode many images, skipping (and recording) the ones that fail.

    Args:
        paths: image files.
        preprocess: geometry (normalisation is not applied here: the arrays stay uint8).

    Returns:
        A :class:`LoadedBatch`.
    """
    arrays, ok, failed = [], [], []
    for i, p in enumerate(paths):
        try:
            arrays.append(load_image(p, size=preprocess.size, crop_fraction=preprocess.crop_fraction,
                                     max_pixels=preprocess.max_pixels))
            ok.append(i)
        except ImageLoadError as e:
            failed.append((e.path, e.reason))
    if arrays:
        images = np.stack(arrays)
    else:
        images = np.zeros((0, preprocess.size, preprocess.size, 3), np.uint8)
    return LoadedBatch(images=images, ok=ok, failed=failed)


def read_list_file(list_file: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                   suffix: str = ".jpeg") -> tuple[list[str], list[str]]:
    """Read a Corel5k-style list file (one id per line, e.g. ``1000/1003``) into ids and image paths.

    Args:
        list_file: text file, one image id per line; blank lines are ignored.
        image_root: directory the ids are relative to (default: the list file's directory).
        suffix: appended to each id to form the file name.

    Returns:
        ``(ids, paths)``.
    """
    list_file = os.fspath(list_file)
    root = os.path.dirname(list_file) if image_root is None else os.fspath(image_root)
    with open(list_file, encoding="utf-8") as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise ValueError(f"list file {list_file} has no image ids")
    return ids, [os.path.join(root, i + suffix) for i in ids]
