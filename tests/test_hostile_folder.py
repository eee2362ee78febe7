"""A hostile image folder: every way a file or a tags.tsv line can be wrong, through loading, the
hand-crafted backbone, JEC and MobileNetV2; and the reader's peak memory on large photos (slow)."""
from __future__ import annotations

import io
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dcca_jax import pipeline
from dcca_jax.baselines import jec
from dcca_jax.data import datasets
from dcca_jax.visual import images
from experiments.configs import image_folder
from experiments.configs.default import default_tflite_path
from tests.visual.test_images import png_header_only

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = ("sky", "sea", "tree", "grass", "sand")
# Files that must be skipped, and why (a substring of the reason).
BAD = {"zero.jpg": "empty file", "truncated.jpg": "truncated", "text.jpg": "not a recognised image",
       "bomb.png": "exceeds the limit"}
ODD = ("cmyk.jpg", "g16.png", "rgba.png", "palette.png", "la.png", "bit.png", "one.png", "strip.png", "rotated.jpg")


def make_hostile_folder(root: pathlib.Path) -> pathlib.Path:
    """tags.tsv beside images/ (bare names); good, odd-but-valid and broken files; broken tags lines."""
    img = root / "images"
    img.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(24):  # ordinary photos: a colour per scene, tags by scene
        scene = i % 4
        base = np.array([[70, 130, 230], [20, 60, 160], [30, 120, 40], [220, 200, 140]][scene])
        arr = np.clip(base + rng.normal(0, 20, (48, 64, 3)), 0, 255).astype(np.uint8)
        name = f"p{i:02d}." + ("jpg" if i % 2 else "png")
        Image.fromarray(arr).save(img / name)
        lines.append(f"{name}\t{WORDS[scene]} {WORDS[(scene + 1) % 5]}")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(img / "cmyk.jpg")
    Image.fromarray((np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50)).save(img / "g16.png")
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(img / "rgba.png")
    pal = Image.new("P", (40, 30), 1)
    pal.putpalette([0, 0, 0, 30, 120, 40] + [0] * 762)
    pal.save(img / "palette.png", transparency=0)
    Image.new("LA", (40, 30), (90, 200)).save(img / "la.png")
    Image.new("1", (40, 30), 1).save(img / "bit.png")
    Image.new("RGB", (1, 1), (70, 130, 230)).save(img / "one.png")
    Image.fromarray(np.full((3, 4000, 3), 200, np.uint8)).save(img / "strip.png")
    rot = Image.fromarray(np.full((30, 40, 3), (220, 200, 140), np.uint8))
    exif = rot.getexif()
    exif[0x0112] = 6
    rot.save(img / "rotated.jpg", exif=exif)
    for k, name in enumerate(ODD):
        lines.append(f"{name}\t{WORDS[k % 5]}")
    (img / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (img / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (img / "text.jpg").write_text("this is a text file, not a JPEG\n")
    png_header_only(img / "bomb.png", 12_000, 10_000)
    lines += [f"{name}\tsky" for name in BAD]
    Image.new("RGB", (40, 30), (5, 5, 5)).save(img / "untagged.png")
    Image.new("RGB", (40, 30), (9, 9, 9)).save(img / "notab.jpg")
    lines += ["missing.jpg\tsea",  # not on disk
              "p00.png\ttree",  # duplicate name: the first line is kept
              "notab.jpg sky sea",  # no TAB
              "untagged.png\t"]  # an empty tag list
    data = ("\n".join(lines) + "\n").encode() + b"caf\xe9.jpg\tsky\n"  # not UTF-8
    (root / "tags.tsv").write_bytes(data)
    return root


def _pipeline_config(root, backbone):
    c = image_folder.get_config()
    c.data.root = str(root)
    c.data.options.test_fraction = 0.3
    c.visual.backbone = backbone
    c.visual.batch_size = 8
    return c


def test_hostile_folder_loads_with_every_problem_named(tmp_path, caplog):
    root = make_hostile_folder(tmp_path / "photos")
    c = _pipeline_config(root, "handcrafted")
    with caplog.at_level("WARNING"):
        d = datasets.load_dataset("image_folder", root, **dict(c.data.options))
    assert d.info["image_root"] == str(root / "images")
    assert d.info["missing_images"] == ["missing.jpg"]
    skipped = d.info["skipped_lines"]
    tsv = str(root / "tags.tsv")
    assert len(skipped) == 3 and all(m.startswith(tsv + ":") for m in skipped)
    assert any("not valid UTF-8" in m for m in skipped)
    assert any("duplicate file name 'p00.png'" in m for m in skipped)
    assert any("found 0 tabs" in m for m in skipped)
    names = set(d.train.ids + d.test.ids)
    assert set(BAD) | set(ODD) <= names and "notab.jpg" not in names  # decoding is the visual stage's job
    assert "untagged.png" in names or d.info["untagged_dropped"] == ["untagged.png"]
    assert all(t for t in d.train.tags)
    assert any("missing.jpg" in r.getMessage() and str(root / "images") in r.getMessage() for r in caplog.records)


def _check_failed(failed, root):
    by_name = {pathlib.Path(f["path"]).name: f["reason"] for f in failed}
    assert set(by_name) == set(BAD), by_name
    for name, why in BAD.items():
        assert why in by_name[name], (name, by_name[name])
    assert all(f["path"].startswith(str(root)) for f in failed)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_hostile_folder_handcrafted_and_jec(tmp_path):
    root = make_hostile_folder(tmp_path / "photos")
    p = pipeline.Pipeline(_pipeline_config(root, "handcrafted"), tmp_path / "run")
    cnn = p.stage_cnn()
    _check_failed(cnn["info"]["failed"], root)
    for s in ("train", "test"):
        assert np.isfinite(cnn[s][cnn[f"{s}_ok"]]).all()
    # JEC on the same surviving rows: finishes, nothing re-listed.
    r = p.recommend_baseline("jec")
    assert "failed_images" not in r and r["scores"].shape[0] == int(cnn["test_ok"].sum())
    # Directly, over every path: the same files fail for the same reasons.
    data = p.stage_data()
    paths = list(data["train"].image_paths) + list(data["test"].image_paths)
    feats = jec.compute_jec_features(paths)
    _check_failed(feats.failed, root)
    assert np.isfinite(feats["lab"][feats.ok]).all() and np.isnan(feats["lab"][~feats.ok]).all()
    # A file that breaks after the visual stage read it: JEC lists it, gives it no tags of its own, finishes.
    victim = next(q for q in data["test"].image_paths if q.name.startswith("p"))
    victim.write_bytes(b"no longer an image")
    for cache in (tmp_path / "run" / "stages" / "jec_features").glob("*.npz"):
        cache.unlink()
    r = p.recommend_baseline("jec")
    assert [pathlib.Path(f["path"]).name for f in r["failed_images"]] == [victim.name]
    assert r["scores"].shape[0] == int(cnn["test_ok"].sum())


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_hostile_folder_mobilenet_and_jec_reads_only_survivors(tmp_path, monkeypatch):
    weights = pathlib.Path(default_tflite_path())
    if not weights.exists():
        pytest.skip(f"MobileNetV2 weights not found at {weights} (set DCCA_MOBILENET_TFLITE or place ../shared)")
    root = make_hostile_folder(tmp_path / "photos")
    c = _pipeline_config(root, "mobilenet_v2")
    c.visual.tflite_path = str(weights)
    p = pipeline.Pipeline(c, tmp_path / "run")
    cnn = p.stage_cnn()
    _check_failed(cnn["info"]["failed"], root)
    read = []
    real = images.read_image
    monkeypatch.setattr(images, "read_image", lambda path, **kw: (read.append(pathlib.Path(path).name), real(path, **kw))[1])
    r = p.recommend_baseline("jec")
    assert read and not set(read) & set(BAD)  # the files the CNN stage skipped are not read again
    assert "failed_images" not in r and np.isfinite(r["scores"]).any()


# ------------------------------------------------------------------------------------------------ memory
_MEASURE = r"""
import json, resource, sys
from absl import logging
logging.set_verbosity(logging.ERROR)
backbone, paths, weights = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
from dcca_jax import pipeline
from dcca_jax.visual import extract
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if backbone == "handcrafted":
    x, ok, failed = pipeline.handcrafted_features(paths)
elif backbone == "reader":  # the CNN geometry and JEC's working size, nothing else
    from dcca_jax.visual import images
    batch = images.load_batch(paths)
    for p in paths:
        images.read_image(p, min_side=256, max_work_pixels=1 << 20)
    ok, failed = [True] * len(paths), [{"reason": r} for _, r in batch.failed]
else:
    cfg = extract.backbone_config()
    cfg.mobilenet_v2.tflite_path = weights
    res = extract.extract_features(paths, backbone=extract.build_backbone(cfg), batch_size=4)
    ok, failed = res.ok, res.failed
print(json.dumps({"before_mb": before / 1024, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "ok": [bool(v) for v in ok], "failed": [f["reason"] for f in failed]}))
"""


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    gen = r"""
import sys, numpy as np
from PIL import Image
d = sys.argv[1]
x = np.linspace(0, 255, 4000, dtype=np.float32)[None, :]
y = np.linspace(0, 255, 3000, dtype=np.float32)[:, None]
noise = np.random.default_rng(0).normal(0, 8, (3000, 4000, 1)).astype(np.float32)
for i in range(2):
    arr = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2 + 40 * i], -1) + noise
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(f"{d}/photo{i}.jpg", quality=90)
Image.new("RGB", (13000, 13077), (90, 140, 200)).save(f"{d}/big170mp.png", compress_level=1)
Image.new("RGBA", (10000, 8900), (90, 140, 200, 128)).save(f"{d}/big89mp_rgba.png", compress_level=1)
"""
    subprocess.run([sys.executable, "-c", gen, str(d)], check=True)  # its memory is not ours
    return d


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["handcrafted", "mobilenet_v2"])
def test_peak_rss_on_large_photos(big_folder, backbone):
    weights = default_tflite_path()
    if backbone == "mobilenet_v2" and not pathlib.Path(weights).exists():
        pytest.skip(f"MobileNetV2 weights not found at {weights}")
    paths = [str(big_folder / n) for n in ("photo0.jpg", "big170mp.png", "photo1.jpg", "big89mp_rgba.png")]
    out = subprocess.run([sys.executable, "-c", _MEASURE, backbone, json.dumps(paths), weights], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout
    m = json.loads(out.strip().splitlines()[-1])
    print(backbone, m)
    assert m["ok"] == [True, False, True, True]  # the 170 MP PNG is refused by the pixel limit
    assert "170.0 MP exceeds the limit" in m["failed"][0]
    assert m["peak_mb"] < 1500, m


@pytest.mark.slow
def test_a_12mp_photo_costs_well_under_200mb(big_folder):
    paths = [str(big_folder / "photo0.jpg")]
    out = subprocess.run([sys.executable, "-c", _MEASURE, "reader", json.dumps(paths), ""], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout
    m = json.loads(out.strip().splitlines()[-1])
    print("reader", m)
    assert m["peak_mb"] - m["before_mb"] < 100, m


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_gallery_reads_through_the_reader(tmp_path, caplog):
    from dcca_jax import report

    root = make_hostile_folder(tmp_path / "photos")
    items = [{"path": root / "images" / n, "truth": ["sky"], "recommended": ["sky", "sea"]}
             for n in ("rotated.jpg", "g16.png", *BAD)]
    with caplog.at_level("WARNING"):
        _, png = report.gallery(items, tmp_path / "gallery", thumb=32, columns=3)
    assert Image.open(png).size == (3 * 42, 2 * 76)
    assert {n for n in BAD if any(n in r.getMessage() for r in caplog.records)} == set(BAD)
