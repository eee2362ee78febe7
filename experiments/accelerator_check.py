r"""One command for an accelerator machine: correctness and speed checks, each capped, results written as they come.

  python experiments/accelerator_check.py                       # on a GPU/TPU machine (make accelerator-check)
  python experiments/accelerator_check.py --tiny                # CPU rehearsal at small sizes (about a minute)
  python experiments/accelerator_check.py --shared=shared_subset --out_dir=$OUT --budget_s=380

Steps: (1) installs the accelerator jax build when jax sees no accelerator but one is present (from
``--wheels``, a folder of wheels, since such machines often have no network; otherwise it says so and goes on on
CPU), (2) prints the devices, (3) runs the checks below in a worker process, each under its own time cap and all
under ``--budget_s``: a check that raises records its traceback tail, one that hangs or crashes the worker is
recorded as such and a fresh worker runs the rest, (4) rewrites ``<out_dir>/<device>.json`` and ``.md`` after
every check (``<device>``: the slugified device kind, e.g. ``nvidia-h200``; ``cpu-tiny`` for the rehearsal).

Checks (``--only=a,b`` runs a subset):
  correctness  objectives (values and gradients of every objective against float64 on the CPU), linear_cca
               (against the numpy/scipy closed form), data_parallel (the DCCA step over all local devices
               against one device), pipeline (one run of experiments/configs/test.py)
  speed        matmul (float32 / bfloat16 rate), dcca_mnist (DCCA epoch on MNIST halves, 392-1024-1024-50 ReLU,
               batch 1000, float32 and bf16 towers, % of the matmul rate, held-out correlation), extract
               (MobileNetV2 images/s, float32 / uint8-emulating / bfloat16), finetune (DCCA-from-pixels training
               step at 224 px, images/s, float32 / bf16), kcca (Nystrom, n=100,000), streaming (linear CCA,
               n=1,000,000), topk (chunked top-k, 100,000 queries x 1,000,000 items)

Data: MNIST, Corel5k and the MobileNetV2 TFLite file are read from ``--shared`` (default ../shared); a subset is
enough (the first ``--corel_images`` training images are used). With ``--tiny`` and no shared data, generated
stand-ins are used and the results say so.
"""
from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import math
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]

_TINY = flags.DEFINE_bool("tiny", False, "CPU rehearsal: every check at small sizes on the CPU.")
_SHARED = flags.DEFINE_string("shared", os.environ.get("DCCA_SHARED", str(ROOT.parent / "shared")),
                              "Folder with data/mnist/mnist.npz, data/corel5k/, models/mobilenet_v2_1.0_224_quant/.")
_OUT_DIR = flags.DEFINE_string("out_dir", str(ROOT / "results" / "accelerator"), "Where <device>.json/.md go.")
_NAME = flags.DEFINE_string("name", None, "Result file name (default: the slugified device kind; cpu-tiny).")
_ONLY = flags.DEFINE_list("only", [], "Run only these checks (comma-separated names).")
_BUDGET = flags.DEFINE_float("budget_s", None, "Wall-clock budget of all checks (default 420; --tiny 110).")
_CAP_SCALE = flags.DEFINE_float("cap_scale", 1.0, "Multiplies every check's time cap.")
_WHEELS = flags.DEFINE_string("wheels", None, "Folder of wheels for installing the accelerator jax build offline.")
_CORELN = flags.DEFINE_integer("corel_images", 300, "Corel5k training images used by extract/finetune.")
_SUBSET = flags.DEFINE_string("make_subset", None, "Write the part of --shared that the checks read (MNIST, the "
                               "TFLite file, --corel_images Corel5k images with lists and annotations) to this "
                               "folder and exit: about 20 MB to carry to a machine without ../shared.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: run these checks in this process.")
_EVENTS = flags.DEFINE_string("events", None, "Internal: the worker's JSON-lines event file.")
_X64 = flags.DEFINE_bool("x64", False, "Internal: the worker enables 64-bit JAX.")

# name: (needs 64-bit JAX in its worker, time cap on the accelerator s, time cap with --tiny s). Order = run order.
# The --tiny caps are about 3x what an idle 2-core machine needs, so that a loaded CI machine still passes.
CHECKS = {
    "matmul": (False, 25, 20),
    "objectives": (True, 40, 40),
    "linear_cca": (False, 20, 20),
    "data_parallel": (False, 30, 30),
    "dcca_mnist": (False, 70, 45),
    "extract": (False, 80, 45),
    "finetune": (False, 110, 60),
    "kcca": (False, 30, 30),
    "streaming": (False, 40, 30),
    "topk": (False, 35, 20),
    "pipeline": (False, 90, 90),
}
TOLERANCES = {  # correctness limits (float32 on the device against float64 references)
    "objectives_rel": 1e-2, "linear_cca_abs": 1e-3, "data_parallel_rel": 1e-4,
}


# ----------------------------------------------------------------------------------------------------- helpers
def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "device"


def _paths():
    sh = pathlib.Path(_SHARED.value)
    return {"mnist": sh / "data" / "mnist" / "mnist.npz", "corel5k": sh / "data" / "corel5k",
            "tflite": sh / "models" / "mobilenet_v2_1.0_224_quant" / "mobilenet_v2_1.0_224_quant.tflite"}


def _have(key: str) -> bool:
    return _paths()[key].exists()


def _block(x):
    import jax
    return jax.block_until_ready(x)


def _timed(fn, repeats: int, warmup: int = 1):
    """Median and best seconds of ``repeats`` calls after ``warmup`` calls (each synchronised)."""
    import numpy as np
    for _ in range(warmup):
        _block(fn())
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        _block(fn())
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), float(min(ts))


