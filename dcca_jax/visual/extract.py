"""Batched CNN feature extraction with a resumable on-disk cache.

Pipeline: a pool of ``decode_workers`` threads decodes and crops batches of images (Pillow releases the GIL
while decoding and resizing) ahead of the network, which the main thread runs on the batches in input order:
the jitted JAX network on fixed-shape batches (the last batch is padded, so XLA compiles once), or the LiteRT
interpreter image by image (:mod:`dcca_jax.visual.litert`, which also releases the GIL). Features are written
in shards of ``shard_size`` images to ``cache_dir`` as ``shard_NNNNN.npy`` (+ ``shard_NNNNN.failed.json``),
each written atomically (:mod:`dcca_jax._io`), so an interrupted run leaves only complete shards; rerunning with the same inputs skips them. ``index.json``
fingerprints the job (backbone, weights, preprocessing, the path list); a cache made for a different job is
refused rather than silently mixed.

Images that fail to decode are skipped and recorded (index, path, reason); their feature rows are NaN and
``ok`` is False for them.

The backbone is a config choice (:func:`build_backbone`): ``"mobilenet_v2"`` (the pretrained TFLite model,
1280-d pre-logits) or ``"alexnet"`` (fc7, 4096-d, weights from a torchvision/Caffe-layout file). MobileNetV2
runs on one of two engines (``config.engine``, :func:`resolve_engine`): the LiteRT interpreter on the file
itself (the default on a CPU when ``ai-edge-litert`` is installed) or the JAX port. Their features differ
slightly (per-image cosine .995-.999, BUILD.md), so the engine is part of the cache fingerprint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dcca_jax._io import atomic_save_npy, atomic_write_json, file_sha256
from dcca_jax.visual import images as images_lib

BACKBONES = ("mobilenet_v2", "alexnet")
ENGINES = ("auto", "litert", "jax")
_CACHE_VERSION = 1


@dataclasses.dataclass
class Backbone:
    """A feature extractor: ``(n, S, S, 3)`` images -> ``(n, dim)`` features (normalised float images for the
    JAX engine, uint8 for LiteRT: ``input_uint8``).

    Attributes:
        name: ``"mobilenet_v2"`` or ``"alexnet"``.
        apply: ``x -> (n, dim)`` array (a jitted function, or a :class:`~dcca_jax.visual.litert.LiteRTFeatures`).
        preprocess: geometry and normalisation of its input.
        dim: feature width.
        fingerprint: identifies the weights and settings (for the cache index).
        engine: ``"jax"`` or ``"litert"``.
        input_uint8: ``apply`` takes the decoded uint8 images, unpadded (the LiteRT engine), rather than
            normalised float images in fixed-shape batches.
        needs_jax: True when a setting exists only in the JAX port (block pooling, test-time augmentation,
            fine-tuned weights, another input size), so another engine cannot stand in for it.
    """

    name: str
    apply: Callable[[jax.Array], jax.Array]
    preprocess: images_lib.Preprocess
    dim: int
    fingerprint: dict
    engine: str = "jax"
    input_uint8: bool = False
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
    # MobileNetV2's engine: "litert" (the TFLite file through ai-edge-litert's XNNPACK kernels, ~4x faster on a
    # CPU), "jax" (the JAX port: GPU/TPU, float or bf16 networks) or "auto" (LiteRT when it imports, JAX's
    # default device is a CPU and nothing below needs the port; see resolve_engine).
    c.engine = "auto"
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


def _jax_only(config: ml_collections.ConfigDict, dtype) -> list[str]:
    """Settings of a MobileNetV2 config that only the JAX port implements (add new JAX-only options here)."""
    reasons = [f"mobilenet_v2.{k}={v!r} (a feature lever)" for k, v in changed_levers(config.mobilenet_v2).items()]
    if not config.mobilenet_v2.emulate_uint8:
        reasons.append("mobilenet_v2.emulate_uint8=False asks for the plain float network")
    if jnp.dtype(dtype) != jnp.float32:
        reasons.append(f"dtype {jnp.dtype(dtype).name} (LiteRT runs the file's own arithmetic)")
    return reasons


def resolve_engine(config: ml_collections.ConfigDict, *, dtype=jnp.float32) -> tuple[str, str]:
    """The engine MobileNetV2 runs on, ``"litert"`` or ``"jax"``, and why.

    ``config.engine="auto"`` picks LiteRT when ``ai_edge_litert`` imports, JAX's default device is a CPU and
    the config asks for nothing only the JAX port does (:func:`_jax_only`); otherwise the JAX port.
    ``"litert"`` insists (an ImportError naming the package to install when it is missing).

    Args:
        config: see :func:`backbone_config`.
        dtype: the compute dtype :func:`build_backbone` is called with.

    Returns:
        ``(engine, reason)``.
    """
    from dcca_jax.visual import litert

    engine = config.get("engine", "auto")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    if config.backbone != "mobilenet_v2":
        if engine == "litert":
            raise ValueError(f"engine 'litert' runs only the mobilenet_v2 backbone, not {config.backbone!r}")
        return "jax", f"backbone {config.backbone} has only the JAX engine"
    if engine == "jax":
        return "jax", "engine='jax' in the config"
    if engine == "litert":
        litert.import_interpreter()
        reasons = _jax_only(config, dtype)
        if reasons:
            raise ValueError(f"engine 'litert' cannot honour {'; '.join(reasons)}: use engine='jax' or 'auto'")
        return "litert", "engine='litert' in the config"
    reasons = _jax_only(config, dtype)
    if jax.default_backend() != "cpu":
        reasons.append(f"JAX's default device is a {jax.default_backend()}")
    if not reasons and not litert.available():
        reasons.append(f"ai_edge_litert is not installed ({litert.INSTALL_HINT} for ~4x faster CPU extraction)")
    if reasons:
        return "jax", "; ".join(reasons)
    return "litert", "a CPU and ai_edge_litert installed"


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
        path = finetuned or mc.tflite_path
        if not path:
            raise ValueError("config.mobilenet_v2.tflite_path is empty: point it at mobilenet_v2_1.0_224_quant.tflite")
        engine, why = resolve_engine(config, dtype=dtype)
        logging.info("mobilenet_v2 runs on the %s engine: %s", engine, why)
        if engine == "litert":  # never with a lever (resolve_engine), so path is the TFLite file
            from dcca_jax.visual import litert

            pre = images_lib.Preprocess(size=mobilenet.INPUT_SIZE, crop_fraction=config.crop_fraction,
                                        normalisation="mobilenet_v2")
            net = litert.LiteRTFeatures(path)
            if net.input_dtype != np.uint8:  # a float file: the JAX normalisation is its input mapping
                raise ValueError(f"{path}: the LiteRT engine expects the quantised (uint8-input) MobileNetV2 file; "
                                 "use engine='jax' for a float file")
            return Backbone(name, net, pre, net.dim,
                            {"backbone": name, "weights_sha256": file_sha256(path), "engine": "litert"},
                            engine="litert", input_uint8=True)
        if finetuned:
            variables = mobilenet.load_backbone_params(finetuned, dtype=dtype)
            changed["finetuned_checkpoint"] = True  # the weights hash below identifies the file
        else:
            variables = mobilenet.load_tflite_params(path, dtype=dtype)
        emulate = bool(mc.emulate_uint8) and "quant" in variables
        fn, dim = mobilenet.make_feature_fn(variables, emulate_uint8=emulate, pool_blocks=levers["pool_blocks"],
                                            block_norm=levers["block_norm"], tta=levers["tta"])
        pre = images_lib.Preprocess(size=int(levers["input_size"]), crop_fraction=config.crop_fraction,
                                    normalisation="mobilenet_v2")
        # Non-default levers only, so caches made before these options existed stay valid.
        fingerprint = {"backbone": name, "weights_sha256": file_sha256(path), "emulate_uint8": emulate,
                       "dtype": jnp.dtype(dtype).name, "engine": "jax", **changed}
        return Backbone(name, fn, pre, dim, fingerprint, engine="jax", needs_jax=bool(changed))
    if name == "alexnet":
        from dcca_jax.visual import alexnet

        resolve_engine(config, dtype=dtype)  # refuses engine="litert"
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


DEFAULT_DECODE_WORKERS = 2


def _decode_pool(jobs, preprocess, *, workers: int, ahead: int):
    """Decode each ``(shard, start, paths)`` job into a LoadedBatch on a pool of ``workers`` threads, at most
    ``ahead`` jobs in flight; yields ``(shard, start, batch)`` in job order (an error is raised in order too)."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        it = iter(jobs)
        try:
            while True:
                while len(pending) < ahead:
                    job = next(it, None)
                    if job is None:
                        break
                    pending.append((job, pool.submit(images_lib.load_batch, job[2], preprocess=preprocess)))
                if not pending:
                    return
                (shard, start, _), fut = pending.popleft()
                yield shard, start, fut.result()
        finally:
            for _, fut in pending:  # stopped early (an error, an interruption): do not decode the rest
                fut.cancel()


