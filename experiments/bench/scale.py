r"""Cost against n: streaming linear CCA, approximate KCCA and DCCA epochs; peak memory at the largest n.

    python experiments/bench/scale.py --workdir=results/bench [--cache_dir=/big/disk]

Each (workload, n) runs in a fresh child process (this script with --child), so its peak resident
memory (``VmHWM``) is its own and compilation is excluded by a warm-up at the same shapes. The
linear CCA data (n x (300 + 260) float32, 2.2 GB at n = 1M) is generated once into memory-mapped
``.npy`` files under --cache_dir and streamed from there: bounded memory whatever n. Writes JSON to
--workdir/scale.json and a Markdown table beside it (``scale.md``). ``os.getloadavg()`` is recorded around each
measurement: on a shared machine, a load above the core count inflates the times.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_string("workdir", "results/bench", "Output folder: scale.json and scale.md go there.")
flags.DEFINE_string("cache_dir", "runs/bench_scale_cache", "Where the generated .npy views (2.2 GB at n = 1M) are kept.")
flags.DEFINE_list("cca_sizes", ["10000", "30000", "100000", "300000", "1000000"], "n for streaming linear CCA.")
flags.DEFINE_list("kcca_sizes", ["5000", "20000", "50000", "200000"], "n for approximate KCCA.")
flags.DEFINE_list("kcca_stream_sizes", ["5000", "20000", "50000", "200000"], "n for streamed Nystrom KCCA.")
flags.DEFINE_integer("kcca_chunk", 8192, "Rows per chunk for the streamed Nystrom KCCA.")
flags.DEFINE_list("dcca_sizes", ["10000", "30000", "100000"], "n for a DCCA epoch.")
flags.DEFINE_list("workloads", ["cca", "kcca", "kcca_stream", "dcca"], "Which workloads to run.")
flags.DEFINE_integer("d_v", 300, "Visual dimension.")
flags.DEFINE_integer("d_s", 260, "Semantic dimension.")
flags.DEFINE_integer("chunk_size", 65536, "Rows per streaming chunk.")
flags.DEFINE_integer("kcca_landmarks", 1000, "Nystrom landmarks for the approximate KCCA.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions per point (the minimum is reported).")
flags.DEFINE_string("child", None, "Internal: run one measurement ('cca', 'kcca', 'dcca') and print JSON.")
flags.DEFINE_integer("n", 0, "Internal: n for --child.")
FLAGS = flags.FLAGS

LATENT = 20


# ------------------------------------------------------------------------------------------ data
def _views_path(cache: pathlib.Path, n: int, d_v: int, d_s: int):
    return cache / f"views_{n}_{d_v}_{d_s}_v.npy", cache / f"views_{n}_{d_v}_{d_s}_s.npy"


def ensure_views(cache: pathlib.Path, n: int, d_v: int, d_s: int, chunk: int = 50_000):
    """Writes two float32 .npy files of n correlated rows, chunk by chunk (bounded memory)."""
    import numpy as np

    pv, ps = _views_path(cache, n, d_v, d_s)
    if pv.exists() and ps.exists():
        return pv, ps
    cache.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((LATENT, d_v)).astype(np.float32) / np.sqrt(LATENT)
    b = rng.standard_normal((LATENT, d_s)).astype(np.float32) / np.sqrt(LATENT)
    tmp_v, tmp_s = pv.with_suffix(".tmp.npy"), ps.with_suffix(".tmp.npy")
    mv = np.lib.format.open_memmap(tmp_v, mode="w+", dtype=np.float32, shape=(n, d_v))
    ms = np.lib.format.open_memmap(tmp_s, mode="w+", dtype=np.float32, shape=(n, d_s))
    for i in range(0, n, chunk):
        j = min(i + chunk, n)
        r = np.random.default_rng(1 + i // chunk)
        z = r.standard_normal((j - i, LATENT), dtype=np.float32)
        mv[i:j] = z @ a + r.standard_normal((j - i, d_v), dtype=np.float32) + 3.0
        ms[i:j] = z @ b + r.standard_normal((j - i, d_s), dtype=np.float32) - 1.0
    mv.flush()
    ms.flush()
    del mv, ms
    os.replace(tmp_v, pv)
    os.replace(tmp_s, ps)
    return pv, ps


# -------------------------------------------------------------------------------------- children
def _rss_mb() -> float:
    # VmHWM: this program's own peak resident set. (ru_maxrss is inherited across fork + exec, so a
    # child would report its parent's peak.)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def child_cca(n: int) -> dict:
    import jax

    from dcca_jax.models.streaming import fit_from_stats, stats_from_npy

    pv, ps = ensure_views(pathlib.Path(FLAGS.cache_dir), int(FLAGS.cca_sizes[-1]), FLAGS.d_v, FLAGS.d_s)
    k = 20

    def stats(stop):
        return stats_from_npy(pv, ps, chunk_size=FLAGS.chunk_size, stop=stop)

    def solve(st):
        p = fit_from_stats(st, n_components=k, ridge_v=1e-3, ridge_s=1e-3)
        jax.block_until_ready(p.proj_v)

    solve(stats(min(n, FLAGS.chunk_size)))  # warm-up: compiles the chunk/bucket shapes and the solve
    base = _rss_mb()
    st = stats(n)
    t_stats = _timed(lambda: stats(n), FLAGS.repeats)
    t_solve = _timed(lambda: solve(st), FLAGS.repeats)
    return {"seconds": t_stats + t_solve, "stats_seconds": t_stats, "solve_seconds": t_solve,
            "rss_after_warmup_mb": base,
            "note": f"streamed from float32 .npy (mmap), chunk {FLAGS.chunk_size}, k={k}; "
                    f"statistics {t_stats:.3f} s (O(n d^2)) + solve {t_solve:.3f} s (O(d^3))"}


def child_kcca(n: int) -> dict:
    if importlib.util.find_spec("dcca_jax.models.kcca") is None:
        return {"skipped": "dcca_jax.models.kcca is not on this branch (kernel CCA is written on branch kcca)"}
    import jax
    import numpy as np

    from dcca_jax.models.kcca import KernelCCA

    pv, ps = ensure_views(pathlib.Path(FLAGS.cache_dir), int(FLAGS.cca_sizes[-1]), FLAGS.d_v, FLAGS.d_s)
    x_v = np.asarray(np.load(pv, mmap_mode="r")[:n])
    x_s = np.asarray(np.load(ps, mmap_mode="r")[:n])
    m = FLAGS.kcca_landmarks

    def run(rows):
        model = KernelCCA(n_components=20, solver="nystrom", n_landmarks=min(m, rows - 1), chunk_size=4096)
        model.fit(x_v[:rows], x_s[:rows])
        jax.block_until_ready(model.correlations if hasattr(model, "correlations") else jax.tree.leaves(model.state))

    run(min(n, 2 * m))
    base = _rss_mb()
    secs = _timed(lambda: run(n), FLAGS.repeats)
    return {"seconds": secs, "rss_after_warmup_mb": base,
            "note": f"KernelCCA(solver='nystrom', n_landmarks={m}), RBF with median bandwidth, k=20, float32"}


def child_kcca_stream(n: int) -> dict:
    import jax
    import numpy as np

    from dcca_jax.models.kcca import KernelCCA, nystrom_features
    from dcca_jax.models.streaming import fit_streaming_cca

    pv, ps = ensure_views(pathlib.Path(FLAGS.cache_dir), int(FLAGS.cca_sizes[-1]), FLAGS.d_v, FLAGS.d_s)
    m = FLAGS.kcca_landmarks
    # Landmarks, whiteners and median bandwidths from KernelCCA on the first 5000 rows; all n rows are
    # then streamed through the Nystrom maps (O(chunk * m + m^2) memory).
    head = 5000
    base_model = KernelCCA(n_components=20, solver="nystrom", n_landmarks=m, chunk_size=4096)
    base_model.fit(np.asarray(np.load(pv, mmap_mode="r")[:head]), np.asarray(np.load(ps, mmap_mode="r")[:head]))
    st, (spec_v, spec_s) = base_model.state, base_model.specs

    def fmap(a, b):
        return (nystrom_features(a, st["landmarks_v"], st["whitener_v"], spec=spec_v, chunk_size=4096),
                nystrom_features(b, st["landmarks_s"], st["whitener_s"], spec=spec_s, chunk_size=4096))

    x_v, x_s = np.load(pv, mmap_mode="r"), np.load(ps, mmap_mode="r")

    def run(rows):
        p = fit_streaming_cca(x_v[:rows], x_s[:rows], feature_map=fmap, n_components=20, ridge_v=1e-3,
                              ridge_s=1e-3, chunk_size=FLAGS.kcca_chunk)
        jax.block_until_ready(p.proj_v)

    run(min(n, FLAGS.kcca_chunk))
    base = _rss_mb()
    secs = _timed(lambda: run(n), FLAGS.repeats)
    return {"seconds": secs, "rss_after_warmup_mb": base,
            "note": f"Nystrom (m={m}) features streamed in chunks of {FLAGS.kcca_chunk} into fit_streaming_cca, k=20, float32"}


def child_dcca(n: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dcca_jax.models import dcca
    from dcca_jax.models.towers import make_tower

    batch = 1000
    cfg = dcca.dcca_config("paper")
    tv = make_tower(hidden=(1024, 1024), out_dim=50, activation="sigmoid")
    ts = make_tower(hidden=(1024, 1024), out_dim=50, activation="sigmoid")
    pv, ps = ensure_views(pathlib.Path(FLAGS.cache_dir), int(FLAGS.cca_sizes[-1]), FLAGS.d_v, FLAGS.d_s)
    x_v = jnp.asarray(np.load(pv, mmap_mode="r")[:n])
    x_s = jnp.asarray(np.load(ps, mmap_mode="r")[:n])
    var_v = tv.init(jax.random.key(0), x_v[:2])
    var_s = ts.init(jax.random.key(1), x_s[:2])
    state = dcca.DCCATrainState.create(
        apply_fn=None, params={"visual": var_v["params"], "semantic": var_s["params"]},
        tx=dcca.make_optimizer(cfg), batch_stats={},
    )
    step = dcca.make_train_step(tv, ts, cfg)
    gather = jax.jit(lambda a, b, idx: (a[idx], b[idx]))
    rng = jax.random.key(0)
    steps = n // batch
    state, m = step(state, gather(x_v, x_s, jnp.arange(batch)), rng)  # warm-up (compile)
    jax.block_until_ready(m["loss"])
    base = _rss_mb()
    holder = {"state": state}

    def epoch():
        st = holder["state"]
        perm = jax.random.permutation(jax.random.key(1), n)
        for i in range(steps):
            st, m = step(st, gather(x_v, x_s, perm[i * batch:(i + 1) * batch]), rng)
        jax.block_until_ready(m["loss"])
        holder["state"] = st

    secs = _timed(epoch, FLAGS.repeats)
    return {"seconds": secs, "rss_after_warmup_mb": base,
            "note": "towers 300/260-1024-1024-50 sigmoid, Adam, batch 1000, float32, trace-norm loss"}


CHILDREN = {"cca": child_cca, "kcca": child_kcca, "kcca_stream": child_kcca_stream, "dcca": child_dcca}


def run_child() -> None:
    load0 = os.getloadavg()
    res = CHILDREN[FLAGS.child](FLAGS.n)
    res.update(workload=FLAGS.child, n=FLAGS.n, peak_rss_mb=_rss_mb(), loadavg_before=load0, loadavg_after=os.getloadavg())
    if "seconds" in res:
        res["us_per_sample"] = 1e6 * res["seconds"] / FLAGS.n
    sys.stdout.write("RESULT " + json.dumps(res) + "\n")


# --------------------------------------------------------------------------------------- parent
def _spawn(workload: str, n: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), f"--child={workload}", f"--n={n}"]
    for name in ("cache_dir", "d_v", "d_s", "chunk_size", "repeats", "kcca_landmarks", "kcca_chunk"):
        cmd.append(f"--{name}={getattr(FLAGS, name)}")
    cmd.append("--cca_sizes=" + ",".join(FLAGS.cca_sizes))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"workload": workload, "n": n, "error": proc.stderr[-1500:]}


def _markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"# Scale benchmark ({meta['platform']}, {meta['cpu_count']} CPUs, jax {meta['jax']} on {meta['backend']})",
        "",
        "| workload | n | seconds | us / sample | peak RSS (MB) | load avg (1 min) | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if "seconds" in r:
            lines.append(
                f"| {r['workload']} | {r['n']:,} | {r['seconds']:.3f} | {r['us_per_sample']:.2f} | "
                f"{r['peak_rss_mb']:.0f} | {r['loadavg_before'][0]:.1f} | {r.get('note', '')} |"
            )
        else:
            lines.append(f"| {r['workload']} | {r['n']:,} | - | - | - | - | {r.get('skipped') or 'error: ' + r.get('error', '')[-200:].replace(chr(10), ' ')} |")
    lines += ["", "Per-sample cost ratio (largest n / smallest n; 1.0 = linear in n):", ""]
    for w in sorted({r["workload"] for r in results}):
        rs = [r for r in results if r["workload"] == w and "us_per_sample" in r]
        if len(rs) >= 2:
            lines.append(f"- {w}: {rs[-1]['us_per_sample'] / rs[0]['us_per_sample']:.2f} (n {rs[0]['n']:,} -> {rs[-1]['n']:,})")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if FLAGS.child:
        run_child()
        return
    import jax

    out = pathlib.Path(FLAGS.workdir) / "scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    sizes = {"cca": FLAGS.cca_sizes, "kcca": FLAGS.kcca_sizes, "kcca_stream": FLAGS.kcca_stream_sizes,
             "dcca": FLAGS.dcca_sizes}
    ensure_views(pathlib.Path(FLAGS.cache_dir), int(FLAGS.cca_sizes[-1]), FLAGS.d_v, FLAGS.d_s)
    meta = {
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
        "backend": jax.default_backend(), "d_v": FLAGS.d_v, "d_s": FLAGS.d_s, "chunk_size": FLAGS.chunk_size,
        "repeats": FLAGS.repeats, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    results = []
    for w in FLAGS.workloads:
        for n in map(int, sizes[w]):
            results.append(_spawn(w, n))
            out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
            if results[-1].get("skipped"):
                break
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    out.with_suffix(".md").write_text(_markdown(results, meta))


if __name__ == "__main__":
    app.run(main)