def _matmul_rate(n: int, dtype, repeats: int = 10) -> float:
    """TFLOP/s of a jitted (n, n) @ (n, n) product on random data (median of ``repeats``)."""
    import jax
    import jax.numpy as jnp
    ka, kb = jax.random.split(jax.random.key(n))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(kb, (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: a @ b)
    med, _ = _timed(lambda: f(a, b), repeats, warmup=2)
    return 2 * n**3 / med / 1e12


def _rel(a, b) -> float:
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _stand_in_images(folder: pathlib.Path, n: int, size: int = 96) -> list[str]:
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"{i}.jpeg"
        if not p.exists():
            base = rng.integers(0, 255, (1, 1, 3))
            img = np.clip(base + rng.normal(0, 40, (size, size + 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(p, quality=90)
        paths.append(str(p))
    return paths


def _corel_subset(n: int):
    """(image paths, (n, V) float32 labels) of the first ``n`` Corel5k training images, or a stand-in."""
    import numpy as np
    if _have("corel5k"):
        from dcca_jax.data import datasets
        d = datasets.load_corel5k(_paths()["corel5k"])
        m = min(n, len(d.train.image_paths))
        return list(d.train.image_paths)[:m], np.asarray(d.train.labels[:m], np.float32), "Corel5k"
    if not _TINY.value:
        raise FileNotFoundError(f"Corel5k not found at {_paths()['corel5k']} (pass --shared)")
    paths = _stand_in_images(pathlib.Path(tempfile.gettempdir()) / "dcca_accel_images", n)
    rng = np.random.default_rng(1)
    labels = (rng.random((n, 20)) < 0.15).astype(np.float32)
    labels[np.arange(n), rng.integers(0, 20, n)] = 1.0
    return paths, labels, "stand-in (generated JPEGs, random tags)"


def _mobilenet_params(dtype):
    """MobileNetV2 variables from the TFLite file, or (tiny, no file) a random initialisation."""
    import jax
    import jax.numpy as jnp
    from dcca_jax.visual import mobilenet
    if _have("tflite"):
        return mobilenet.load_tflite_params(_paths()["tflite"], dtype=dtype), "TFLite ImageNet weights"
    if not _TINY.value:
        raise FileNotFoundError(f"MobileNetV2 TFLite file not found at {_paths()['tflite']} (pass --shared)")
    v = mobilenet.MobileNetV2().init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32))
    return jax.tree_util.tree_map(lambda x: x.astype(dtype), dict(v)), "stand-in (random init)"


# ------------------------------------------------------------------------------------------------------ checks
def check_matmul():
    import jax.numpy as jnp
    n = 512 if _TINY.value else 8192
    f32 = _matmul_rate(n, jnp.float32)
    bf16 = _matmul_rate(n, jnp.bfloat16)
    import jax
    with jax.default_matmul_precision("highest"):
        f32_highest = _matmul_rate(n, jnp.float32)
    return {"n": n, "float32_tflops": f32, "float32_highest_tflops": f32_highest, "bfloat16_tflops": bf16,
            "summary": f"{n}^3: float32 {f32:.3g} (precision highest {f32_highest:.3g}), bfloat16 {bf16:.3g} TFLOP/s"}


def check_objectives():
    import jax
    import jax.numpy as jnp
    import numpy as np
    from dcca_jax.objectives import OBJECTIVES, cca_loss
    assert jax.config.jax_enable_x64
    cpu = jax.devices("cpu")[0]
    rng = np.random.default_rng(0)
    n, o = (200, 6) if _TINY.value else (1000, 50)
    z = rng.standard_normal((n, 3))
    h_v = z @ rng.standard_normal((3, o)) + 0.5 * rng.standard_normal((n, o))
    h_s = z @ rng.standard_normal((3, o)) + 0.5 * rng.standard_normal((n, o))
    rows, worst = {}, 0.0
    for obj in OBJECTIVES:
        kw = dict(objective=obj, ridge_v=1e-3, ridge_s=1e-3, k=3 if obj == "top_k" else None)
        f = jax.jit(jax.value_and_grad(lambda a, b: cca_loss(a, b, **kw), argnums=(0, 1)))
        ref_v, ref_g = f(jax.device_put(h_v, cpu), jax.device_put(h_s, cpu))  # float64 on the CPU
        row = {}
        for prec in ("default",) if _TINY.value else ("default", "highest"):  # the same on a CPU
            with jax.default_matmul_precision(prec):
                dev_v, dev_g = f(jnp.asarray(h_v, jnp.float32), jnp.asarray(h_s, jnp.float32))
            row[f"value_rel_{prec}"] = abs(float(dev_v) - float(ref_v)) / abs(float(ref_v))
            row[f"grad_rel_{prec}"] = max(_rel(dev_g[0], ref_g[0]), _rel(dev_g[1], ref_g[1]))
            ok = all(np.isfinite(np.asarray(g)).all() for g in dev_g) and math.isfinite(float(dev_v))
            row[f"finite_{prec}"] = bool(ok)
        row["value_f64"] = float(ref_v)
        rows[obj] = row
        worst = max(worst, row["value_rel_default"], row["grad_rel_default"])
        if not all(v for k, v in row.items() if k.startswith("finite")):
            raise AssertionError(f"{obj}: non-finite value or gradient on the device")
    tol = TOLERANCES["objectives_rel"]
    if not worst < tol:
        raise AssertionError(f"objectives: worst relative error {worst:.2e} >= {tol} ({rows})")
    worst_hi = max(max(r.get("value_rel_highest", 0.0), r.get("grad_rel_highest", 0.0)) for r in rows.values())
    return {"n": n, "out_dim": o, "objectives": rows, "worst_rel_default": worst,
            "worst_rel_highest": None if _TINY.value else worst_hi,
            "tolerance": tol,
            "summary": f"{len(rows)} objectives, float32 device vs float64 CPU: worst relative error of value/gradient "
                       f"{worst:.1e} (default matmul precision)"
                       + ("" if _TINY.value else f", {worst_hi:.1e} (precision highest)")}


def check_linear_cca():
    import jax.numpy as jnp
    import numpy as np
    import scipy.linalg
    from dcca_jax import fit_linear_cca
    from dcca_jax.data.synthetic import correlated_views
    n, dv, ds, k = (2000, 30, 20, 5) if _TINY.value else (20000, 300, 260, 20)
    x_v, x_s = correlated_views(n, dv, ds, latent=10, seed=0)
    r = 1e-3
    # closed form (float64 numpy/scipy): generalised symmetric eigenproblem of Eq. 8
    xv, xs = x_v - x_v.mean(0), x_s - x_s.mean(0)
    svv = xv.T @ xv / (n - 1) + r * np.eye(dv)
    sss = xs.T @ xs / (n - 1) + r * np.eye(ds)
    svs = xv.T @ xs / (n - 1)
    lv = np.linalg.cholesky(svv)
    ls = np.linalg.cholesky(sss)
    t = scipy.linalg.solve_triangular(lv, scipy.linalg.solve_triangular(ls, svs.T, lower=True).T, lower=True)
    ref = np.linalg.svd(t, compute_uv=False)[:k]
    import jax
    errs, got = {}, None
    for prec in ("default", "highest"):
        t0 = time.perf_counter()
        with jax.default_matmul_precision(prec):
            p = fit_linear_cca(jnp.asarray(x_v, jnp.float32), jnp.asarray(x_s, jnp.float32), n_components=k,
                               ridge_v=r, ridge_s=r)
            c = np.asarray(p.correlations, np.float64)
        errs[prec] = float(np.abs(c - ref).max())
        got = c if got is None else got
        secs = time.perf_counter() - t0 if prec == "default" else secs
    err = errs["default"]
    tol = TOLERANCES["linear_cca_abs"]
    if not err < tol:
        raise AssertionError(f"linear CCA correlations differ from the closed form by {err:.2e} >= {tol} "
                             f"(precision highest: {errs['highest']:.2e})")
    return {"n": n, "dims": [dv, ds], "k": k, "max_abs_corr_err": err, "max_abs_corr_err_highest": errs["highest"],
            "tolerance": tol, "sum_corr": float(got.sum()), "first_fit_s": secs,
            "summary": f"n={n}, {dv}x{ds}, k={k}: float32 correlations within {err:.1e} of the float64 closed form "
                       f"({errs['highest']:.1e} at matmul precision highest)"}


def check_data_parallel():
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from dcca_jax import distributed as dist
    from dcca_jax.models import dcca
    from dcca_jax.models.towers import make_tower
    from dcca_jax.data.synthetic import correlated_views
    nd = jax.local_device_count()
    bs = 64 * nd if _TINY.value else 1000 * nd
    x_v, x_s = correlated_views(bs, 40, 30, latent=8, seed=3, dtype=np.float32)
    cfg = dcca.dcca_config("paper")
    cfg.towers.update(visual_hidden=(64,), semantic_hidden=(64,), out_dim=8, activation="relu", batch_norm=True)
    cfg.learning_rate = 1e-3
    tv = make_tower(hidden=(64,), out_dim=8, activation="relu", batch_norm=True)
    ts = make_tower(hidden=(64,), out_dim=8, activation="relu", batch_norm=True)
    var_v = tv.init(jax.random.key(0), x_v[:2])
    var_s = ts.init(jax.random.key(1), x_s[:2])

    def fresh():  # a copy each time: the steps donate their input state
        copy = lambda t: jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), t)
        return dcca.DCCATrainState.create(
            apply_fn=None, params=copy({"visual": var_v["params"], "semantic": var_s["params"]}),
            tx=optax.sgd(0.05),  # not Adam: its normalisation turns round-off in ~0 gradients into full steps
            batch_stats=copy({"visual": var_v["batch_stats"], "semantic": var_s["batch_stats"]}))

    rng = jax.random.key(7)
    with jax.default_matmul_precision("highest"):
        one = dcca.make_train_step(tv, ts, cfg)
        s1, m1 = one(fresh(), (x_v, x_s), rng)
        s1, m1b = one(s1, (x_v, x_s), rng)
        mesh = dist.make_mesh()
        many = dist.data_parallel_dcca_step(tv, ts, cfg, mesh)
        s2, m2 = many(fresh(), (x_v, x_s), rng)
        s2, m2b = many(s2, (x_v, x_s), rng)
    flat = lambda t: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(t)])
    err = {"loss": abs(float(m1b["loss"]) - float(m2b["loss"])) / abs(float(m1b["loss"])),
           "grad_norm": abs(float(m1["grad_norm"]) - float(m2["grad_norm"])) / float(m1["grad_norm"]),
           "params_after_2_steps": _rel(flat(s2.params), flat(s1.params)),
           "batch_stats": _rel(flat(s2.batch_stats), flat(s1.batch_stats))}
    worst = max(err.values())
    tol = TOLERANCES["data_parallel_rel"]
    if not worst < tol:
        raise AssertionError(f"data-parallel step differs from one device: {err}")
    return {"devices": nd, "global_batch": bs, "rel_errors": err, "worst_rel": worst, "tolerance": tol,
            "summary": f"{nd} device(s), global batch {bs}, batch norm: 2 steps equal one device's to {worst:.1e}"}