def extract_features(paths: Sequence[str | os.PathLike], *, backbone: Backbone, batch_size: int = 32,
                     cache_dir: str | os.PathLike | None = None, shard_size: int = 512, progress: bool = False,
                     prefetch: int = 3, decode_workers: int = DEFAULT_DECODE_WORKERS) -> ExtractionResult:
    """Run ``backbone`` over image files in batches decoded by a thread pool, caching and resuming by shard.

    Args:
        paths: image files, in the order wanted for the output rows.
        backbone: from :func:`build_backbone`.
        batch_size: images per decode job and per jitted call (the last batch is zero-padded to this size for
            the JAX engine; the LiteRT engine runs the images of a batch one by one, unpadded).
        cache_dir: directory for shards and the index (None: keep everything in memory).
        shard_size: images per cached shard (a multiple of ``batch_size`` keeps batches full).
        progress: show a tqdm bar on stderr.
        prefetch: batches decoded (or being decoded) ahead of the network, beyond one per worker.
        decode_workers: threads decoding and resizing images (:data:`DEFAULT_DECODE_WORKERS`: the best of
            1-4 measured on 2 cores, BUILD.md).

    Returns:
        An :class:`ExtractionResult`.
    """
    paths = [os.fspath(p) for p in paths]
    n = len(paths)
    if n == 0:
        raise ValueError("extract_features got no image paths")
    if batch_size < 1 or shard_size < 1 or decode_workers < 1:
        raise ValueError(f"batch_size, shard_size and decode_workers must be >= 1, got {batch_size}, {shard_size} "
                         f"and {decode_workers}")
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
    t0 = time.perf_counter()
    n_computed = 0
    pending: dict[int, tuple[np.ndarray, list]] = {}
    size = backbone.preprocess.size
    decoded = _decode_pool(jobs, backbone.preprocess, workers=decode_workers, ahead=decode_workers + max(0, prefetch))
    try:
        for s, start, batch in decoded:
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
            if m and backbone.input_uint8:
                rows = np.asarray(batch.ok) + (start - lo)
                feats[rows] = np.asarray(backbone.apply(batch.images), np.float32)
            elif m:
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
        decoded.close()  # cancels the batches not yet decoded and joins the pool
        bar.close()
    elapsed = time.perf_counter() - t0
    rate = n_computed / elapsed if n_computed else 0.0
    features = np.concatenate([done[s][0] for s in range(n_shards)])
    failed = [f for s in range(n_shards) for f in done[s][1]]
    ok = np.ones(n, bool)
    ok[[f["index"] for f in failed]] = False
    logging.info("extracted %d images (%d computed, %d from cache, %d failed) at %.1f images/s", n, n_computed,
                 n - n_computed, len(failed), rate)
    return ExtractionResult(features=features, ok=ok, failed=failed, images_per_second=rate, n_computed=n_computed)

