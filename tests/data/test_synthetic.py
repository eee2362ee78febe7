"""Synthetic dataset: tag rules by hand, rendering, noise, determinism, and the generic loader reading it."""
from __future__ import annotations

import numpy as np
import pytest

from dcca_jax.data import datasets
from dcca_jax.data import synthetic
from dcca_jax.data.synthetic import Scene, SceneObject


def _obj(shape="circle", colour="red", texture="plain", r=0.1, cx=0.5, cy=0.5):
    return SceneObject(shape, colour, texture, cx, cy, r, 0.0)


def test_vocabulary_size_and_uniqueness():
    assert len(synthetic.VOCABULARY) == len(set(synthetic.VOCABULARY)) == 44
    assert set(synthetic.CONJUNCTION_WORDS + synthetic.COUNT_WORDS + synthetic.XOR_WORDS + ("large",)) == set(
        synthetic.CONCEPTS
    )


@pytest.mark.parametrize(
    "scene, expect",
    [
        # Yellow circle in the sky: sun; yellow (bright) on a bright scene: no contrast; one object: single.
        (Scene("sky", (_obj(colour="yellow", r=0.25),)), ["sky", "circle", "yellow", "large", "sun", "single", "busy", "patterned"]),
        # The same circle at night: no sun, but a bright object on a dark scene: contrast (the XOR).
        (Scene("night", (_obj(colour="yellow"),)), ["night", "circle", "yellow", "single", "contrast", "warm"]),
        # Red striped square + black striped cross: candy, flag, zebra; two colours, two objects.
        (
            Scene("sand", (_obj("square", "red", "striped", r=0.2), _obj("cross", "black", "striped"))),
            ["sand", "square", "cross", "red", "black", "striped", "flag", "candy", "zebra", "pair", "busy", "bold"],
        ),
        # Three blue objects: crowd and monochrome, dark biggest object on a bright scene: contrast.
        (
            Scene("indoor", (_obj("star", "blue", r=0.15), _obj("star", "blue"), _obj("circle", "blue", "dotted"))),
            ["indoor", "circle", "star", "blue", "dotted", "ball", "crowd", "monochrome", "contrast", "bold", "warm", "patterned"],
        ),
        # Checkered square, orange triangle, green star on grass: board, fire, flower, colorful.
        (
            Scene("grass", (_obj("square", "white", "checkered", r=0.2), _obj("triangle", "orange"), _obj("star", "green"))),
            ["grass", "square", "triangle", "star", "orange", "green", "white", "checkered",
             "flower", "board", "fire", "crowd", "colorful", "contrast", "busy", "patterned"],
        ),
    ],
)
def test_scene_tags_by_hand(scene, expect):
    tags = synthetic.scene_tags(scene, large_fraction=0.2)
    assert set(tags) == set(expect)
    assert tags == [w for w in synthetic.VOCABULARY if w in tags]


def test_render_puts_the_object_where_it_belongs():
    scene = Scene("sand", (_obj("square", "red", r=0.2),))
    img = np.asarray(synthetic.render_scene(scene, size=64, rng=np.random.default_rng(0)), float)
    centre, corner = img[32, 32], img[2, 2]
    # Red dominates at the centre (the square), the sand's beige at the corner (brightness jitter is +-15%).
    assert centre[0] > 2 * centre[1] and centre[0] > 2 * centre[2]
    assert corner[0] > 150 and corner[1] > 130 and corner[2] > 90 and corner[2] < corner[0]


def test_noise_rates():
    cfg = synthetic.synthetic_config()
    clean = ["sky", "circle", "red", "sun"]
    cfg.missing_rate, cfg.confusion_rate, cfg.noise_rate = 0.0, 0.0, 0.0
    assert synthetic.noisy_tags(clean, np.random.default_rng(0), config=cfg) == clean
    cfg.missing_rate = 1.0
    assert synthetic.noisy_tags(clean, np.random.default_rng(0), config=cfg) == []
    cfg.missing_rate, cfg.confusion_rate = 0.0, 1.0
    assert synthetic.noisy_tags(clean, np.random.default_rng(0), config=cfg) == ["sky", "circle", "orange", "sun"]
    # Missing rate measured over many draws is close to the configured one.
    cfg.missing_rate, cfg.confusion_rate = 0.3, 0.0
    kept = np.mean([len(synthetic.noisy_tags(clean, np.random.default_rng(i), config=cfg)) for i in range(2000)])
    assert kept / 4 == pytest.approx(0.7, abs=0.03)


def _small(**kw):
    cfg = synthetic.synthetic_config()
    cfg.n_images, cfg.image_size = 12, 48
    cfg.update(kw)
    return cfg


def test_deterministic_bytes_and_prefix_stability(tmp_path):
    a = synthetic.generate(tmp_path / "a", config=_small())
    b = synthetic.generate(tmp_path / "b", config=_small())
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 12 + 6
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    # Image i depends only on (seed, i): a 6-image set is the first 6 of the 12-image one.
    c = synthetic.generate(tmp_path / "c", config=_small(n_images=6))
    assert (c / "images/000005.png").read_bytes() == (a / "images/000005.png").read_bytes()
    assert (c / "truth.tsv").read_text().splitlines() == (a / "truth.tsv").read_text().splitlines()[:6]
    d = synthetic.generate(tmp_path / "d", config=_small(seed=1))
    assert (d / "images/000000.png").read_bytes() != (a / "images/000000.png").read_bytes()


def test_generic_loader_reads_it(tmp_path):
    out = synthetic.generate(tmp_path / "s", config=_small(n_images=20, test_fraction=0.25))
    d = datasets.load_image_folder(out)
    assert d.vocabulary == synthetic.VOCABULARY
    assert (len(d.train), len(d.test)) == (15, 5)
    assert d.info["unlisted_files"] == 0 and d.info["missing_images"] == []
    # tags.tsv rows agree with the loader's tags; truth.tsv has the scene word of scenes.jsonl.
    rows = dict(line.split("\t") for line in (out / "tags.tsv").read_text().splitlines())
    for name, tags in zip(d.train.ids, d.train.tags):
        assert tuple(rows[name].split()) == tags
    import json

    scenes = [json.loads(s) for s in (out / "scenes.jsonl").read_text().splitlines()]
    truth = [line.split("\t")[1].split() for line in (out / "truth.tsv").read_text().splitlines()]
    assert all(s["scene"] in t for s, t in zip(scenes, truth))


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="min_objects"):
        synthetic.generate(tmp_path, config=_small(min_objects=3, max_objects=2))
    with pytest.raises(ValueError, match="image_size"):
        synthetic.generate(tmp_path, config=_small(image_size=8))