def _dcca_config(hidden, out_dim, batch, epochs, compute_dtype):
    from dcca_jax.models.dcca import dcca_config
    cfg = dcca_config("paper")
    cfg.towers.visual_hidden = cfg.towers.semantic_hidden = hidden
    cfg.towers.out_dim = out_dim
    cfg.towers.activation = "relu"
    cfg.batch_size, cfg.learning_rate, cfg.epochs = batch, 1e-3, epochs
    cfg.validation_fraction, cfg.patience, cfg.log_every = 0.0, 0, 10**9
    cfg.compute_dtype = compute_dtype
    return cfg


def check_dcca_mnist():
    import jax.numpy as jnp
    import numpy as np
    from dcca_jax import DeepCCA
    from dcca_jax.data.mnist import load_mnist_halves
    from dcca_jax.models.towers import tower_forward_flops
    if _have("mnist"):
        d = load_mnist_halves(_paths()["mnist"])
        source = "MNIST halves"
    elif _TINY.value:
        from dcca_jax.data.synthetic import correlated_views
        x_v, x_s = correlated_views(3000, 392, 392, latent=10, noise=0.5, seed=0, dtype=np.float32)
        d = {"train_v": x_v[:2000], "train_s": x_s[:2000], "test_v": x_v[2000:], "test_s": x_s[2000:]}
        source = "stand-in (correlated_views, 392 x 392)"
    else:
        raise FileNotFoundError(f"MNIST not found at {_paths()['mnist']} (pass --shared)")
    if _TINY.value:
        n_train, hidden, out_dim, batch, epochs, mm_n = 2000, (64, 64), 10, 200, 2, 512
    else:
        n_train, hidden, out_dim, batch, epochs, mm_n = len(d["train_v"]), (1024, 1024), 50, 1000, 4, 4096
    x_v, x_s = d["train_v"][:n_train], d["train_s"][:n_train]
    if _TINY.value:
        d["test_v"], d["test_s"] = d["test_v"][:2000], d["test_s"][:2000]
    steps = n_train // batch
    epoch_flops = 3 * 2 * tower_forward_flops(392, hidden, out_dim) * batch * steps
    rows = {}
    for cd, mm_dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        rate = _matmul_rate(mm_n, mm_dtype)
        model = DeepCCA(_dcca_config(hidden, out_dim, batch, epochs, cd)).fit(x_v, x_s)
        ends = [0.0] + [r["elapsed_s"] for r in model.history]
        times = [b - a for a, b in zip(ends[:-1], ends[1:])]
        steady = float(np.median(times[1:])) if len(times) > 1 else times[0]
        tflops = epoch_flops / steady / 1e12
        rows[cd] = {"epoch_times_s": times, "s_per_epoch": steady, "tflops": tflops, "matmul_tflops": rate,
                    "pct_of_matmul": 100 * tflops / rate, "ms_per_step": 1e3 * steady / steps,
                    "test_total_corr": float(np.sum(np.asarray(model.score(d["test_v"], d["test_s"])))),
                    "train_total_corr": float(np.sum(np.asarray(model.correlations)))}
    f, b = rows["float32"], rows["bfloat16"]
    return {"data": source, "n_train": n_train, "towers": [392, *hidden, out_dim], "batch": batch, "epochs": epochs,
            "steps_per_epoch": steps, "epoch_tflop": epoch_flops / 1e12, "matmul_n": mm_n, "rows": rows,
            "bf16_speedup": f["s_per_epoch"] / b["s_per_epoch"],
            "summary": f"{source}, {epochs} epochs: float32 {f['s_per_epoch']:.3f} s/epoch ({f['pct_of_matmul']:.1f}% of "
                       f"{f['matmul_tflops']:.3g} TFLOP/s), bf16 {b['s_per_epoch']:.3f} s/epoch ({b['pct_of_matmul']:.1f}% "
                       f"of {b['matmul_tflops']:.3g}); held-out total corr. {f['test_total_corr']:.2f} vs "
                       f"{b['test_total_corr']:.2f} (bf16)"}


