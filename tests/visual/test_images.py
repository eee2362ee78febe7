"""Image loading: formats, colour modes, EXIF orientation, geometry, normalisation, failures."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dcca_jax.visual import images


def _gradient(w, h):
    """An RGB image whose colour identifies each position (red ~ x, green ~ y)."""
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    return np.stack([x, y, np.full_like(x, 77)], -1).round().astype(np.uint8)


def test_resize_and_crop_geometry_matches_hand_computation():
    # 300x200 -> shorter side round(224/0.875) = 256 -> 384x256 -> central 224x224 at (80, 16).
    img = Image.fromarray(_gradient(300, 200))
    out = images.resize_and_crop(img, size=224, crop_fraction=0.875)
    assert out.size == (224, 224)
    full = img.resize((384, 256), Image.Resampling.BILINEAR, reducing_gap=None)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(full)[16:240, 80:304])


def test_formats_roundtrip(tmp_path):
    arr = _gradient(64, 48)
    for ext in ("png", "bmp", "jpeg"):
        p = tmp_path / f"a.{ext}"
        Image.fromarray(arr).save(p)
        out = images.load_image(p, size=32, crop_fraction=1.0)
        ref = np.asarray(images.resize_and_crop(Image.fromarray(arr), size=32, crop_fraction=1.0))
        tol = 0 if ext != "jpeg" else 12  # JPEG is lossy
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - ref.astype(int)).max() <= tol, ext


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = images.load_image(p, size=16, crop_fraction=1.0)
    assert np.all(out[..., 0] > 200) and np.all(out[..., 2] < 50)  # red: the first frame


def test_greyscale_palette_alpha_cmyk(tmp_path):
    grey = Image.new("L", (20, 20), 100)
    grey.save(tmp_path / "g.png")
    np.testing.assert_array_equal(images.load_image(tmp_path / "g.png", size=8, crop_fraction=1.0), 100)

    pal = Image.new("P", (20, 20))
    pal.putpalette([10, 20, 30] + [0] * 765)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(images.load_image(tmp_path / "p.png", size=8, crop_fraction=1.0)[0, 0], [10, 20, 30])

    # 50%-transparent pure red over white -> (255, 127/128, 127/128).
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 128))
    rgba.save(tmp_path / "a.png")
    px = images.load_image(tmp_path / "a.png", size=8, crop_fraction=1.0)[0, 0].astype(int)
    assert px[0] == 255 and abs(px[1] - 127) <= 1 and abs(px[2] - 127) <= 1

    cmyk = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(tmp_path / "c.jpg")
    px = images.load_image(tmp_path / "c.jpg", size=8, crop_fraction=1.0)[4, 4].astype(int)
    assert px[0] > 230 and px[1] < 30 and px[2] < 30


def test_16bit_greyscale(tmp_path):
    arr = np.full((10, 10), 65535 // 2, np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    out = images.load_image(tmp_path / "g16.png", size=4, crop_fraction=1.0)
    assert np.all(np.abs(out.astype(int) - 127) <= 1)


def test_exif_orientation_applied(tmp_path):
    # Stored landscape 60x40 with a red left half; orientation 6 = rotate 90 degrees clockwise to display,
    # so the displayed image is portrait 40x60 with red in the top half.
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30] = (255, 0, 0)
    arr[:, 30:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif, quality=95)
    out = images.load_image(p, size=40, crop_fraction=1.0)  # 40x60 -> crop the middle 40x40
    ref = np.rot90(arr, k=-1)  # clockwise
    assert ref.shape == (60, 40, 3)
    assert out[2, 20, 0] > 200 and out[2, 20, 2] < 60  # top is red
    assert out[37, 20, 2] > 200 and out[37, 20, 0] < 60  # bottom is blue


def test_corrupt_truncated_missing_are_reported_not_raised(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(_gradient(30, 30)).save(good)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\x00\x01not an image at all" * 10)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    missing = tmp_path / "missing.jpg"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")

    with pytest.raises(images.ImageLoadError, match="trunc.jpg"):
        images.load_image(truncated)

    batch = images.load_batch([good, garbage, truncated, missing, empty, good],
                              preprocess=images.Preprocess(size=16, crop_fraction=1.0))
    assert batch.ok == [0, 5]
    assert batch.images.shape == (2, 16, 16, 3)
    failed = dict(batch.failed)
    assert set(failed) == {str(garbage), str(truncated), str(missing), str(empty)}
    assert "not found" in failed[str(missing)]
    assert "truncated" in failed[str(truncated)].lower() or "broken" in failed[str(truncated)].lower()


def test_normalisations_against_hand_values():
    u = np.array([[[[0, 128, 255]]]], np.uint8)
    np.testing.assert_allclose(images.normalise(u, normalisation="mobilenet_v2")[0, 0, 0], [-1.0, 0.0, 127 / 128])
    np.testing.assert_allclose(images.normalise(u, normalisation="alexnet")[0, 0, 0],
                               [(0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225], rtol=1e-6)
    np.testing.assert_allclose(images.normalise(u, normalisation="caffe")[0, 0, 0],
                               [255 - 104.00699, 128 - 116.66877, 0 - 122.67892], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown normalisation"):
        images.normalise(u, normalisation="vgg")
    with pytest.raises(ValueError, match="crop_fraction"):
        images.Preprocess(crop_fraction=0.0)


def test_read_list_file(tmp_path):
    lf = tmp_path / "list.txt"
    lf.write_text("1000/1003\n\n2000/2001\n")
    ids, paths = images.read_list_file(lf)
    assert ids == ["1000/1003", "2000/2001"]
    assert paths == [str(tmp_path / "1000/1003.jpeg"), str(tmp_path / "2000/2001.jpeg")]


def png_header_only(path, width, height):
    """A PNG whose header declares ``width x height`` but whose file is a few dozen bytes (a pixel bomb)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
                     + chunk(b"IEND", b""))
    return path


