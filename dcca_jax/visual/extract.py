"""Batched CNN feature extraction with a resumable on-disk cache.

Pipeline: a background thread decodes and crops images (Pillow releases the GIL while decoding) into a
small queue while the main thread runs the jitted network on fixed-shape batches (the last batch is padded,
so XLA compiles once). Features are written in shards of ``shard_size`` images to ``cache_dir`` as
``shard_NNNNN.npy`` (+ ``shard_NNNNN.failed.json``), each written atomically (:mod:`dcca_jax._io`),
so an interrupted run leaves only complete shards; rerunning with the same inputs skips them. ``index.json``
fingerprints the job (backbone, weights, preprocessing, the path list); a cache made for a different job is
refused rather than silently mixed.

Images that fail to decode are skipped and recorded (index, path, reason); their feature rows are NaN and
``ok`` is False for them.

The backbone is a config choice (:func:`build_backbone`): ``"mobilenet_v2"`` (the pretrained TFLite model,
1280-d pre-logits) or ``"alexnet"`` (fc7, 4096-d, weights from a torchvision/Caffe-layout file).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dcca_jax._io import atomic_save_npy, atomic_write_json, file_sha256
from dcca_jax.visual import images as images_lib

BACKBONES = ("mobilenet_v2", "alexnet")
_CACHE_VERSION = 1


@dataclasses.dataclass
class Backbone:
    """A feature extractor: normalised ``(n, S, S, 3)`` float images -> ``(n, dim)`` features.

    Attributes:
        name: ``"mobilenet_v2"`` or ``"alexnet"``.
        apply: jitted function ``x -> (n, dim)`` array.
        preprocess: geometry and normalisation of its input.
        dim: feature width.
        fingerprint: identifies the weights and settings (for the cache index).
        needs_jax: True when a setting exists only in the JAX port (block pooling, test-time augmentation,
            fine-tuned weights, another input size), so another engine cannot stand in for it.
    """

    name: str
    apply: Callable[[jax.Array], jax.Array]
    preprocess: images_lib.Preprocess
    dim: int
    fingerprint: dict
    needs_jax: bool = False


@dataclasses.dataclass
class ExtractionResult:
    """Output of :func:`extract_features`.

    Attributes:
        features: ``(n, dim)`` float32, in the order of the input paths; NaN rows where decoding failed.
        ok: ``(n,)`` bool, True where the image decoded.
        failed: ``[{"index", "path", "reason"}, ...]``.
        images_per_second: throughput of the images computed in this call (0 when all came from the cache).
        n_computed: images decoded and run in this call (the rest came from the cache).
    """

    features: np.ndarray
    ok: np.ndarray
    failed: list[dict]
    images_per_second: float
    n_computed: int


def backbone_config() -> ml_collections.ConfigDict:
    """Backbone settings (``backbone``, per-network weights and options, preprocessing)."""
    c = ml_collections.ConfigDict()
    c.backbone = "mobilenet_v2"
    c.mobilenet_v2 = ml_collections.ConfigDict()
    c.mobilenet_v2.tflite_path = ""
    # Round activations to the file's uint8 grid, as the quantisation-aware-trained network ran (closest to
    # the TFLite interpreter: cosine >= 0.99); False gives the plain float network.
    c.mobilenet_v2.emulate_uint8 = True
    # Feature levers (JAX port only, see Backbone.needs_jax): pooled outputs of these layers concatenated
    # (mobilenet.POOLABLE; () = the plain 1280-d "Conv_1" pre-logits), each L2-normalised with block_norm="l2";
    # tta="flip" averages the pooled outputs of the image and of its horizontal mirror.
    c.mobilenet_v2.pool_blocks = ()
    c.mobilenet_v2.block_norm = "none"
    c.mobilenet_v2.tta = "none"
    # npz of mobilenet.save_backbone_params (e.g. runs/corel5k_finetune/finetune_seed0/finetuned_backbone.npz, the
    # network fine-tuned inside DCCA); "" = the TFLite weights.  A float network: emulate_uint8 does not apply.
    c.mobilenet_v2.finetuned_checkpoint = ""
    c.mobilenet_v2.input_size = 224  # the fine-tuned network of experiments/configs/finetune_corel5k.py saw 160
    c.alexnet = ml_collections.ConfigDict()
    c.alexnet.weights_path = ""
    c.alexnet.layout = "torchvision"
    c.crop_fraction = 0.875
    return c


LEVER_DEFAULTS = {"pool_blocks": (), "block_norm": "none", "tta": "none", "finetuned_checkpoint": "",
                  "input_size": 224}


def changed_levers(mobilenet_config) -> dict:
    """The MobileNetV2 lever fields (:data:`LEVER_DEFAULTS`) of ``mobilenet_config`` that differ from the defaults.

    Sequences come back as lists, the fine-tuned checkpoint as its path; an empty dict means the plain network.
    """
    out = {}
    for k, default in LEVER_DEFAULTS.items():
        v = mobilenet_config.get(k, default)
        v = list(v) if isinstance(v, (list, tuple)) else v
        if v != (list(default) if isinstance(default, tuple) else default):
            out[k] = v
    return out


def build_backbone(config: ml_collections.ConfigDict, *, dtype=jnp.float32) -> Backbone:
    """Load the configured network and return a :class:`Backbone`.

    Args:
        config: see :func:`backbone_config`.
        dtype: compute dtype.

    Returns:
        A :class:`Backbone`.
    """
    name = config.backbone
    if name == "mobilenet_v2":
        from dcca_jax.visual import mobilenet

        mc = config.mobilenet_v2
        changed = changed_levers(mc)
        levers = {**LEVER_DEFAULTS, **changed}
        finetuned = levers["finetuned_checkpoint"]
        if finetuned:
            variables = mobilenet.load_backbone_params(finetuned, dtype=dtype)
            path = finetuned
            changed["finetuned_checkpoint"] = True  # the weights hash below identifies the file
        else:
            path = mc.tflite_path
            if not path:
                raise ValueError("config.mobilenet_v2.tflite_path is empty: point it at "
                                 "mobilenet_v2_1.0_224_quant.tflite")
            variables = mobilenet.load_tflite_params(path, dtype=dtype)
        emulate = bool(mc.emulate_uint8) and "quant" in variables
        fn, dim = mobilenet.make_feature_fn(variables, emulate_uint8=emulate, pool_blocks=levers["pool_blocks"],
                                            block_norm=levers["block_norm"], tta=levers["tta"])
        pre = images_lib.Preprocess(size=int(levers["input_size"]), crop_fraction=config.crop_fraction,
                                    normalisation="mobilenet_v2")
        # Non-default levers only, so caches made before these options existed stay valid.
        fingerprint = {"backbone": name, "weights_sha256": file_sha256(path), "emulate_uint8": emulate,
                       "dtype": jnp.dtype(dtype).name, **changed}
        return Backbone(name, fn, pre, dim, fingerprint, needs_jax=bool(changed))
    if name == "alexnet":
        from dcca_jax.visual import alexnet

        path = config.alexnet.weights_path
        if not path:
            raise ValueError("config.alexnet.weights_path is empty: point it at an AlexNet .npz/.safetensors "
                             "(torchvision or Caffe layout)")
        layout = config.alexnet.layout
        model, variables = alexnet.load_alexnet(path, layout=layout, dtype=dtype)
        apply = jax.jit(lambda v, x: model.apply(v, x)["features"])
        pre = images_lib.Preprocess(size=alexnet.INPUT_SIZE[layout], crop_fraction=config.crop_fraction,
                                    normalisation=alexnet.NORMALISATION[layout])
        dim = alexnet.layer_sizes(layout=layout, width=model.width)["fc7"]
        return Backbone(name, lambda x: apply(variables, x), pre, dim,
                        {"backbone": name, "layout": layout, "weights_sha256": file_sha256(path),
                         "dtype": jnp.dtype(dtype).name})
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")


def prepare_cache(cache_dir: str, index: dict) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    index_path = os.path.join(cache_dir, "index.json")
    if os.path.exists(index_path):
        with open(index_path, encoding="utf-8") as f:
            old = json.load(f)
        if old != index:
            diff = sorted(k for k in set(old) | set(index) if old.get(k) != index.get(k))
            raise ValueError(f"feature cache {cache_dir} was made for a different job (differs in {diff}); use "
                             "another cache_dir or delete this one")
    else:
        atomic_write_json(index_path, index, indent=1)


def _decode_worker(jobs, preprocess, out_q: queue.Queue, stop: threading.Event):
    """Producer: decode each (shard, start, paths) job into a LoadedBatch and queue it."""
    for job in jobs:
        if stop.is_set():
            return
        shard, start, paths = job
        try:
            batch = images_lib.load_batch(paths, preprocess=preprocess)
        except BaseException as e:  # noqa: BLE001 - hand any unexpected error to the consumer
            out_q.put(e)
            return
        out_q.put((shard, start, batch))
    out_q.put(None)


def extract_features(paths: Sequence[str | os.PathLike], *, backbone: Backbone, batch_size: int = 32,
                     cache_dir: str | os.PathLike | None = None, shard_size: int = 512, progress: bool = False,
                     prefetch: int = 3) -> ExtractionResult:
    """Run ``backbone`` over image files in fixed-shape batches, caching and resuming by shard.

    Args:
        paths: image files, in the order wanted for the output rows.
        backbone: from :func:`build_backbone`.
        batch_size: images per jitted call (the last batch is zero-padded to this size).
        cache_dir: directory for shards and the index (None: keep everything in memory).
        shard_size: images per cached shard (a multiple of ``batch_size`` keeps batches full).
        progress: show a tqdm bar on stderr.
        prefetch: decoded batches buffered ahead of the network.

    Returns:
        An :class:`ExtractionResult`.
    """
    paths = [os.fspath(p) for p in paths]
    n = len(paths)
    if n == 0:
        raise ValueError("extract_features got no image paths")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    n_shards = -(-n // shard_size)
    done: dict[int, tuple[np.ndarray, list]] = {}
    if cache_dir is not None:
        cache_dir = os.fspath(cache_dir)
        index = {"version": _CACHE_VERSION, "n": n, "shard_size": shard_size, "dim": backbone.dim,
                 "paths_sha256": hashlib.sha256("\n".join(paths).encode()).hexdigest(),
                 "preprocess": dataclasses.asdict(backbone.preprocess), **backbone.fingerprint}
        prepare_cache(cache_dir, index)
        for s in range(n_shards):
            npy = os.path.join(cache_dir, f"shard_{s:05d}.npy")
            js = os.path.join(cache_dir, f"shard_{s:05d}.failed.json")
            if os.path.exists(npy) and os.path.exists(js):
                with open(js, encoding="utf-8") as f:
                    done[s] = (np.load(npy), json.load(f))
        if done:
            logging.info("feature cache %s: %d of %d shards already done", cache_dir, len(done), n_shards)

    todo = [s for s in range(n_shards) if s not in done]
    jobs = []
    for s in todo:
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        for b in range(lo, hi, batch_size):
            jobs.append((s, b, paths[b:min(b + batch_size, hi)]))

    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=n - sum(min(n, (s + 1) * shard_size) - s * shard_size for s in todo),
               unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    out_q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    worker = threading.Thread(target=_decode_worker, args=(jobs, backbone.preprocess, out_q, stop), daemon=True)
    t0 = time.perf_counter()
    n_computed = 0
    pending: dict[int, tuple[np.ndarray, list]] = {}
    size = backbone.preprocess.size
    worker.start()
    try:
        while True:
            item = out_q.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            s, start, batch = item
            lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
            if s not in pending:
                pending[s] = (np.full((hi - lo, backbone.dim), np.nan, np.float32), [])
            feats, failed = pending[s]
            ok_set = set(batch.ok)
            bad = [i for i in range(len(batch.ok) + len(batch.failed)) if i not in ok_set]
            for i, (path, reason) in zip(bad, batch.failed):
                idx = start + i
                failed.append({"index": idx, "path": path, "reason": reason})
                logging.warning("skipping unreadable image %s: %s", path, reason)
            m = len(batch.ok)
            if m:
                x = np.zeros((batch_size, size, size, 3), np.uint8)
                x[:m] = batch.images
                xn = images_lib.normalise(x, normalisation=backbone.preprocess.normalisation)
                y = np.asarray(backbone.apply(jnp.asarray(xn)), np.float32)[:m]
                rows = np.asarray(batch.ok) + (start - lo)
                feats[rows] = y
            n_computed += len(batch.ok) + len(batch.failed)
            bar.update(len(batch.ok) + len(batch.failed))
            if start + batch_size >= hi:  # shard complete (batches of a shard arrive in order)
                if cache_dir is not None:
                    # failures first, features last: the .npy's presence marks a complete shard.
                    atomic_write_json(os.path.join(cache_dir, f"shard_{s:05d}.failed.json"), failed, indent=1)
                    atomic_save_npy(os.path.join(cache_dir, f"shard_{s:05d}.npy"), feats)
                done[s] = pending.pop(s)
                rate = n_computed / max(time.perf_counter() - t0, 1e-9)
                logging.info("shard %d/%d done: %d images computed, %.1f images/s", s + 1, n_shards, n_computed, rate)
    finally:
        stop.set()
        bar.close()
        # Drain so a producer blocked on a full queue can see `stop` and exit.
        while worker.is_alive():
            try:
                out_q.get(timeout=0.1)
            except queue.Empty:
                pass
    elapsed = time.perf_counter() - t0
    rate = n_computed / elapsed if n_computed else 0.0
    features = np.concatenate([done[s][0] for s in range(n_shards)])
    failed = [f for s in range(n_shards) for f in done[s][1]]
    ok = np.ones(n, bool)
    ok[[f["index"] for f in failed]] = False
    logging.info("extracted %d images (%d computed, %d from cache, %d failed) at %.1f images/s", n, n_computed,
                 n - n_computed, len(failed), rate)
    return ExtractionResult(features=features, ok=ok, failed=failed, images_per_second=rate, n_computed=n_computed)

