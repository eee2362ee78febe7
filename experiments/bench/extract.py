r"""Benchmark: MobileNetV2 feature extraction, JAX (Flax, dequantised) against the TFLite interpreter.

Same ~200 Corel5k photos, same machine, same process. Decoding + resize + crop is timed once on its own;
then each engine is timed on the already-decoded uint8 crops (network only) and reported in images/s:
- JAX MobileNetV2, jitted, batch --batch_size (float32), plain float and with uint8 activation emulation;
- dcca_jax.visual.extract.extract_features end to end (decode pool + network), for each engine (JAX port,
  LiteRT) and each decode-pool size in --decode_workers;
- TFLite interpreter (ai_edge_litert, default XNNPACK delegate), one image per invoke, at 1 and
  --threads threads (the interpreter's natural mode; its batch dimension is fixed at 1 in the file), reading
  the AvgPool tensor the plain way (experimental_preserve_all_tensors);
- the LiteRT backend's own interpreter (dcca_jax.visual.litert: the file patched to output AvgPool), on the
  decoded crops, at batch 1 and at each --litert_batches size (input resized).
Also the per-image cosine between the JAX and TFLite 1280-d features, so speed is not bought with accuracy.

  python experiments/bench/extract.py --workdir=results/bench
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

from experiments.bench.measure import median_rate
from dcca_jax.visual import extract
from dcca_jax.visual import images
from dcca_jax.visual import mobilenet

SHARED = os.environ.get("DCCA_SHARED", "../shared")
_WORKDIR = flags.DEFINE_string("workdir", "results/bench", "Output folder: extract.json and extract.md go there.")
_N = flags.DEFINE_integer("n", 200, "Corel5k test images (the first n of the list).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "JAX batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed passes over the images per engine (median reported).")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count() or 1, "TFLite interpreter threads (second row).")
_MODEL = flags.DEFINE_string("model", os.path.join(SHARED, "models", "mobilenet_v2_1.0_224_quant",
                                                   "mobilenet_v2_1.0_224_quant.tflite"), "TFLite file.")
_WORKERS = flags.DEFINE_list("decode_workers", ["1", "2", "3", "4"], "Decode-pool sizes of the end-to-end rows.")
_JAX_WORKERS = flags.DEFINE_list("jax_decode_workers", ["1", "2"], "Decode-pool sizes of the JAX end-to-end rows.")
_LITERT_BATCHES = flags.DEFINE_list("litert_batches", ["8"], "Input batch sizes tried on the LiteRT backend.")
_DATA = flags.DEFINE_string("data", os.path.join(SHARED, "data", "corel5k"), "Corel5k folder.")


def main(argv):
    del argv
    _, paths = images.read_list_file(os.path.join(_DATA.value, "corel5k_test_list.txt"))
    paths = paths[:_N.value]
    n = len(paths)
    rows = []

    t0 = time.perf_counter()
    batch = images.load_batch(paths)
    decode_s = time.perf_counter() - t0
    assert not batch.failed, batch.failed
    u8 = batch.images
    rows.append({"engine": "decode + resize + crop (Pillow, 1 thread)", "images_per_s": n / decode_s})

    variables = mobilenet.load_tflite_params(_MODEL.value)
    bs = _BATCH.value
    n_pad = -(-n // bs) * bs
    x = np.zeros((n_pad, 224, 224, 3), np.float32)
    x[:n] = images.normalise(u8, normalisation="mobilenet_v2")
    xb = [jnp.asarray(x[i:i + bs]) for i in range(0, n_pad, bs)]
    jax_feats, jax_top1 = {}, {}
    for emulate in (False, True):
        fn = mobilenet.make_apply_fn(variables, emulate_uint8=emulate)
        t0 = time.perf_counter()
        jax.block_until_ready(fn(xb[0]))
        compile_s = time.perf_counter() - t0

        def run(fn=fn):
            return [jax.block_until_ready(fn(b)["features"]) for b in xb]

        rate, times = median_rate(run, n, _REPEATS.value)
        jax_feats[emulate] = np.concatenate([np.asarray(f) for f in run()])[:n].astype(np.float64)
        jax_top1[emulate] = np.concatenate([np.asarray(fn(b)["logits"]).argmax(1) for b in xb])[:n]
        rows.append({"engine": f"JAX MobileNetV2 ({'uint8-emulating' if emulate else 'float'}), batch {bs}",
                     "images_per_s": rate, "compile_s": compile_s, "times_s": times})

    for engine, workers in [("jax", _JAX_WORKERS.value), ("litert", _WORKERS.value)]:
        cfg = extract.backbone_config()
        cfg.mobilenet_v2.tflite_path = _MODEL.value
        cfg.engine = engine
        try:
            bb = extract.build_backbone(cfg)
        except ImportError as e:
            rows.append({"engine": f"extract_features end to end, {engine}", "skipped": str(e)})
            continue
        extract.extract_features(paths[:bs], backbone=bb, batch_size=bs)  # compile / warm up
        for w in map(int, workers):
            rate, times = median_rate(lambda w=w: extract.extract_features(paths, backbone=bb, batch_size=bs,
                                                                           decode_workers=w), n, _REPEATS.value)
            rows.append({"engine": f"dcca_jax extract_features end to end, {engine} engine, {w} decode worker(s), "
                                   f"batch {bs}", "images_per_s": rate, "times_s": times, "loadavg": os.getloadavg()})

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        rows.append({"engine": "TFLite interpreter", "skipped": f"ai_edge_litert not installed ({e})"})
        tfl_feats = None
    else:
        tfl_feats = None
        for threads in sorted({1, _THREADS.value}):
            interp = Interpreter(model_path=_MODEL.value, num_threads=threads,
                                 experimental_preserve_all_tensors=True)
            interp.allocate_tensors()
            inp = interp.get_input_details()[0]["index"]
            det = {d["name"]: d for d in interp.get_tensor_details()}["MobilenetV2/Logits/AvgPool"]

            out_index = interp.get_output_details()[0]["index"]

            def run_tfl(interp=interp, inp=inp, det=det, out_index=out_index):
                out, probs = [], []
                for im in u8:
                    interp.set_tensor(inp, im[None])
                    interp.invoke()
                    out.append(interp.get_tensor(det["index"]).reshape(-1).copy())
                    probs.append(interp.get_tensor(out_index)[0].astype(np.float64) / 256.0)
                return out, probs

            run_tfl()  # warm-up
            rate, times = median_rate(run_tfl, n, _REPEATS.value)
            s, z = det["quantization"]
            feats_u8, probs = run_tfl()
            tfl_u8 = np.stack(feats_u8)
            tfl_feats = (tfl_u8.astype(np.float64) - z) * s
            tfl_probs = np.stack(probs)
            rows.append({"engine": f"TFLite interpreter (XNNPACK, uint8), {threads} thread(s), batch 1",
                         "images_per_s": rate, "times_s": times})
        from dcca_jax.visual import litert

        net = litert.LiteRTFeatures(_MODEL.value, num_threads=_THREADS.value)
        net(u8[:4])  # warm-up
        rate, times = median_rate(lambda: net(u8), n, _REPEATS.value)
        rows.append({"engine": f"LiteRT backend's interpreter (AvgPool as output), {net.num_threads} thread(s), "
                               "batch 1", "images_per_s": rate, "times_s": times,
                     "identical_to_reference": bool(np.array_equal(np.stack([net.raw(im) for im in u8]), tfl_u8))})
        for b in map(int, _LITERT_BATCHES.value):
            net_b = Interpreter(model_content=litert.feature_model(open(_MODEL.value, "rb").read())[0],
                                num_threads=_THREADS.value)
            net_b.resize_tensor_input(net_b.get_input_details()[0]["index"], [b, 224, 224, 3])
            net_b.allocate_tensors()
            ib, ob = net_b.get_input_details()[0]["index"], net_b.get_output_details()[0]["index"]
            m = n // b * b

            def run_b(net_b=net_b, ib=ib, ob=ob, b=b, m=m):
                for i in range(0, m, b):
                    net_b.set_tensor(ib, u8[i:i + b])
                    net_b.invoke()
                    net_b.get_tensor(ob)

            run_b()
            rate, times = median_rate(run_b, m, _REPEATS.value)
            rows.append({"engine": f"LiteRT backend's interpreter, input resized to batch {b}, "
                                   f"{_THREADS.value} thread(s)", "images_per_s": rate, "times_s": times})

    agreement = {}
    if tfl_feats is not None:
        for emulate, f in jax_feats.items():
            cos = np.sum(f * tfl_feats, 1) / np.linalg.norm(f, axis=1) / np.linalg.norm(tfl_feats, axis=1)
            sp = np.sort(tfl_probs, 1)
            decided = sp[:, -1] - sp[:, -2] > 0.05
            same = jax_top1[emulate] == tfl_probs.argmax(1)
            agreement["uint8-emulating" if emulate else "float"] = {
                "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                "cosine_below_0.99": int(np.sum(cos < 0.99)), "top1_agreement": float(same.mean()),
                "top1_agreement_where_tflite_gap_gt_0.05": float(same[decided].mean()),
                "n_tflite_gap_gt_0.05": int(decided.sum())}

    result = {"benchmark": "MobileNetV2 1.0/224 feature extraction (1280-d pre-logits)", "n_images": n,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                          "jax": jax.__version__, "backend": jax.default_backend()},
              "decode_seconds": decode_s, "rows": rows, "feature_agreement_vs_tflite": agreement}
    out = pathlib.Path(_WORKDIR.value) / "extract.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    lines = [f"MobileNetV2 feature extraction, {n} Corel5k photos, {os.cpu_count()} CPUs, JAX backend "
             f"{jax.default_backend()} (load avg {os.getloadavg()[0]:.2f})", "",
             "| engine | images/s | jit compile (s) |", "|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['engine']} | {r['skipped']} | |")
        else:
            comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
            same = {True: " (uint8 features identical to the row above)", False: " (features DIFFER)"}.get(
                r.get("identical_to_reference"), "")
            lines.append(f"| {r['engine']}{same} | {r['images_per_s']:.1f} | {comp} |")
    for k, v in agreement.items():
        lines.append(f"\nJAX ({k}) vs TFLite XNNPACK: cosine min {v['cosine_min']:.4f}, mean {v['cosine_mean']:.4f} "
                     f"({v['cosine_below_0.99']} of {n} below 0.99); same top-1 class {v['top1_agreement']:.3f} "
                     f"(where TFLite's top-2 gap > 0.05: {v['top1_agreement_where_tflite_gap_gt_0.05']:.3f} of "
                     f"{v['n_tflite_gap_gt_0.05']})")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
