r"""Speed of end-to-end DCCA training steps on Corel5k images (MobileNetV2 in the visual tower), per setting.

For each ``--settings`` entry ``SIZE:TRAINABLE_FROM[:BN]`` one warm-up step (compilation) and ``--steps`` timed
steps of the real training loop pieces: augmented micro-batches from the background loader, the frozen prefix,
exact accumulation over ``micro_batch x accumulate`` images (two passes through the trained layers), the update.
Reports seconds per step, milliseconds per image and the implied epoch time for the 4,000 training images of
the study (8 steps of 500), plus the evaluation-view forward pass (frozen prefix + trained layers) per image.

  python experiments/bench/finetune.py --workdir=results/corel5k_finetune \
      --settings=160:expanded_conv_13,224:expanded_conv_13
"""
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dcca_jax import finetune
from dcca_jax.data import datasets
from dcca_jax.visual import mobilenet
from dcca_jax.visual.augment import BatchLoader, DecodedImages
from dcca_jax.blas import limit_blas_threads

_SHARED = pathlib.Path(os.environ.get("DCCA_SHARED", pathlib.Path(__file__).resolve().parents[1].parent / "shared"))
_WORKDIR = flags.DEFINE_string("workdir", "results/corel5k_finetune", "Output folder: bench.json and bench.md go there.")
_DATA = flags.DEFINE_string("data", str(_SHARED / "data" / "corel5k"), "Corel5k folder.")
_WEIGHTS = flags.DEFINE_string("weights", str(_SHARED / "models" / "mobilenet_v2_1.0_224_quant" /
                                              "mobilenet_v2_1.0_224_quant.tflite"), "MobileNetV2 TFLite file.")
_SETTINGS = flags.DEFINE_list("settings", ["160:expanded_conv_13", "224:expanded_conv_13"],
                              "SIZE:TRAINABLE_FROM[:folded|update] entries.")
_STEPS = flags.DEFINE_integer("steps", 2, "Timed steps per setting (after one warm-up step).")
_MICRO = flags.DEFINE_integer("micro_batch", 50, "Images per micro-batch.")
_ACC = flags.DEFINE_integer("accumulate", 10, "Micro-batches per step.")


def _time_setting(size, trainable_from, bn, images, labels, backbone):
    c = finetune.finetune_config()
    c.augment.size, c.trainable_from, c.batch_norm = size, trainable_from, bn
    c.micro_batch, c.accumulate = _MICRO.value, _ACC.value
    fns = finetune.make_functions(c)
    start = finetune.layer_index(trainable_from)
    frozen = finetune.slice_layers(backbone, 0, start)
    eff = c.micro_batch * c.accumulate
    n = (_STEPS.value + 1) * eff
    # evaluation view: frozen prefix then the trained layers (both timed after a warm-up batch)
    ev = BatchLoader(images, c.augment, batch_size=c.micro_batch, train=False)
    x = jnp.asarray(ev.make_batch(range(c.micro_batch), epoch=0))
    a = fns.prefix(frozen, x).block_until_ready()
    head = fns.visual.head_module().init(jax.random.key(0), jnp.zeros((1, 1280)))["params"]
    visual = {"head": head, "backbone": finetune.slice_layers(backbone, start, len(finetune.LAYERS))}
    stats = {}
    if bn == "update":
        bn_p, bn_s = finetune.calibrate_batch_norm(c, visual["backbone"], [a])
        visual["backbone"], stats = finetune._merge(visual["backbone"], bn_p), {"backbone": bn_s}
    sem = fns.semantic_tower.init(jax.random.key(1), jnp.zeros((1, labels.shape[1])))["params"]
    params = {"visual": visual, "semantic": sem}
    fns.embed_eval(visual, stats, a).block_until_ready()
    t = time.perf_counter()
    for i in range(4):
        x = jnp.asarray(ev.make_batch(range(i * c.micro_batch, (i + 1) * c.micro_batch), epoch=0))
        fns.embed_eval(visual, stats, fns.prefix(frozen, x)).block_until_ready()
    eval_ms = (time.perf_counter() - t) / (4 * c.micro_batch) * 1e3
    state = finetune.FinetuneTrainState.create(apply_fn=None, params=params, tx=finetune.make_optimizer(c),
                                               batch_stats=stats)
    loader = BatchLoader(images, c.augment, batch_size=c.micro_batch, train=True, prefetch=4)
    batches = loader.batches(np.arange(n), epoch=0)
    y = jnp.asarray(labels[:n], jnp.float32)
    times = []
    for s in range(_STEPS.value + 1):
        t = time.perf_counter()
        bnd = [fns.prefix(frozen, jnp.asarray(next(batches))) for _ in range(c.accumulate)]
        loss, grads, new_stats = finetune.accumulated_gradients(fns, state.params, state.batch_stats, bnd,
                                                                y[s * eff:(s + 1) * eff])
        state = fns.apply_updates(state, grads, new_stats)
        jax.block_until_ready(state.params)
        times.append(time.perf_counter() - t)
    step_s = float(np.mean(times[1:]))
    return {"size": size, "trainable_from": trainable_from, "batch_norm": bn, "effective_batch": eff,
            "warmup_step_s": times[0], "step_s": step_s, "train_ms_per_image": step_s / eff * 1e3,
            "epoch_s_4000": step_s * (4000 // eff), "eval_ms_per_image": eval_ms}


def main(argv):
    del argv
    d = datasets.load_corel5k(_DATA.value)
    n = (_STEPS.value + 1) * _MICRO.value * _ACC.value
    images = DecodedImages(list(d.train.image_paths)[:n])
    labels = np.asarray(d.train.labels, np.float32)
    backbone = mobilenet.load_tflite_params(_WEIGHTS.value)["params"]
    rows = []
    with limit_blas_threads(1):
        for s in _SETTINGS.value:
            parts = s.split(":")
            rows.append(_time_setting(int(parts[0]), parts[1], parts[2] if len(parts) > 2 else "folded", images,
                                      labels, backbone))
    out = pathlib.Path(_WORKDIR.value) / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "jax": jax.__version__}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"Machine: {meta['cpus']} CPUs, load average at the end {meta['load_average'][0]:.1f} (shared machine).",
             "", "| size | trainable from | BN | step (500 images) s | train ms/image | epoch (4000) s | "
             "eval ms/image |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['trainable_from']} | {r['batch_norm']} | {r['step_s']:.1f} | "
                     f"{r['train_ms_per_image']:.1f} | {r['epoch_s_4000']:.0f} | {r['eval_ms_per_image']:.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    app.run(main)