def test_16bit_scaled_as_value_over_257(tmp_path):
    v = np.arange(0, 65536, 97, dtype=np.uint16)[:600].reshape(20, 30)
    v[0, 0], v[0, 1] = 65535, 32896
    Image.fromarray(v).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # a 16-bit mode, not 8-bit L
    got = images.read_image(tmp_path / "g16.png")
    want = np.rint(v / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, -1))
    assert got[0, 0, 0] == 255 and got[0, 1, 0] == 128


@pytest.mark.parametrize("orientation, hand", [
    (2, lambda a: a[:, ::-1]), (3, lambda a: a[::-1, ::-1]), (4, lambda a: a[::-1]),
    (5, lambda a: a.transpose(1, 0, 2)), (6, lambda a: np.rot90(a, -1)), (7, lambda a: a[::-1, ::-1].transpose(1, 0, 2)),
    (8, lambda a: np.rot90(a, 1)),
])
def test_exif_orientation_against_hand_rotated_array(tmp_path, orientation, hand):
    arr = _gradient(6, 4)
    arr[0, 0] = (255, 255, 255)  # mark the stored top-left corner
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(tmp_path / "o.png", exif=exif)
    np.testing.assert_array_equal(images.read_image(tmp_path / "o.png"), hand(arr))


def test_exif_rotated_large_jpeg_is_reduced_then_rotated(tmp_path):
    arr = np.zeros((1200, 1600, 3), np.uint8)
    arr[:, :800] = (255, 0, 0)  # red left half
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    got = images.read_image(tmp_path / "r.jpg", min_side=256)
    assert got.shape == (400, 300, 3)  # draft 1/4 (400x300), portrait after rotation
    assert got[10, 150, 0] > 200 and got[10, 150, 2] < 60 and got[390, 150, 0] < 60  # red on top


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_limit_refuses_before_decoding_and_names_the_file(tmp_path):
    big = png_header_only(tmp_path / "bomb.png", 12_000, 10_000)  # 120 MP declared, 70 bytes on disk
    with pytest.raises(images.ImageLoadError, match=r"bomb.png: declared size 12000x10000 = 120.0 MP exceeds the "
                                                    r"limit of 89.5 MP.*--config.visual.max_pixels"):
        images.read_image(big)
    huge = png_header_only(tmp_path / "huge.png", 100_000, 100_000)  # over Pillow's own bomb limit
    with pytest.raises(images.ImageLoadError, match=r"huge.png: refused before decoding.*MAX_IMAGE_PIXELS"):
        images.read_image(huge)
    Image.new("RGB", (30, 20)).save(tmp_path / "small.png")
    with pytest.raises(images.ImageLoadError, match="small.png: declared size 30x20"):
        images.load_image(tmp_path / "small.png", max_pixels=599)
    assert images.load_image(tmp_path / "small.png", size=8, max_pixels=600).shape == (8, 8, 3)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's global setting untouched


def test_large_jpeg_decoded_reduced_small_images_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=80)
    got = images.read_image(tmp_path / "big.jpg", min_side=256)
    assert got.shape == (375, 500, 3)  # DCT scaling 1/8, shorter side still >= 256
    assert images.read_image(tmp_path / "big.jpg", min_side=100).shape == (125, 167, 3)  # 1/8 then reduce(3)
    # At or under the working size the pixels are exactly the decoded file's (no reduction).
    small = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    for name in ("s.png", "s.jpg"):
        Image.fromarray(small).save(tmp_path / name)
        with Image.open(tmp_path / name) as im:
            ref = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(images.read_image(tmp_path / name, min_side=256), ref)
    # A thin strip under the pixel budget is shrunk to it.
    assert images.read_image(tmp_path / "big.jpg", max_work_pixels=100_000).size <= 3 * 100_000


def test_odd_modes_and_shapes(tmp_path):
    Image.new("1", (9, 7), 1).save(tmp_path / "bit.png")
    np.testing.assert_array_equal(images.read_image(tmp_path / "bit.png"), 255)
    Image.new("LA", (5, 5), (0, 0)).save(tmp_path / "la.png")  # transparent black on white
    np.testing.assert_array_equal(images.read_image(tmp_path / "la.png"), 255)
    pal = Image.new("P", (6, 6), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    np.testing.assert_array_equal(images.read_image(tmp_path / "pt.png")[0, 0], [200, 10, 10])
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "one.png")
    assert images.load_image(tmp_path / "one.png", size=16).shape == (16, 16, 3)
    strip = _gradient(4000, 3)
    Image.fromarray(strip).save(tmp_path / "strip.png")
    out = images.load_image(tmp_path / "strip.png", size=224)
    # The centre of the strip, stretched: the red channel (x position) stays near the middle of its range.
    assert out.shape == (224, 224, 3) and abs(int(out[112, 112, 0]) - 128) <= 2
    for name, data in (("empty.jpg", b""), ("text.jpg", b"hello, not an image\n")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(images.ImageLoadError, match=name):
            images.read_image(tmp_path / name)
    with pytest.raises(images.ImageLoadError, match="empty file"):
        images.read_image(tmp_path / "empty.jpg")
