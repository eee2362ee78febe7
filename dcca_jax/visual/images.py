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

A corrupt, truncated or unreadable file raises :class:`ImageLoadError` from :func:`load_image`; the batch
helpers (:func:`load_batch`) catch it and return the path with the reason so a batch job never crashes.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# BVLC reference CaffeNet/AlexNet mean pixel (B, G, R) of ilsvrc_2012_mean.binaryproto.
CAFFE_MEAN_BGR = np.array([104.00699, 116.66877, 122.67892], np.float32)

NORMALISATIONS = ("mobilenet_v2", "alexnet", "caffe", "none")


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
    """

    size: int = 224
    crop_fraction: float = 0.875
    normalisation: str = "mobilenet_v2"

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"Preprocess.size must be >= 1, got {self.size}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"Preprocess.crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"unknown normalisation {self.normalisation!r}; choose one of {NORMALISATIONS}")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited on white, CMYK and 16-bit handled).

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
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
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
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
    left = (new_w - size) // 2
    top = (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image(path: str | os.PathLike, *, size: int = 224, crop_fraction: float = 0.875) -> np.ndarray:
    """Decode one image file to a uint8 RGB ``(size, size, 3)`` array, upright and centre-cropped.

    Args:
        path: image file (JPEG, PNG, BMP, GIF first frame, TIFF, WebP, ...).
        size: side of the square output.
        crop_fraction: see :func:`resize_and_crop`.

    Returns:
        ``(size, size, 3)`` uint8 array.

    Raises:
        ImageLoadError: the file is missing, unreadable, not an image, truncated or corrupt.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            img.seek(0)  # first frame of animated GIF/WebP/TIFF
            img.load()  # decode now, inside the try, so truncation is caught here
            img = ImageOps.exif_transpose(img)
            img = to_rgb(img)
            if min(img.size) < 1:
                raise ImageLoadError(path, f"empty image of size {img.size}")
            img = resize_and_crop(img, size=size, crop_fraction=crop_fraction)
            arr = np.asarray(img, dtype=np.uint8)
    except ImageLoadError:
        raise
    except FileNotFoundError as e:
        raise ImageLoadError(path, f"file not found ({e.strerror})") from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(path, "not a recognised image format (corrupt or not an image)") from e
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
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
            arrays.append(load_image(p, size=preprocess.size, crop_fraction=preprocess.crop_fraction))
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
