r"""Tag new photos and find photos by tags with a trained pipeline's bundle (``workdir/tagger``).

.. code-block:: python

    from dcca_jax import Tagger
    tagger = Tagger.load("runs/default/tagger")
    tagger.tag(["beach.jpg", "dog.png"], n=5)      # per image: [(tag, score), ...], best first
    tagger.index(["a.jpg", "b.jpg"])                # untagged photos become searchable
    tagger.search("sky water", k=20)                # [(path, score), ...], best first

Tagging is the pipeline's own path: the backbone (:mod:`dcca_jax.visual.extract`, or the hand-crafted feature
with the training Gabor statistics), the auto-encoder, the correlation model's visual map, the label transfer of
:func:`dcca_jax.tagging.recommend.transfer_scores` against the training images' codes and the package's one top-n
rule :func:`dcca_jax.tagging.recommend.select_tags` with the training tag prior. Tagging the test images through
the bundle gives the pipeline's test-set scores.

Search is cross-modal: the query tags become a bag of deep words (the semantic view), the model's semantic map
projects it into the common space, and the indexed images are ranked by the cosine between that point and their
visual projections (:func:`dcca_jax.tagging.recommend.chunked_topk`, bounded memory).

Folders (:meth:`Tagger.tag_folder`, :meth:`Tagger.index_folder`) are processed in shards of ``shard_size``
images; each finished shard is written to the job folder (arrays first, the JSON that marks it done last), so
memory stays bounded by one shard and a rerun skips the shards already done. Unreadable files are skipped and
listed (:mod:`dcca_jax.visual.images` and :mod:`dcca_jax.visual.extract` decide what is unreadable).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dcca_jax import _io
from dcca_jax._io import atomic_save_npy, atomic_write_json
from dcca_jax.tagging import bundle as bundle_lib
from dcca_jax.tagging import recommend as rec_lib
from dcca_jax.visual import extract as extract_lib

COLLECTIONS = ("all", "training", "added")
_SEARCH_CHUNK = 1 << 22  # items per similarity block of one query (16 MiB in float32)
_JOB_VERSION = 1


class Tags(list):
    """Result of :meth:`Tagger.tag`: per input image, ``[(tag, score), ...]`` best first (``None`` for an image
    that could not be read); ``failed`` lists ``{"index", "path", "reason"}`` of those images."""

    def __init__(self, items, failed):
        super().__init__(items)
        self.failed = list(failed)


class Hits(list):
    """Result of :meth:`Tagger.search`: ``[(image, score), ...]`` best first; ``known`` and ``unknown`` are the
    query tags that were and were not in the semantic vocabulary."""

    def __init__(self, items, known, unknown):
        super().__init__(items)
        self.known = list(known)
        self.unknown = list(unknown)


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursively, by extension, the loaders' list), sorted, relative, '/'-joined."""
    from dcca_jax.data.datasets import IMAGE_EXTENSIONS

    root = pathlib.Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder of images")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _split_query(tags: str | Sequence[str]) -> list[str]:
    if isinstance(tags, str):
        return tags.split()
    return [t for tag in tags for t in str(tag).split()]


@dataclasses.dataclass
class ImageIndex:
    """Images added with :meth:`Tagger.index`: their paths and visual codes in the common space."""

    paths: list[str]
    codes: np.ndarray  # (n, k) float32

    def save(self, path: str | os.PathLike, *, bundle_id: str, model: str) -> pathlib.Path:
        """Writes the index as one shard of the folder-index format (``index.json`` + ``shard_00000.*``)."""
        d = pathlib.Path(path)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"version": _JOB_VERSION, "kind": "index", "bundle": bundle_id, "model": model, "root": None,
                "shard_size": max(len(self.paths), 1)}
        atomic_write_json(str(d / "index.json"), meta)
        atomic_save_npy(str(d / "shard_00000.npy"), np.asarray(self.codes, np.float32))
        atomic_write_json(d / "shard_00000.json", {"paths": self.paths, "failed": []})
        return d


