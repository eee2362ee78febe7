"""The whole pipeline on a generated family of datasets: the shipped test config, "auto" sizes, no size override.

Each dataset is one shape users met: vocabularies of 2, 3, 23 and 1,000 words, single-tag images, 8-d
precomputed features, 40 images, a tags.tsv beside an ``images/`` folder. The data-kind fields come from the
shipped config for that kind (``image_folder.py``, ``features.py``); everything else is ``test.py``.
"""
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from dcca_jax import pipeline
from tests.conftest import shipped_config

_SIDE = 16  # pixels: the hand-crafted features resize anyway


pytestmark = pytest.mark.usefixtures("fast_compiles")


def _tag_lists(rng, n: int, words: list[str], low: int, high: int) -> list[list[str]]:
    return [list(rng.choice(words, size=int(rng.integers(low, high + 1)), replace=False)) for _ in range(n)]


def write_image_folder(root: pathlib.Path, tags: list[list[str]], *, vocabulary=None, image_dir: str = "") -> pathlib.Path:
    """Tiny PNGs whose colour follows the first tag (so the views correlate) and a tags.tsv naming them."""
    rng = np.random.default_rng(len(tags))
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    colours = {}
    lines = []
    for i, ts in enumerate(tags):
        base = colours.setdefault(ts[0] if ts else "", rng.integers(0, 256, 3))
        pixels = np.clip(base + rng.normal(0, 25, (_SIDE, _SIDE, 3)), 0, 255).astype(np.uint8)
        name = f"img{i:03d}.png"
        Image.fromarray(pixels).save(root / image_dir / name)
        lines.append(f"{name}\t{' '.join(ts)}")
    (root / "tags.tsv").write_text("\n".join(lines) + "\n")
    if vocabulary is not None:
        (root / "vocabulary.txt").write_text("\n".join(vocabulary) + "\n")
    return root


def write_features(root: pathlib.Path, *, n_train: int, n_test: int, dim: int, words: int) -> pathlib.Path:
    """The features layout (BUILD.md): features that carry the labels plus noise."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    mix = rng.normal(size=(words, dim))
    for split, n in (("train", n_train), ("test", n_test)):
        y = (rng.random((n, words)) < 0.3).astype(np.uint8)
        y[np.arange(n), rng.integers(0, words, n)] = 1
        np.save(root / f"{split}_features.npy", (y @ mix + rng.normal(0, 0.5, (n, dim))).astype(np.float32))
        np.save(root / f"{split}_labels.npy", y)
    (root / "vocabulary.txt").write_text("\n".join(f"w{j}" for j in range(words)) + "\n")
    return root


def _words(v: int) -> list[str]:
    return [f"w{j:04d}" for j in range(v)]


def _make(case: str, root: pathlib.Path) -> tuple[str, pathlib.Path]:
    rng = np.random.default_rng(0)
    if case == "features_8d":
        return "features", write_features(root, n_train=32, n_test=8, dim=8, words=10)
    if case == "vocabulary_1000":
        words = _words(1000)
        return "image_folder", write_image_folder(root, _tag_lists(rng, 40, words[:200], 2, 6), vocabulary=words)
    # 40 images in every folder: equal shapes reuse the functions compiled for the previous case.
    spec = {"vocabulary_2": (40, 2, 1, 2), "vocabulary_3": (40, 3, 1, 2), "vocabulary_23": (40, 23, 1, 4),
            "single_tag": (40, 10, 1, 1), "images_40": (40, 8, 2, 3), "tags_beside_images": (40, 8, 1, 3)}[case]
    n, v, low, high = spec
    image_dir = "images" if case == "tags_beside_images" else ""
    return "image_folder", write_image_folder(root, _tag_lists(rng, n, _words(v), low, high), image_dir=image_dir)


def family_config(kind: str, root: pathlib.Path):
    """test.py, with the data (and, for features, backbone and baselines) fields of the shipped config for ``kind``."""
    cfg = shipped_config("test")
    shipped = shipped_config({"image_folder": "image_folder", "features": "features"}[kind])
    cfg.data = shipped.data
    cfg.data.root = str(root)
    if kind == "features":
        cfg.visual.backbone = shipped.visual.backbone
        cfg.baselines = shipped.baselines
    return cfg


# The extremes run by default (2 and 1,000 words, single-tag images, 8-d features, 40 images); the middle
# vocabularies (3, 23 words) only with `make test-slow`, to keep the default suite short.
_MIDDLE = pytest.mark.slow
CASES = ["vocabulary_2", pytest.param("vocabulary_3", marks=_MIDDLE), pytest.param("vocabulary_23", marks=_MIDDLE),
         "vocabulary_1000", "single_tag", "features_8d", "images_40", "tags_beside_images"]


@pytest.mark.parametrize("case", CASES)
def test_whole_pipeline_runs_with_auto_sizes(case, tmp_path):
    kind, root = _make(case, tmp_path / "data")
    cfg = family_config(kind, root)
    results = pipeline.run_pipeline(cfg, tmp_path / "run")

    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    methods = {"General CCA", "CCA-KNN", "DMFR&CCA", "DMFR&KCCA", "DMFR&DCCA"} | ({"JEC"} if kind != "features" else set())
    assert set(on_disk["table2_recommendation"]) == methods
    sizes = on_disk["sizes"]
    v = on_disk["dataset"]["vocabulary"]
    for flag, r in sizes["resolved"].items():
        assert r["auto"], flag  # nothing explicit: the test config sets targets only
        assert r["min"] <= r["value"] and (r["max"] is None or r["value"] <= r["max"]), (flag, r)
        assert on_disk["config"] and _get(on_disk["config"], flag) == r["value"]
    assert _get(on_disk["config_requested"], "cca.n_components") == "auto"
    n_tags = sizes["resolved"]["recommend.n_tags"]["value"]
    assert n_tags == max(1, int(np.floor(sizes["data"]["tags_per_image"] + 0.5))) and n_tags <= v  # half up
    for method, row in results["table2_recommendation"].items():
        assert row["n_tags"] == n_tags, method
        assert 0.0 <= row["metrics"]["per_image/AF"] <= 1.0
    assert "## Sizes" in (tmp_path / "run" / "tables.md").read_text()
    if case == "single_tag":
        assert n_tags == 1 and sizes["data"]["single_tag_share"] == 1.0
    if case == "vocabulary_2":
        assert sizes["resolved"]["semantic.n_clusters"]["value"] == 2  # two words stay two deep words


def _get(tree: dict, flag: str):
    for part in flag.split("."):
        tree = tree[part]
    return tree
