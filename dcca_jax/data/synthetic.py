"""A procedurally generated tagged-image dataset (Pillow), so the whole pipeline runs with no download.

Each image is a scene: a background (one of 6 scene types, with its own texture) and 1-4 objects, each a
shape in a colour with a surface texture. Its tags come from the content:

- scene words: sky, night, grass, sand, water, indoor;
- object words: the shapes (circle, square, triangle, star, cross), colours (red, orange, yellow, green,
  blue, purple, white, black) and textures (striped, dotted, checkered; plain objects get no texture word)
  of the objects, and "large" when some object is big;
- concept words defined by conjunctions, counts and an exclusive-or, so that they are NOT linear functions
  of the pixel statistics: sun (yellow circle AND sky), moon (white circle AND night), flower (star AND
  grass), boat (triangle AND water), lamp (yellow object AND indoor), ball (dotted circle), flag (striped
  square), candy (red AND striped), zebra (black AND striped), board (checkered square), fire (orange
  triangle), single / pair / crowd (exactly 1 / exactly 2 / at least 3 objects), colorful (at least 3
  distinct object colours), monochrome (at least 2 objects, all one colour), contrast (the largest object's
  brightness class differs from the scene's: bright object on a dark scene or dark on bright, an XOR);
- four more exclusive-or words, each about half of the images, of the scene's brightness (sky, sand and
  indoor are bright) with one property: busy (XOR at least 3 objects), bold (XOR the largest object is
  large), warm (XOR the largest object is red, orange or yellow), patterned (XOR the largest object is
  textured). A linear read-out cannot represent an XOR of two features; these words are there so that a
  nonlinear correlation model has something to win (experiments/bench/synthetic.py measures how much).

44 words in all (:data:`VOCABULARY`). Scenes favour a typical object (the sky often has a yellow circle,
grass a star, ...: ``prototype_rate``), as real photo collections do, which keeps the concept words
frequent enough to learn.

Label noise, as in real annotations: each true tag is missing with probability ``missing_rate``; a colour
word is replaced by a similar colour (red/orange, blue/purple, white/yellow) with probability
``confusion_rate``; with probability ``noise_rate`` an image gets one wrong tag drawn uniformly from the
vocabulary. The noise-free tags are written too (``truth.tsv``) for analysis; models must train on
``tags.tsv``.

Output (:func:`generate`) is an image folder that :func:`dcca_jax.data.datasets.load_image_folder` reads::

    out/images/000000.png ...     RGB PNG, image_size x image_size
    out/tags.tsv                  "images/000000.png<TAB>tag tag ..." (noisy tags)
    out/truth.tsv                 the same with the noise-free tags
    out/train_list.txt            seeded split (test_fraction of the images in test)
    out/test_list.txt
    out/vocabulary.txt            the 44 words
    out/scenes.jsonl              the scene description of every image (scene, objects, attributes)

Deterministic: image i depends only on (seed, i) (so a bigger dataset extends a smaller one with the same
seed), the split only on (seed, n_images); same seed and Pillow/zlib versions give identical bytes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from collections.abc import Sequence

import ml_collections
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dcca_jax._io import atomic_write_text

__all__ = [
    "correlated_views",
    "SCENES",
    "SHAPES",
    "COLOURS",
    "TEXTURES",
    "CONCEPTS",
    "CONJUNCTION_WORDS",
    "COUNT_WORDS",
    "XOR_WORDS",
    "VOCABULARY",
    "synthetic_config",
    "SceneObject",
    "Scene",
    "sample_scene",
    "scene_tags",
    "noisy_tags",
    "render_scene",
    "generate",
]

SCENES = ("sky", "night", "grass", "sand", "water", "indoor")
SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
TEXTURES = ("plain", "striped", "dotted", "checkered")
CONCEPTS = (
    "large", "sun", "moon", "flower", "boat", "lamp", "ball", "flag", "candy", "zebra", "board", "fire",
    "single", "pair", "crowd", "colorful", "monochrome", "contrast", "busy", "bold", "warm", "patterned",
)
CONJUNCTION_WORDS = ("sun", "moon", "flower", "boat", "lamp", "ball", "flag", "candy", "zebra", "board", "fire")
COUNT_WORDS = ("single", "pair", "crowd", "colorful", "monochrome")
XOR_WORDS = ("contrast", "busy", "bold", "warm", "patterned")
VOCABULARY = SCENES + SHAPES + COLOURS + tuple(t for t in TEXTURES if t != "plain") + CONCEPTS

_RGB = {
    "red": (210, 30, 35), "orange": (245, 140, 20), "yellow": (245, 225, 40), "green": (40, 160, 50),
    "blue": (35, 70, 200), "purple": (130, 40, 160), "white": (245, 245, 245), "black": (20, 20, 20),
}
_BRIGHT_COLOURS = {"yellow", "white", "orange"}
_DARK_COLOURS = {"black", "blue", "purple"}
_BRIGHT_SCENES = {"sky", "sand", "indoor"}
_PROTOTYPES = {  # scene -> (shape or None, colour or None, texture or None)
    "sky": ("circle", "yellow", "plain"),
    "night": ("circle", "white", "plain"),
    "grass": ("star", None, None),
    "water": ("triangle", None, None),
    "indoor": (None, "yellow", None),
    "sand": ("circle", None, "dotted"),
}
_CONFUSABLE = {"red": "orange", "orange": "red", "blue": "purple", "purple": "blue", "white": "yellow", "yellow": "white"}


def synthetic_config() -> ml_collections.ConfigDict:
    """Generator settings: n_images, image_size, seed, test_fraction, min_objects, max_objects,
    prototype_rate, missing_rate, confusion_rate, noise_rate, large_fraction (an object whose radius exceeds
    this fraction of the image size is "large")."""
    c = ml_collections.ConfigDict()
    c.n_images = 1200
    c.image_size = 128
    c.seed = 0
    c.test_fraction = 0.2
    c.min_objects = 1
    c.max_objects = 4
    c.prototype_rate = 0.5
    c.missing_rate = 0.15
    c.confusion_rate = 0.05
    c.noise_rate = 0.1
    c.large_fraction = 0.2
    return c


@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    texture: str
    cx: float  # centre, as a fraction of the image size
    cy: float
    radius: float  # fraction of the image size
    angle: float  # degrees


@dataclasses.dataclass(frozen=True)
class Scene:
    scene: str
    objects: tuple[SceneObject, ...]

    def to_dict(self) -> dict:
        return {"scene": self.scene, "objects": [dataclasses.asdict(o) for o in self.objects]}


def _texture_probs() -> np.ndarray:
    return np.array([0.4, 0.2, 0.2, 0.2])


def sample_scene(rng: np.random.Generator, *, config: ml_collections.ConfigDict) -> Scene:
    """Draw one scene description (no pixels)."""
    scene = SCENES[rng.integers(len(SCENES))]
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    objects = []
    for k in range(n):
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = COLOURS[rng.integers(len(COLOURS))]
        texture = TEXTURES[rng.choice(len(TEXTURES), p=_texture_probs())]
        if k == 0 and rng.random() < config.prototype_rate:
            p_shape, p_colour, p_texture = _PROTOTYPES[scene]
            shape, colour, texture = p_shape or shape, p_colour or colour, p_texture or texture
        radius = float(rng.uniform(0.08, 0.28))
        objects.append(
            SceneObject(
                shape=shape, colour=colour, texture=texture,
                cx=float(rng.uniform(0.15, 0.85)), cy=float(rng.uniform(0.15, 0.85)),
                radius=radius, angle=float(rng.uniform(0, 360)),
            )
        )
    # Draw large objects first so that small ones stay visible on top.
    objects.sort(key=lambda o: -o.radius)
    return Scene(scene, tuple(objects))


def scene_tags(scene: Scene, *, large_fraction: float = 0.2) -> list[str]:
    """The noise-free tags of a scene, in VOCABULARY order (the rules are in the module docstring)."""
    objs = scene.objects
    tags = {scene.scene}
    for o in objs:
        tags.update((o.shape, o.colour))
        if o.texture != "plain":
            tags.add(o.texture)
    if any(o.radius > large_fraction for o in objs):
        tags.add("large")
    has = lambda pred: any(pred(o) for o in objs)  # noqa: E731
    if scene.scene == "sky" and has(lambda o: o.shape == "circle" and o.colour == "yellow"):
        tags.add("sun")
    if scene.scene == "night" and has(lambda o: o.shape == "circle" and o.colour == "white"):
        tags.add("moon")
    if scene.scene == "grass" and has(lambda o: o.shape == "star"):
        tags.add("flower")
    if scene.scene == "water" and has(lambda o: o.shape == "triangle"):
        tags.add("boat")
    if scene.scene == "indoor" and has(lambda o: o.colour == "yellow"):
        tags.add("lamp")
    if has(lambda o: o.shape == "circle" and o.texture == "dotted"):
        tags.add("ball")
    if has(lambda o: o.shape == "square" and o.texture == "striped"):
        tags.add("flag")
    if has(lambda o: o.colour == "red" and o.texture == "striped"):
        tags.add("candy")
    if has(lambda o: o.colour == "black" and o.texture == "striped"):
        tags.add("zebra")
    if has(lambda o: o.shape == "square" and o.texture == "checkered"):
        tags.add("board")
    if has(lambda o: o.shape == "triangle" and o.colour == "orange"):
        tags.add("fire")
    tags.add({1: "single", 2: "pair"}.get(len(objs), "crowd"))
    colours = {o.colour for o in objs}
    if len(colours) >= 3:
        tags.add("colorful")
    if len(objs) >= 2 and len(colours) == 1:
        tags.add("monochrome")
    biggest = max(objs, key=lambda o: o.radius)
    bright = scene.scene in _BRIGHT_SCENES
    if biggest.colour in _BRIGHT_COLOURS | _DARK_COLOURS and (biggest.colour in _BRIGHT_COLOURS) != bright:
        tags.add("contrast")
    if bright != (len(objs) >= 3):
        tags.add("busy")
    if bright != (biggest.radius > large_fraction):
        tags.add("bold")
    if bright != (biggest.colour in ("red", "orange", "yellow")):
        tags.add("warm")
    if bright != (biggest.texture != "plain"):
        tags.add("patterned")
    return [w for w in VOCABULARY if w in tags]


def noisy_tags(clean: Sequence[str], rng: np.random.Generator, *, config: ml_collections.ConfigDict) -> list[str]:
    """Apply annotation noise: confusions, missing tags, one spurious tag (rates in the config)."""
    out = []
    for t in clean:
        if t in _CONFUSABLE and rng.random() < config.confusion_rate:
            t = _CONFUSABLE[t]
        if rng.random() < config.missing_rate:
            continue
        out.append(t)
    if rng.random() < config.noise_rate:
        out.append(VOCABULARY[rng.integers(len(VOCABULARY))])
    out = set(out)
    return [w for w in VOCABULARY if w in out]


def _jitter(rgb, rng, amount=18):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _background(scene: str, size: int, rng: np.random.Generator) -> Image.Image:
    y = np.linspace(0.0, 1.0, size)[:, None, None]
    noise = rng.normal(0.0, 1.0, (size, size, 1))
    if scene == "sky":
        top, bottom = np.array([90, 150, 235]), np.array([200, 225, 250])
        img = top * (1 - y) + bottom * y + 6 * noise
    elif scene == "night":
        img = np.array([12, 18, 55]) * (1 - 0.5 * y) + 4 * noise
        stars = rng.random((size, size)) < 0.004
        img = np.where(stars[..., None], 230.0, img)
    elif scene == "grass":
        blades = np.sin(np.arange(size)[None, :] * rng.uniform(0.8, 1.2) + rng.normal(0, 1.5, (size, 1)))
        img = np.array([45, 130, 40]) + 25 * blades[..., None] * np.array([0.3, 1.0, 0.3]) + 8 * noise
    elif scene == "sand":
        img = np.array([220, 195, 140]) + 14 * noise
    elif scene == "water":
        x = np.arange(size)[None, :]
        waves = np.sin(0.35 * np.arange(size)[:, None] + 0.6 * np.sin(0.08 * x + rng.uniform(0, 6)))
        img = np.array([30, 90, 160]) + 22 * waves[..., None] * np.array([0.5, 0.8, 1.0]) + 6 * noise
    elif scene == "indoor":
        wall = np.array([170, 165, 160]) + 5 * noise
        floor = np.array([120, 80, 45]) + 10 * noise
        img = np.where(y > 0.65, floor, wall)
        img = img + (((np.arange(size)[None, :, None] // 16) % 2) * 6.0) * (y <= 0.65)
    else:
        raise ValueError(f"unknown scene {scene!r}; expected one of {SCENES}.")
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _texture(colour: str, texture: str, size: int, rng: np.random.Generator) -> Image.Image:
    base = np.array(_jitter(_RGB[colour], rng), float)
    other = np.array([20, 20, 20] if colour in ("white", "yellow") else [245, 245, 245], float)
    yy, xx = np.mgrid[0:size, 0:size]
    if texture == "plain":
        mask = np.zeros((size, size), bool)
    elif texture == "striped":
        period = int(rng.integers(6, 10))
        mask = ((xx + yy) // (period // 2)) % 2 == 1
    elif texture == "dotted":
        period = int(rng.integers(7, 10))
        mask = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < (period / 4) ** 2
    elif texture == "checkered":
        period = int(rng.integers(6, 10))
        mask = ((xx // period) + (yy // period)) % 2 == 1
    else:
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}.")
    img = np.where(mask[..., None], other, base)
    return Image.fromarray(img.astype(np.uint8), "RGB")


def _shape_points(o: SceneObject, size: int) -> list[tuple[float, float]]:
    cx, cy, r = o.cx * size, o.cy * size, o.radius * size
    a = np.deg2rad(o.angle)
    if o.shape == "square":
        angles = a + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, r)
    elif o.shape == "triangle":
        angles = a + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, r)
    elif o.shape == "star":
        angles = a + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    elif o.shape == "cross":
        w = 0.33
        base = np.array([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)])
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        pts = (base * r) @ rot.T
        return [(cx + px, cy + py) for px, py in pts]
    else:
        raise ValueError(f"no polygon for shape {o.shape!r}.")
    return [(cx + rr * np.cos(t), cy + rr * np.sin(t)) for rr, t in zip(radii, angles)]


def render_scene(scene: Scene, *, size: int, rng: np.random.Generator) -> Image.Image:
    """Pixels of a scene: background, then objects (largest first), a little blur and sensor noise."""
    img = _background(scene.scene, size, rng)
    for o in scene.objects:
        mask = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask)
        if o.shape == "circle":
            cx, cy, r = o.cx * size, o.cy * size, o.radius * size
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        else:
            draw.polygon(_shape_points(o, size), fill=255)
        img = Image.composite(_texture(o.colour, o.texture, size, rng), img, mask)
    img = img.filter(ImageFilter.GaussianBlur(radius=0.6))
    arr = np.asarray(img, float) * rng.uniform(0.85, 1.15) + rng.normal(0, 3.0, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def generate(out_dir: str | os.PathLike, *, config: ml_collections.ConfigDict | None = None) -> pathlib.Path:
    """Write the synthetic dataset to ``out_dir`` (layout in the module docstring).

    Existing ``out_dir/images`` is replaced; the text files are written last and atomically, so a folder with
    a ``tags.tsv`` is complete.

    Args:
      out_dir: destination folder (created).
      config: see :func:`synthetic_config`.

    Returns:
      The folder, ready for :func:`dcca_jax.data.datasets.load_image_folder`.
    """
    cfg = synthetic_config()
    if config is not None:
        cfg.update(config)
    if cfg.n_images < 2 or not 0 < cfg.test_fraction < 1:
        raise ValueError(f"need n_images >= 2 and 0 < test_fraction < 1; got {cfg.n_images}, {cfg.test_fraction}.")
    if not 1 <= cfg.min_objects <= cfg.max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects; got {cfg.min_objects}, {cfg.max_objects}.")
    if cfg.image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels; got {cfg.image_size}.")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tags.tsv", "truth.tsv", "train_list.txt", "test_list.txt"):
        (out / name).unlink(missing_ok=True)
    images = out / "images"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir()
    width = max(6, len(str(cfg.n_images - 1)))
    names, noisy, clean, scenes = [], [], [], []
    for i in range(cfg.n_images):
        rng = np.random.default_rng([cfg.seed, i])
        scene = sample_scene(rng, config=cfg)
        truth = scene_tags(scene, large_fraction=cfg.large_fraction)
        img = render_scene(scene, size=cfg.image_size, rng=rng)
        tags = noisy_tags(truth, rng, config=cfg)
        name = f"images/{i:0{width}d}.png"
        img.save(out / name, format="PNG", optimize=False, compress_level=6)
        names.append(name)
        noisy.append(tags)
        clean.append(truth)
        scenes.append(json.dumps({"file": name, **scene.to_dict()}, sort_keys=True))
    perm = np.random.default_rng([cfg.seed, 2**31 - 1]).permutation(cfg.n_images)
    n_test = max(1, int(round(cfg.test_fraction * cfg.n_images)))
    test = set(perm[:n_test].tolist())
    atomic_write_text(out / "vocabulary.txt", "".join(w + "\n" for w in VOCABULARY))
    atomic_write_text(out / "scenes.jsonl", "".join(s + "\n" for s in scenes))
    atomic_write_text(out / "train_list.txt", "".join(n + "\n" for i, n in enumerate(names) if i not in test))
    atomic_write_text(out / "test_list.txt", "".join(n + "\n" for i, n in enumerate(names) if i in test))
    atomic_write_text(out / "truth.tsv", "".join(f"{n}\t{' '.join(t)}\n" for n, t in zip(names, clean)))
    atomic_write_text(out / "tags.tsv", "".join(f"{n}\t{' '.join(t)}\n" for n, t in zip(names, noisy)))
    return out

# Paired numeric views with a known correlation structure (demos, tests and benchmarks of the models).


def correlated_views(
    n: int,
    d_v: int,
    d_s: int,
    *,
    latent: int = 20,
    noise: float = 1.0,
    nonlinear: bool = False,
    seed: int = 0,
    dtype=np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """Two views driven by shared Gaussian latents plus independent noise.

    ``x_v = z A + noise``, ``x_s = g(z) B + noise`` with ``g`` the identity, or (``nonlinear=True``)
    an elementwise square, which linear CCA cannot capture but kernel and deep CCA can.

    Returns:
      ``(x_v (n, d_v), x_s (n, d_s))`` as numpy arrays of ``dtype``.
    """
    if min(n, d_v, d_s, latent) < 1:
        raise ValueError(f"n, d_v, d_s and latent must be positive; got {n}, {d_v}, {d_s}, {latent}.")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent))
    a = rng.standard_normal((latent, d_v)) / np.sqrt(latent)
    b = rng.standard_normal((latent, d_s)) / np.sqrt(latent)
    g = (z**2 - 1.0) / np.sqrt(2.0) if nonlinear else z
    x_v = z @ a + noise * rng.standard_normal((n, d_v))
    x_s = g @ b + noise * rng.standard_normal((n, d_s))
    return x_v.astype(dtype), x_s.astype(dtype)