class Tagger:
    """A trained pipeline, ready to tag photos and to search them by tags. Build it with :meth:`load`."""

    def __init__(self, path: pathlib.Path, manifest: dict, spec: dict, model_name: str, model, autoencoder,
                 encoder, index: dict[str, np.ndarray], items: dict, backbone_arrays: dict | None,
                 weights: str | None):
        self.path = path
        self.manifest = manifest
        self.spec = spec
        self.model_name = model_name
        self.model = model
        self.autoencoder = autoencoder
        self.encoder = encoder
        self.vocabulary: tuple[str, ...] = tuple(spec["vocabulary"])
        self.transfer = dict(rec_lib.transfer_config()) | dict(spec["transfer"])
        self._index = index
        self._items = items
        self._prior = rec_lib.tag_prior(index["labels"])
        self._backbone_arrays = backbone_arrays
        self._weights = weights
        self._backbone = None
        self._added = ImageIndex([], np.zeros((0, index["z_v"].shape[1]), np.float32))
        self._codes_fn = jax.jit(self._codes_eager)
        self._search_cache: dict[str, tuple[list[str], jax.Array]] = {}
        self.bundle_id = hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()[:16]

    # ---------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | os.PathLike, *, model: str | None = None, weights: str | None = None,
             verify: bool = True) -> "Tagger":
        """Reads a bundle (``workdir/tagger``); refuses a foreign, other-version, incomplete or corrupted one.

        Args:
          path: the bundle folder.
          model: which exported correlation model to use (default: the bundle's, the best on validation).
          weights: the CNN weights file, when it is no longer where the bundle says (its sha256 must match).
          verify: check every file's sha256 against the manifest.

        Raises:
          BundleError: naming the file at fault.
        """
        from dcca_jax.models.base import load_model
        from dcca_jax.semantic.deepwords import SemanticEncoder
        from dcca_jax.visual.autoencoder import TrainedAutoEncoder

        root = pathlib.Path(path)
        manifest = bundle_lib.read_manifest(root, verify=verify)
        try:
            spec = json.loads((root / bundle_lib.SPEC).read_text(encoding="utf-8"))
        except ValueError as e:
            raise bundle_lib.BundleError(f"{root / bundle_lib.SPEC} is not valid JSON ({e}).") from e
        name = model or spec["default_model"]
        if name not in spec["models"]:
            raise bundle_lib.BundleError(f"model {name!r} is not in the bundle {root}; it holds "
                                         f"{sorted(spec['models'])}.")

        def component(rel, loader):
            try:
                return loader(root / rel)
            except bundle_lib.BundleError:
                raise
            except (OSError, ValueError, KeyError) as e:
                raise bundle_lib.BundleError(f"{root / rel} cannot be loaded: {type(e).__name__}: {e}") from e

        corr_model = component(f"models/{name}", load_model)
        ae = component("autoencoder", TrainedAutoEncoder.load) if spec["use_autoencoder"] else None
        encoder = component("semantic", SemanticEncoder.load)
        idx_file = root / "index" / f"{name}.npz"
        index = bundle_lib.load_npz(idx_file)
        items = component("index/items.json", lambda p: json.loads(p.read_text(encoding="utf-8")))
        backbone_arrays = None
        if spec["backbone"]["name"] == "handcrafted":
            backbone_arrays = bundle_lib.load_npz(root / "backbone.npz")
            for key in ("gabor_mean", "gabor_std"):
                bundle_lib.check_shape(root / "backbone.npz", key, backbone_arrays.get(key, np.zeros(0)), (192,))

        # Shapes must agree across files: a bundle assembled from different runs is refused, naming the file.
        d_v, d_s = corr_model._dims
        v_len = len(spec["vocabulary"])
        k = int(spec["models"][name]["out_dim"])
        if ae is not None and int(ae.config.code_dim) != d_v:
            raise bundle_lib.BundleError(f"{root / 'autoencoder'}: code_dim {ae.config.code_dim} but the model in "
                                         f"{root / 'models' / name} takes {d_v} visual features.")
        if ae is not None and int(ae.mean.shape[0]) != int(spec["feature_dim"]):
            raise bundle_lib.BundleError(f"{root / 'autoencoder'}: input width {ae.mean.shape[0]} but the backbone "
                                         f"gives {spec['feature_dim']} features ({root / bundle_lib.SPEC}).")
        if encoder.dim != d_s:
            raise bundle_lib.BundleError(f"{root / 'semantic'}: {encoder.dim}-d semantic view but the model in "
                                         f"{root / 'models' / name} takes {d_s}.")
        n = len(items["ids"])
        for key, shape in (("z_v", (n, k)), ("z_s", (n, k)), ("labels", (n, v_len)), ("correlations", (k,)),
                           ("tag_z", (v_len, k))):
            if key not in index:
                raise bundle_lib.BundleError(f"{idx_file}: array {key!r} is missing.")
            bundle_lib.check_shape(idx_file, key, index[key], shape)
        return cls(root, manifest, spec, name, corr_model, ae, encoder, index, items, backbone_arrays, weights)

    @property
    def models(self) -> dict[str, dict]:
        """Every exported model with its validation per-word F1."""
        return dict(self.spec["models"])

    # ------------------------------------------------------------------------------------ visual side
    def _get_backbone(self):
        if self._backbone is None:
            spec = self.spec["backbone"]
            if spec["name"] in ("mobilenet_v2", "alexnet"):
                path = self._weights or spec["weights"]
                if not os.path.exists(path):
                    raise FileNotFoundError(f"the {spec['name']} weights of this tagger are not at {path}: pass "
                                            "weights=... (Tagger.load) or --weights with the same file "
                                            f"(sha256 {spec['weights_sha256'][:12]}...)")
                if _io.file_sha256(path) != spec["weights_sha256"]:
                    raise bundle_lib.BundleError(f"{path} is not the weights file this tagger was trained with "
                                                 f"(sha256 differs from {spec['weights_sha256'][:12]}...).")
                cfg = extract_lib.backbone_config()
                cfg.backbone = spec["name"]
                cfg.mobilenet_v2.tflite_path = path
                cfg.mobilenet_v2.emulate_uint8 = bool(spec.get("emulate_uint8", True))
                # The engine the training features came from (bundles without one predate LiteRT: the JAX
                # port); "litert" becomes "auto", which falls back to the JAX port where LiteRT is missing.
                cfg.engine = "auto" if spec.get("engine", "jax") == "litert" else "jax"
                cfg.alexnet.weights_path = path
                cfg.alexnet.layout = spec.get("layout", "torchvision")
                cfg.crop_fraction = float(self.spec["preprocess"]["crop_fraction"])
                self._backbone = extract_lib.build_backbone(cfg)
            else:
                self._backbone = spec["name"]
        return self._backbone

    def _handcrafted(self, jec_feats) -> np.ndarray:
        from dcca_jax.visual import handcrafted

        return handcrafted.handcrafted_from_jec(jec_feats, gabor_mean=self._backbone_arrays["gabor_mean"],
                                                gabor_std=self._backbone_arrays["gabor_std"])

    def _features_of_paths(self, paths: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        backbone = self._get_backbone()
        if backbone == "handcrafted":
            from dcca_jax.baselines import jec as jec_lib

            try:
                jf = jec_lib.compute_jec_features(paths)
                ok = np.asarray(getattr(jf, "ok", np.ones(len(paths), bool)), bool)
                failed = [dict(f) for f in getattr(jf, "failed", [])]
                feats = self._handcrafted(jf)
            except ValueError:  # an unreadable file aborts the batch: read one by one, listing the failures
                feats = np.full((len(paths), 1216), np.nan, np.float32)
                ok, failed = np.zeros(len(paths), bool), []
                for i, p in enumerate(paths):
                    try:
                        feats[i] = self._handcrafted(jec_lib.compute_jec_features([p]))[0]
                        ok[i] = True
                    except ValueError as e:
                        failed.append({"index": i, "path": p, "reason": str(e.__cause__ or e)})
            return feats, ok, failed
        if backbone == "precomputed":
            raise ValueError("this tagger was trained on precomputed features: pass (n, d) feature arrays to tag()")
        res = extract_lib.extract_features(paths, backbone=backbone, batch_size=batch_size)
        return res.features, res.ok, res.failed

    def _features_of_arrays(self, arrays) -> np.ndarray:
        backbone = self._get_backbone()
        if backbone == "precomputed":
            x = np.asarray(arrays, np.float32)
            if x.ndim != 2 or x.shape[1] != self.spec["feature_dim"]:
                raise ValueError(f"expected (n, {self.spec['feature_dim']}) features, got shape {x.shape}")
            return x
        rgb = [np.asarray(a) for a in arrays]
        for a in rgb:
            if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
                raise ValueError(f"image arrays must be (h, w, 3) uint8 RGB, got {a.shape} {a.dtype}")
        if backbone == "handcrafted":
            from dcca_jax.baselines import jec as jec_lib

            bank = jec_lib.gabor_bank()
            rows = [jec_lib.image_features(a, bank=bank) for a in rgb]
            return self._handcrafted({f: np.stack([r[f] for r in rows]).astype(np.float32) for f in rows[0]})
        from PIL import Image

        from dcca_jax.visual import images as images_lib

        pre = backbone.preprocess
        x = np.stack([np.asarray(images_lib.resize_and_crop(Image.fromarray(a), size=pre.size,
                                                            crop_fraction=pre.crop_fraction)) for a in rgb])
        return np.asarray(backbone.apply(jnp.asarray(images_lib.normalise(x, normalisation=pre.normalisation))),
                          np.float32)

    def features(self, images, *, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """Backbone features of image files or arrays: ``(features (n, d) with NaN rows, ok (n,), failed)``."""
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        if isinstance(images, np.ndarray) and images.ndim in (2, 4):
            items = list(images) if images.ndim == 4 else images
        else:
            items = list(images)
        if len(items) == 0:
            return np.zeros((0, self.spec["feature_dim"]), np.float32), np.zeros(0, bool), []
        if isinstance(items, np.ndarray) or not isinstance(items[0], (str, os.PathLike)):
            feats = self._features_of_arrays(items)
            return feats, np.ones(len(feats), bool), []
        return self._features_of_paths([os.fspath(p) for p in items], batch_size)

    def _codes_eager(self, features):
        x = features if self.autoencoder is None else self.autoencoder.encode(features)
        return self.model.transform(x_v=x)[0]

    def visual_codes(self, features, *, batch_size: int = 256) -> np.ndarray:
        """Common-space codes ``(n, k)`` of backbone features (auto-encoder, then the model's visual map; jitted,
        in fixed-size batches so that one compilation serves every batch)."""
        x = np.asarray(features, np.float32)
        out = []
        for lo in range(0, len(x), batch_size):
            b = x[lo:lo + batch_size]
            pad = np.zeros((batch_size - len(b), x.shape[1]), np.float32) if len(x) > batch_size else None
            bb = b if pad is None else np.concatenate([b, pad])
            out.append(np.asarray(self._codes_fn(jnp.asarray(bb)))[:len(b)])
        k = self._index["z_v"].shape[1]
        return np.concatenate(out) if out else np.zeros((0, k), np.float32)

    def tag_scores(self, codes) -> np.ndarray:
        """``(n, V)`` tag scores of common-space codes: the run's label transfer against the training images."""
        c = self.transfer
        items = self._index["z_v"] if c["against"] == "visual" else self._index["z_s"]
        scores = rec_lib.transfer_scores(jnp.asarray(codes), items, self._index["labels"], config=c,
                                         correlations=self._index["correlations"], tag_z=self._index["tag_z"])
        return np.asarray(scores)

    def _select(self, scores: np.ndarray, n: int):
        fill = self.transfer.get("fill", "prior")
        return rec_lib.select_tags(scores, n=n, prior=self._prior, fill=fill)

    def tag(self, images, n: int = 5, *, batch_size: int = 32) -> Tags:
        """Ranked ``(tag, score)`` pairs of each image (file paths, uint8 RGB arrays, or feature rows for a tagger
        trained on precomputed features), by :func:`dcca_jax.tagging.recommend.select_tags` with the training
        prior: positive scores first, places without evidence filled from the prior.

        Returns:
          :class:`Tags`: one entry per input, ``None`` where the file could not be read (listed in ``failed``).
        """
        feats, ok, failed = self.features(images, batch_size=batch_size)
        out: list = [None] * len(ok)
        if ok.any():
            scores = self.tag_scores(self.visual_codes(feats[ok]))
            sel = np.asarray(self._select(scores, n).indices)
            for row, i in enumerate(np.flatnonzero(ok)):
                out[i] = [(self.vocabulary[j], float(scores[row, j])) for j in sel[row] if j >= 0]
        return Tags(out, failed)

    # ------------------------------------------------------------------------------------- search side
    def query_codes(self, tags: str | Sequence[str]) -> tuple[np.ndarray, list[str], list[str]]:
        """The semantic projection ``(1, k)`` of a bag of query tags, with the known and unknown tags."""
        words = _split_query(tags)
        if not words:
            raise ValueError("the search query has no tags")
        lower = bool(self.encoder.config.get("lowercase", False))
        known_words = set(self.encoder.deep_words.words if self.encoder.deep_words is not None
                          else self.encoder.vocabulary)
        norm = [w.lower() if lower else w for w in words]
        known = [w for w, m in zip(words, norm) if m in known_words]
        unknown = [w for w, m in zip(words, norm) if m not in known_words]
        if not known:
            raise ValueError(f"none of the query tags {words} is known to this tagger; known tags include "
                             f"{sorted(known_words)[:20]}")
        s, _ = self.encoder.encode_numpy([known], name="query")
        z = self.model.transform(x_s=s)[1]
        return np.asarray(z), known, unknown

    def _collection(self, collection: str) -> tuple[list[str], jax.Array]:
        if collection not in COLLECTIONS:
            raise ValueError(f"collection must be one of {COLLECTIONS}, got {collection!r}")
        # Kept on the device, L2-normalised, between queries (a 100,000-image index is not copied or normalised
        # again per query); reset by add_codes.
        if collection not in self._search_cache:
            names, codes = self._gather(collection)
            self._search_cache[collection] = (names, rec_lib.l2_normalize(jnp.asarray(codes)))
        return self._search_cache[collection]

    def _gather(self, collection: str) -> tuple[list[str], np.ndarray]:
        names, codes = [], []
        if collection in ("all", "training"):
            names += self._items["paths"] or self._items["ids"]
            codes.append(self._index["z_v"])
        if collection in ("all", "added"):
            names += self._added.paths
            codes.append(self._added.codes)
        return names, np.concatenate(codes).astype(np.float32)

    def search(self, tags: str | Sequence[str], k: int = 20, *, collection: str = "all") -> Hits:
        """Indexed images ranked by cosine between the query's semantic projection and their visual projections.

        Args:
          tags: a list of tags, or free text split on spaces. Unknown tags are reported in ``Hits.unknown``;
            a query with no known tag raises ValueError.
          k: hits to return (at most the number of indexed images).
          collection: ``"all"`` (the training images and the added ones), ``"training"`` or ``"added"``.

        Returns:
          :class:`Hits`: ``[(image path or id, cosine), ...]`` best first.
        """
        z, known, unknown = self.query_codes(tags)
        names, codes = self._collection(collection)
        if not names:
            return Hits([], known, unknown)
        k = min(int(k), len(names))
        # One query: a single item chunk up to _SEARCH_CHUNK items (one (1, n) block; no padded copy of the index).
        sims, idx = rec_lib.chunked_topk(rec_lib.l2_normalize(jnp.asarray(z)), codes, k=k, cosine=False,
                                         item_chunk=min(len(names), _SEARCH_CHUNK))
        sims, idx = np.asarray(sims)[0], np.asarray(idx)[0]
        return Hits([(names[i], float(s)) for i, s in zip(idx, sims)], known, unknown)

    def index(self, images, *, batch_size: int = 32) -> dict:
        """Adds untagged photos (file paths; or arrays, named ``array:<i>``) to the searchable collection.

        Returns:
          ``{"added": n, "failed": [{"index", "path", "reason"}, ...]}``.
        """
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        items = list(images)
        feats, ok, failed = self.features(items, batch_size=batch_size)
        names = [os.fspath(p) if isinstance(p, (str, os.PathLike)) else f"array:{len(self._added.paths) + i}"
                 for i, p in enumerate(items)]
        self.add_codes([names[i] for i in np.flatnonzero(ok)], self.visual_codes(feats[ok]))
        return {"added": int(ok.sum()), "failed": failed}

    def add_codes(self, paths: Sequence[str], codes: np.ndarray) -> None:
        """Adds images by their common-space codes ``(n, k)`` (from :meth:`visual_codes`) to the searchable set."""
        codes = np.asarray(codes, np.float32)
        if codes.shape != (len(paths), self._added.codes.shape[1]):
            raise ValueError(f"codes {codes.shape} must be ({len(paths)}, {self._added.codes.shape[1]})")
        self._added = ImageIndex(self._added.paths + list(paths),
                                 np.concatenate([self._added.codes, np.asarray(codes, np.float32)]))
        self._search_cache = {}

    def save_index(self, path: str | os.PathLike) -> pathlib.Path:
        """Writes the added images' index (reloadable with :meth:`load_index`, by this bundle and model only)."""
        return self._added.save(path, bundle_id=self.bundle_id, model=self.model_name)

    def load_index(self, path: str | os.PathLike) -> int:
        """Adds the images of a saved index (:meth:`save_index` or :meth:`index_folder`); returns their number."""
        d = pathlib.Path(path)
        meta_file = d / "index.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{meta_file} not found: {d} is not a saved image index")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("bundle") != self.bundle_id or meta.get("model") != self.model_name:
            raise ValueError(f"the image index {d} was made with another tagger bundle or model "
                             f"({meta.get('model')}); index the images again with this one")
        root = meta.get("root")
        n = 0
        for js in sorted(d.glob("shard_*.json")):
            shard = json.loads(js.read_text(encoding="utf-8"))
            codes = np.load(js.with_suffix(".npy"), allow_pickle=False)
            paths = [p if root is None else os.path.join(root, p) for p in shard["paths"]]
            if len(paths) != len(codes):
                raise ValueError(f"{js}: {len(paths)} paths but {len(codes)} codes")
            self.add_codes(paths, codes)
            n += len(paths)
        return n

    # ------------------------------------------------------------------------------- folders, streamed
    def _job(self, kind: str, folder, job_dir, shard_size: int, extra: dict) -> tuple[list[str], pathlib.Path, list]:
        files = list_images(folder)
        d = pathlib.Path(job_dir)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"version": _JOB_VERSION, "kind": kind, "bundle": self.bundle_id, "model": self.model_name,
                "root": os.path.abspath(folder), "shard_size": int(shard_size),
                "paths_sha256": hashlib.sha256("\n".join(files).encode()).hexdigest(), **extra}
        # A job folder made for other inputs is refused (the feature cache's rule), never silently mixed.
        extract_lib.prepare_cache(str(d), meta)
        shards = [files[i:i + shard_size] for i in range(0, len(files), shard_size)]
        return files, d, shards

    def tag_folder(self, folder: str | os.PathLike, job_dir: str | os.PathLike, *, n: int = 5,
                   shard_size: int = 1024, batch_size: int = 32) -> Iterator[dict]:
        """Tags every image under ``folder``, one shard at a time, resumable; yields each shard's result.

        Each shard is written to ``job_dir/shard_NNNNN.json`` as ``{"paths", "tags", "scores", "from_prior",
        "failed"}`` (paths relative to ``folder``); a shard already there is read back instead of recomputed.
        """
        root = pathlib.Path(folder)
        _, d, shards = self._job("tag", folder, job_dir, shard_size, {"n": int(n), "transfer": self.transfer})
        for s, rel in enumerate(shards):
            js = d / f"shard_{s:05d}.json"
            if js.exists():
                yield json.loads(js.read_text(encoding="utf-8"))
                continue
            feats, ok, failed = self._features_of_paths([str(root / p) for p in rel], batch_size)
            out = {"paths": [rel[i] for i in np.flatnonzero(ok)], "tags": [], "scores": [], "from_prior": [],
                   "failed": [{"path": rel[f["index"]], "reason": f["reason"]} for f in failed]}
            if ok.any():
                scores = self.tag_scores(self.visual_codes(feats[ok]))
                sel = self._select(scores, n)
                idx, prior = np.asarray(sel.indices), np.asarray(sel.from_prior)
                for row in range(len(idx)):
                    keep = idx[row] >= 0
                    out["tags"].append([self.vocabulary[j] for j in idx[row][keep]])
                    out["scores"].append([float(scores[row, j]) for j in idx[row][keep]])
                    out["from_prior"].append([bool(b) for b in prior[row][keep]])
            atomic_write_json(js, out)
            yield out

    def index_folder(self, folder: str | os.PathLike, index_dir: str | os.PathLike, *, shard_size: int = 4096,
                     batch_size: int = 32) -> dict:
        """Indexes every image under ``folder`` into ``index_dir`` (resumable shards), then adds it for search.

        Returns:
          ``{"indexed": n, "failed": [{"path", "reason"}, ...], "shards_done_before": m}``.
        """
        root = pathlib.Path(folder)
        _, d, shards = self._job("index", folder, index_dir, shard_size, {})
        failed, before = [], 0
        for s, rel in enumerate(shards):
            js = d / f"shard_{s:05d}.json"
            if js.exists():
                before += 1
                failed += json.loads(js.read_text(encoding="utf-8"))["failed"]
                continue
            feats, ok, bad = self._features_of_paths([str(root / p) for p in rel], batch_size)
            atomic_save_npy(str(d / f"shard_{s:05d}.npy"), self.visual_codes(feats[ok]))
            bad = [{"path": rel[f["index"]], "reason": f["reason"]} for f in bad]
            atomic_write_json(js, {"paths": [rel[i] for i in np.flatnonzero(ok)], "failed": bad})
            failed += bad
        n = self.load_index(d)
        return {"indexed": n, "failed": failed, "shards_done_before": before}