def check_extract():
    import jax
    import jax.numpy as jnp
    import numpy as np
    from dcca_jax.visual import extract, mobilenet
    size = 64 if _TINY.value else 224
    batch = 8 if _TINY.value else 256
    repeats = 2 if _TINY.value else 5
    x = jax.random.uniform(jax.random.key(0), (batch, size, size, 3), jnp.float32, -1.0, 1.0)
    rows, feats = {}, {}
    for name, dtype, emulate in (("float32", jnp.float32, False), ("float32_uint8_emulation", jnp.float32, True),
                                 ("bfloat16", jnp.bfloat16, False)):
        variables, source = _mobilenet_params(dtype)
        if emulate and "quant" not in variables:
            rows[name] = {"skipped": "no quantisation parameters (stand-in weights)"}
            continue
        fn = mobilenet.make_apply_fn(variables, emulate_uint8=emulate)
        t = time.perf_counter()
        _block(fn(x)["features"])
        compile_s = time.perf_counter() - t
        med, best = _timed(lambda: fn(x)["features"], repeats, warmup=0)
        feats[name] = np.asarray(fn(x)["features"], np.float32)
        rows[name] = {"images_per_s": batch / med, "compile_s": compile_s, "batch": batch}
    cos = lambda a, b: (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
    c = cos(feats["bfloat16"], feats["float32"])
    agree = {"bf16_vs_f32_cosine_min": float(c.min()), "bf16_vs_f32_cosine_mean": float(c.mean())}
    # end to end from JPEG files (decoding on the host threads, the network on the device)
    e2e = None
    if _have("corel5k") or _TINY.value:
        paths, _, data = _corel_subset(min(_CORELN.value, 8 if _TINY.value else 10**9))
        cfg = extract.backbone_config()
        cfg.engine = "jax"  # the device's speed, not the CPU's TFLite interpreter
        if _have("tflite"):
            cfg.mobilenet_v2.tflite_path = str(_paths()["tflite"])
            bb = extract.build_backbone(cfg)
            res = extract.extract_features(paths, backbone=bb, batch_size=64 if not _TINY.value else 8)
            e2e = {"images": len(paths), "images_per_s": res.images_per_second, "data": data,
                   "emulate_uint8": bb.fingerprint["emulate_uint8"], "note": "first call: includes compilation"}
    f32 = rows["float32"]["images_per_s"]
    b16 = rows["bfloat16"]["images_per_s"]
    return {"weights": source, "size": size, "rows": rows, "agreement": agree, "end_to_end": e2e,
            "summary": f"{size} px batch {batch}: float32 {f32:.0f} img/s, bf16 {b16:.0f} img/s"
                       + (f", uint8-emulating {rows['float32_uint8_emulation']['images_per_s']:.0f} img/s"
                          if "images_per_s" in rows["float32_uint8_emulation"] else "")
                       + f"; bf16 vs f32 feature cosine min {agree['bf16_vs_f32_cosine_min']:.4f}"}


def check_finetune():
    import jax
    import jax.numpy as jnp
    import numpy as np
    from dcca_jax import finetune
    from dcca_jax.visual.augment import BatchLoader, DecodedImages
    n_img = min(_CORELN.value, 40) if _TINY.value else _CORELN.value
    paths, labels, data = _corel_subset(n_img)
    images = DecodedImages(paths, num_workers=8)
    variables, source = _mobilenet_params(jnp.float32)
    backbone = dict(variables["params"])
    size = 64 if _TINY.value else 224
    micro, acc, steps = (8, 2, 2) if _TINY.value else (50, 10, 3)
    trainable_from = "expanded_conv_16" if _TINY.value else "expanded_conv_13"  # tiny: less to compile
    rows = {}
    for cd in ("float32", "bfloat16"):
        c = finetune.finetune_config()
        c.augment.size, c.trainable_from, c.micro_batch, c.accumulate = size, trainable_from, micro, acc
        c.out_dim = 10 if _TINY.value else 100
        c.compute_dtype = cd
        fns = finetune.make_functions(c)
        start = finetune.layer_index(c.trainable_from)
        frozen = finetune.slice_layers(backbone, 0, start)
        head = fns.visual.head_module().init(jax.random.key(0), jnp.zeros((1, 1280)))["params"]
        visual = {"head": jax.tree_util.tree_map(lambda p: p + 1e-3, head),
                  "backbone": finetune.slice_layers(backbone, start, len(finetune.LAYERS))}
        sem = fns.semantic_tower.init(jax.random.key(1), jnp.zeros((1, labels.shape[1])))["params"]
        state = finetune.FinetuneTrainState.create(apply_fn=None, params={"visual": visual, "semantic": sem},
                                                   tx=finetune.make_optimizer(c), batch_stats={})
        eff = micro * acc
        idx = np.arange((steps + 1) * eff) % len(paths)
        y = jnp.asarray(labels[idx], jnp.float32)
        loader = BatchLoader(images, c.augment, batch_size=micro, train=True, num_workers=8, prefetch=2 * acc)
        batches = loader.batches(idx, epoch=0)
        times, losses, kept = [], [], []
        for s in range(steps + 1):
            t = time.perf_counter()
            host = [next(batches) for _ in range(acc)]
            bnd = [fns.prefix(frozen, jnp.asarray(b)) for b in host]
            loss, grads, st = finetune.accumulated_gradients(fns, state.params, state.batch_stats, bnd,
                                                             y[s * eff:(s + 1) * eff])
            state = fns.apply_updates(state, grads, st)
            _block(state.params)
            times.append(time.perf_counter() - t)
            losses.append(float(loss))
            kept = host
        # the device part alone: the same step on batches already in host memory (loader excluded)
        dev_times = []
        for _ in range(2):
            t = time.perf_counter()
            bnd = [fns.prefix(frozen, jnp.asarray(b)) for b in kept]
            loss, grads, st = finetune.accumulated_gradients(fns, state.params, state.batch_stats, bnd, y[:eff])
            state = fns.apply_updates(state, grads, st)
            _block(state.params)
            dev_times.append(time.perf_counter() - t)
        step_s = float(np.median(times[1:]))
        rows[cd] = {"warmup_step_s": times[0], "step_s": step_s, "images_per_s": eff / step_s,
                    "device_only_images_per_s": eff / float(min(dev_times)), "losses": losses,
                    "epoch_4000_s": step_s * (4000 // eff)}
    f, b = rows["float32"], rows["bfloat16"]
    return {"data": data, "weights": source, "images_decoded": len(paths), "size": size,
            "trainable_from": trainable_from, "effective_batch": micro * acc, "timed_steps": steps, "rows": rows,
            "summary": f"{size} px, batch {micro}x{acc}: float32 {f['images_per_s']:.0f} img/s "
                       f"({f['device_only_images_per_s']:.0f} without the loader), bf16 {b['images_per_s']:.0f} img/s "
                       f"({b['device_only_images_per_s']:.0f}); epoch of 4000 images {f['epoch_4000_s']:.1f} s (f32)"}


def check_kcca():
    import numpy as np
    from dcca_jax import KernelCCA
    from dcca_jax.data.synthetic import correlated_views
    n, m, d = (4000, 200, (30, 20)) if _TINY.value else (100_000, 1000, (300, 260))
    x_v, x_s = correlated_views(n, *d, latent=20, nonlinear=True, seed=0, dtype=np.float32)
    cfg = dict(solver="nystrom", n_landmarks=m, n_components=10, ridge_v=1e-3, ridge_s=1e-3)
    out = {}
    for run in ("first", "second"):
        t = time.perf_counter()
        model = KernelCCA(**cfg).fit(x_v, x_s)
        _block(model.correlations)
        out[f"{run}_fit_s"] = time.perf_counter() - t
    out.update(n=n, landmarks=m, dims=list(d), sum_corr=float(np.sum(np.asarray(model.correlations))),
               summary=f"n={n}, {m} landmarks: fit {out['second_fit_s']:.2f} s ({out['first_fit_s']:.2f} s with "
                       "compilation)")
    return out


def check_streaming():
    import jax.numpy as jnp
    import numpy as np
    from dcca_jax import fit_linear_cca
    from dcca_jax.models.streaming import fit_streaming_cca
    n, dv, ds = (50_000, 30, 20) if _TINY.value else (1_000_000, 300, 260)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    z = rng.standard_normal((n, 20), dtype=np.float32)
    x_v = z @ rng.standard_normal((20, dv), dtype=np.float32) + rng.standard_normal((n, dv), dtype=np.float32)
    x_s = z @ rng.standard_normal((20, ds), dtype=np.float32) + rng.standard_normal((n, ds), dtype=np.float32)
    gen_s = time.perf_counter() - t
    res = {}
    for run in ("first", "second"):
        t = time.perf_counter()
        p = fit_streaming_cca(x_v, x_s, n_components=20, ridge_v=1e-4, ridge_s=1e-4)
        _block(p.correlations)
        res[f"{run}_fit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    q = fit_linear_cca(jnp.asarray(x_v), jnp.asarray(x_s), n_components=20, ridge_v=1e-4, ridge_s=1e-4)
    _block(q.correlations)
    in_mem = time.perf_counter() - t
    diff = float(np.abs(np.asarray(p.correlations) - np.asarray(q.correlations)).max())
    if not diff < 1e-2:
        raise AssertionError(f"streaming and in-memory CCA correlations differ by {diff}")
    return {"n": n, "dims": [dv, ds], "generate_s": gen_s, **res, "in_memory_fit_s": in_mem,
            "max_corr_diff_vs_in_memory": diff, "us_per_sample": 1e6 * res["second_fit_s"] / n,
            "summary": f"n={n:,} ({dv}x{ds}, host arrays): {res['second_fit_s']:.2f} s "
                       f"({1e6 * res['second_fit_s'] / n:.2f} us/sample); in memory on the device {in_mem:.2f} s"}


def check_topk():
    import jax
    import jax.numpy as jnp
    import numpy as np
    from dcca_jax.tagging import recommend
    nq, ni, dim, k = (2000, 20000, 64, 10) if _TINY.value else (100_000, 1_000_000, 64, 10)
    kq, ki = jax.random.split(jax.random.key(0))
    q = jax.random.normal(kq, (nq, dim), jnp.float32)
    it = jax.random.normal(ki, (ni, dim), jnp.float32)
    out = {}
    t = time.perf_counter()
    v, i = _block(recommend.chunked_topk(q, it, k=k))
    out["first_run_s"] = time.perf_counter() - t
    t = time.perf_counter()
    v, i = _block(recommend.chunked_topk(q, it, k=k))
    out["second_run_s"] = time.perf_counter() - t
    # spot check: 64 queries against the dense product
    qs = np.asarray(q[:64], np.float64)
    its = np.asarray(it, np.float64)
    s = (qs / np.linalg.norm(qs, axis=1, keepdims=True)) @ (its / np.linalg.norm(its, axis=1, keepdims=True)).T
    want = -np.sort(-s, axis=1)[:, :k]
    err = float(np.abs(np.asarray(v[:64], np.float64) - want).max())
    if not err < 5e-3:  # float32 (tf32 on GPUs by default) against float64
        raise AssertionError(f"chunked top-k similarities differ from the dense reference by {err}")
    out.update(n_queries=nq, n_items=ni, dim=dim, k=k, max_sim_err_64_queries=err,
               queries_per_s=nq / out["second_run_s"],
               summary=f"{nq:,} queries x {ni:,} items (d={dim}, k={k}): {out['second_run_s']:.2f} s "
                       f"({nq / out['second_run_s']:,.0f} queries/s)")
    return out


def check_pipeline():
    import numpy as np
    from dcca_jax import pipeline
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        spec = importlib.util.spec_from_file_location("accel_test_cfg", ROOT / "experiments" / "configs" / "test.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cfg = mod.get_config()
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    with tempfile.TemporaryDirectory() as wd:
        t = time.perf_counter()
        pipeline.run_pipeline(cfg, wd)
        secs = time.perf_counter() - t
        res = json.loads((pathlib.Path(wd) / "results.json").read_text())
    t2 = res["table2_recommendation"]
    methods = sorted(t2)
    if len(methods) < 6 or set(res["table1_correlation"]) != {"DMFR&CCA", "DMFR&KCCA", "DMFR&DCCA"}:
        raise AssertionError(f"pipeline results lack methods: {methods}, {sorted(res['table1_correlation'])}")
    af, f1 = {}, {}
    for m, r in t2.items():
        af[m], f1[m] = float(r["metrics"]["per_image/AF"]), float(r["metrics"]["per_word/F1"])
        if not (0.0 <= af[m] <= 1.0 and 0.0 <= f1[m] <= 1.0):
            raise AssertionError(f"{m}: per-image AF {af[m]} or per-word F1 {f1[m]} outside [0, 1]")
    ccs = {m: float(r["ccs"]["test"][-1]) for m, r in res["table1_correlation"].items()}
    if not all(np.isfinite(v) for v in ccs.values()):
        raise AssertionError(f"non-finite test CCS: {ccs}")
    return {"seconds": secs, "methods": methods, "per_image_af": af, "per_word_f1": f1, "test_ccs_top": ccs,
            "backbone": res.get("visual", {}).get("backbone") if isinstance(res.get("visual"), dict) else None,
            "summary": f"test config end to end in {secs:.1f} s; 6 methods; per-image AF "
                       + ", ".join(f"{m} {v:.3f}" for m, v in sorted(af.items()))}


def make_subset(dst: pathlib.Path) -> None:
    """Copies what the checks read from --shared into ``dst`` (same layout; Corel5k cut to --corel_images)."""
    import scipy.io
    src = _paths()
    for key, rel in (("mnist", "data/mnist/mnist.npz"),
                     ("tflite", "models/mobilenet_v2_1.0_224_quant/mobilenet_v2_1.0_224_quant.tflite")):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src[key], dst / rel)
    c_src, c_dst = src["corel5k"], dst / "data" / "corel5k"
    c_dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(c_src / "corel5k_words.txt", c_dst)
    for split, var, n in (("train", "annot1", _CORELN.value), ("test", "annot2", 20)):
        lines = (c_src / f"corel5k_{split}_list.txt").read_text().splitlines()[:n]
        (c_dst / f"corel5k_{split}_list.txt").write_text("\n".join(lines) + "\n")
        scipy.io.savemat(c_dst / f"corel5k_{split}_annot.mat", {var: scipy.io.loadmat(c_src / f"corel5k_{split}_annot.mat")[var][:n]})
        for line in lines:
            (c_dst / line).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(c_src / f"{line}.jpeg", c_dst / f"{line}.jpeg")


# --------------------------------------------------------------------------------------------- worker process
def _worker(names: list[str]) -> None:
    import jax
    if _X64.value:
        jax.config.update("jax_enable_x64", True)
    events = open(_EVENTS.value, "a", buffering=1)
    for name in names:
        events.write(json.dumps({"event": "start", "check": name, "t": time.time()}) + "\n")
        t = time.perf_counter()
        try:
            out = globals()[f"check_{name}"]()
            rec = {"status": "passed", "result": out}
        except Exception as e:  # a failing check records its error; the next one runs
            tb = traceback.format_exc()
            rec = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000], "traceback_tail": tb[-3000:]}
        rec.update(event="end", check=name, seconds=time.perf_counter() - t)
        events.write(json.dumps(rec, default=float) + "\n")
    events.close()


# --------------------------------------------------------------------------------------------------- driver
def _jax_info(env) -> dict:
    code = ("import json, jax; d = jax.devices(); print(json.dumps({'backend': jax.default_backend(), "
            "'devices': [str(x) for x in d], 'kind': d[0].device_kind, 'count': len(d), "
            "'jax': jax.__version__}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    if p.returncode != 0:
        return {"backend": "error", "error": p.stderr[-2000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _install_accelerator_jax(env) -> tuple[dict, str]:
    info = _jax_info(env)
    if _TINY.value or info.get("backend") not in ("cpu", "error"):
        return info, "not needed" if not _TINY.value else "skipped (--tiny runs on the CPU)"
    has_gpu = shutil.which("nvidia-smi") is not None
    has_tpu = pathlib.Path("/dev/accel0").exists() or pathlib.Path("/dev/vfio").exists()
    if not (has_gpu or has_tpu):
        return info, "no accelerator found (no nvidia-smi, no TPU device): running on the CPU"
    extra = "jax[cuda12]" if has_gpu else "jax[tpu]"
    if not _WHEELS.value:
        return info, (f"jax sees only the CPU, and no --wheels folder was given: install {extra} (pip install -U "
                      f"'{extra}') or pass --wheels=DIR with its wheels; running on the CPU")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", f"--find-links={_WHEELS.value}", extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    info = _jax_info(env)
    status = f"installed {extra} from {_WHEELS.value}" if p.returncode == 0 else f"install failed: {p.stderr[-500:]}"
    return info, status


def _markdown(r: dict) -> str:
    lines = [f"# Accelerator check: {r['device']['kind']} ({r['device']['backend']}, {r['device']['count']} device(s))",
             "", f"`{r['command']}`", "",
             f"jax {r['device'].get('jax')}, {r['started']}; total {r['total_s']:.0f} s of a {r['budget_s']:.0f} s budget; "
             f"install: {r['install']}; data: {r['data']}; load average {r['loadavg_start'][0]} at the start, "
             f"{r['loadavg_now'][0]} at the end, {r['cpus']} CPUs", "",
             "| check | status | seconds | result |", "|---|---|---:|---|"]
    for name, c in r["checks"].items():
        res = c.get("result", {}).get("summary") if c["status"] == "passed" else c.get("error", "")
        res = str(res).replace("|", "/").replace("\n", " ")[:400]
        lines.append(f"| {name} | {c['status']} | {c.get('seconds', 0):.1f} | {res} |")
    return "\n".join(lines) + "\n"


def _write(r: dict, out_dir: pathlib.Path, name: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(r, indent=1, default=float)), (".md", _markdown(r))):
        tmp = out_dir / f".{name}{suffix}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out_dir / f"{name}{suffix}")


def _run_group(names, x64, caps, deadline, env, record, save, log_dir):
    """Runs ``names`` in worker processes: a check over its cap, or a crash, is recorded and a new worker goes on."""
    todo = list(names)
    while todo:
        if time.time() >= deadline:
            for n in todo:
                record(n, {"status": "skipped", "error": "global time budget spent", "seconds": 0.0})
            return
        events = log_dir / f"events_{todo[0]}.jsonl"
        log = log_dir / f"worker_{todo[0]}.log"
        cmd = [sys.executable, os.path.abspath(__file__), f"--worker={','.join(todo)}", f"--events={events}",
               f"--shared={_SHARED.value}", f"--corel_images={_CORELN.value}", f"--x64={x64}", f"--tiny={_TINY.value}"]
        with open(log, "w") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        seen, current, started = 0, None, time.time()
        startup_cap = 60.0
        while True:
            time.sleep(0.2)
            lines = events.read_text().splitlines() if events.exists() else []
            for line in lines[seen:]:
                ev = json.loads(line)
                if ev["event"] == "start":
                    current, started = ev["check"], time.time()
                    print(f"[accelerator_check] {current} ...", flush=True)
                else:
                    rec = {k: v for k, v in ev.items() if k not in ("event", "check")}
                    record(ev["check"], rec)
                    todo.remove(ev["check"])
                    print(f"[accelerator_check] {ev['check']}: {rec['status']} in {rec['seconds']:.1f} s  "
                          + (rec.get("result", {}).get("summary", "") if rec["status"] == "passed" else rec.get("error", "")),
                          flush=True)
                    current = None
                    started = time.time()
            seen = len(lines)
            done = proc.poll() is not None
            cap = caps[current] if current else startup_cap
            over = time.time() - started > cap or time.time() > deadline
            if done or over:
                if not done:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                if current is not None:
                    why = "time cap" if time.time() - started > cap else "global budget"
                    tail = log.read_text(errors="replace")[-3000:]
                    status = "timeout" if over else "crashed"
                    msg = (f"exceeded its {why} ({cap:.0f} s)" if over else f"worker exited with code {proc.returncode}")
                    record(current, {"status": status, "error": msg, "log_tail": tail,
                                     "seconds": time.time() - started})
                    print(f"[accelerator_check] {current}: {status}: {msg}", flush=True)
                    todo.remove(current)
                elif todo and done and seen == len(lines):
                    tail = log.read_text(errors="replace")[-3000:]
                    for n in list(todo):
                        record(n, {"status": "crashed", "error": f"worker failed before the check started "
                                   f"(code {proc.returncode})", "log_tail": tail, "seconds": 0.0})
                    todo.clear()
                elif over:  # stuck between checks / at start-up
                    for n in list(todo):
                        record(n, {"status": "timeout", "error": "worker start-up exceeded its cap", "seconds": 0.0})
                    todo.clear()
                break
        save()


def main(argv):
    del argv
    if _WORKER.value:
        return _worker(_WORKER.value.split(","))
    if _SUBSET.value:
        make_subset(pathlib.Path(_SUBSET.value))
        print(f"[accelerator_check] wrote the data subset to {_SUBSET.value}", flush=True)
        return
    t_start = time.time()
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if _TINY.value:
        env["JAX_PLATFORMS"] = "cpu"
        # two virtual CPU devices, so the data-parallel check splits a batch for real
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    info, install = _install_accelerator_jax(env)
    print(f"[accelerator_check] jax install: {install}", flush=True)
    print(f"[accelerator_check] devices: {json.dumps(info)}", flush=True)
    name = _NAME.value or ("cpu-tiny" if _TINY.value else slug(info.get("kind", info.get("backend", "device"))))
    budget = _BUDGET.value if _BUDGET.value is not None else (300.0 if _TINY.value else 420.0)
    deadline = t_start + budget
    names = [n for n in CHECKS if not _ONLY.value or n in _ONLY.value]
    unknown = sorted(set(_ONLY.value) - set(CHECKS))
    if unknown:
        raise app.UsageError(f"unknown checks {unknown}; choose from {list(CHECKS)}")
    caps = {n: _CAP_SCALE.value * CHECKS[n][2 if _TINY.value else 1] for n in CHECKS}
    data = {k: ("present" if _have(k) else ("absent: generated stand-in" if _TINY.value else "absent"))
            for k in ("mnist", "corel5k", "tflite")}
    out_dir = pathlib.Path(_OUT_DIR.value)
    result = {"device": info, "install": install, "tiny": _TINY.value, "data": data, "shared": _SHARED.value,
              "command": " ".join(["python", "experiments/accelerator_check.py"] + sys.argv[1:]),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "budget_s": budget, "caps_s": caps, "tolerances": TOLERANCES, "host": platform.node(),
              "cpus": os.cpu_count(), "loadavg_start": [round(x, 1) for x in os.getloadavg()], "checks": {},
              "total_s": 0.0}
    prev = out_dir / f"{name}.json"
    if _ONLY.value and prev.exists():  # a rerun of some checks keeps the others' results
        with contextlib.suppress(Exception):
            old = json.loads(prev.read_text())
            result["checks"] = {k: v for k, v in old.get("checks", {}).items() if k not in names}
            result["previous_run"] = {"started": old.get("started"), "command": old.get("command")}

    def record(check, rec):
        result["checks"][check] = rec
        save()

    def save():
        result["total_s"] = time.time() - t_start
        result["loadavg_now"] = [round(x, 1) for x in os.getloadavg()]
        _write(result, out_dir, name)

    save()
    with tempfile.TemporaryDirectory(prefix="accel_check_") as tmp:
        log_dir = pathlib.Path(tmp)
        # the 64-bit checks run in their own worker (x64 changes defaults that speed checks must not see)
        for x64 in (True, False):
            group = [n for n in names if CHECKS[n][0] == x64]
            if group:
                _run_group(group, x64, caps, deadline, env, record, save, log_dir)
        result["checks"] = {n: result["checks"][n] for n in CHECKS if n in result["checks"]}
        save()
    print(_markdown(result), flush=True)
    failed = [n for n in names if result["checks"][n]["status"] != "passed"]
    print(f"[accelerator_check] wrote {out_dir / name}.json/.md; {len(names) - len(failed)}/{len(names)} passed"
          + (f"; not passed: {failed}" if failed else ""), flush=True)


if __name__ == "__main__":
    app.run(main)
