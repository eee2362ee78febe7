r"""Benchmark: linear CCA fit (n=5000, 300 x 260 dims, 20 components) against its peers, one run.

Peers run side by side on the same data in the same process: a plain numpy closed form,
cca-zoo's linear ``CCA`` and scikit-learn's ``CCA`` (peers are only in the benchmark environment,
``make bench``). Reports steady-state fit time (median of repeats), jit compile time separately,
time ratios and the agreement of the summed training correlations.

  .venv-bench/bin/python experiments/bench/cca.py --workdir=results/bench
"""
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from dcca_jax import fit_linear_cca, paired_correlations
from dcca_jax.data.synthetic import correlated_views

_WORKDIR = flags.DEFINE_string("workdir", "results/bench", "Output folder: cca.json and cca.md go there.")
_N = flags.DEFINE_integer("n", 5000, "Samples.")
_K = flags.DEFINE_integer("k", 20, "Components.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed repeats per method (sklearn: 1).")
_SKIP_SKLEARN = flags.DEFINE_bool("skip_sklearn", False, "Skip scikit-learn (slow: about 10 s per fit).")


def _timeit(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), out


def _numpy_cca(x_v, x_s, k):
    n, d_v = x_v.shape
    z = np.concatenate([x_v - x_v.mean(0), x_s - x_s.mean(0)], axis=1)
    c = z.T @ z / (n - 1)
    l_v = np.linalg.cholesky(c[:d_v, :d_v])
    l_s = np.linalg.cholesky(c[d_v:, d_v:])
    t = np.linalg.solve(l_s, np.linalg.solve(l_v, c[:d_v, d_v:]).T).T
    u, d, vt = np.linalg.svd(t, full_matrices=False)
    p = np.linalg.solve(l_v.T, u[:, :k])
    q = np.linalg.solve(l_s.T, vt[:k].T)
    return p, q, d[:k]


def _corr_sum(z_v, z_s):
    return float(np.sum(np.abs(paired_correlations(np.asarray(z_v, np.float64), np.asarray(z_s, np.float64)))))


def main(argv):
    del argv
    n, k = _N.value, _K.value
    x_v, x_s = correlated_views(n, 300, 260, latent=30, noise=1.0, seed=0)
    rows = []

    # dcca_jax (float64 and float32); first call = compile + run.
    for dtype in (np.float64, np.float32):
        a, b = x_v.astype(dtype), x_s.astype(dtype)
        if dtype == np.float64:
            jax.config.update("jax_enable_x64", True)
        t0 = time.perf_counter()
        jax.block_until_ready(fit_linear_cca(a, b, n_components=k))
        first = time.perf_counter() - t0
        med, best, params = _timeit(lambda: jax.block_until_ready(fit_linear_cca(a, b, n_components=k)), _REPEATS.value)
        z_v = (x_v - x_v.mean(0)) @ np.asarray(params.proj_v, np.float64)
        z_s = (x_s - x_s.mean(0)) @ np.asarray(params.proj_s, np.float64)
        rows.append({"method": f"dcca_jax fit_linear_cca ({np.dtype(dtype).name})", "median_s": med, "best_s": best,
                     "compile_s": max(first - med, 0.0), "sum_corr": _corr_sum(z_v, z_s)})

    med, best, (p, q, d) = _timeit(lambda: _numpy_cca(x_v, x_s, k), _REPEATS.value)
    rows.append({"method": "numpy closed form (float64)", "median_s": med, "best_s": best,
                 "sum_corr": _corr_sum((x_v - x_v.mean(0)) @ p, (x_s - x_s.mean(0)) @ q)})

    try:
        from cca_zoo.linear import CCA as ZooCCA

        med, best, zoo = _timeit(lambda: ZooCCA(n_components=k).fit([x_v, x_s]), _REPEATS.value)
        z = zoo.transform([x_v, x_s])
        rows.append({"method": "cca-zoo linear CCA", "median_s": med, "best_s": best, "sum_corr": _corr_sum(z[0], z[1])})
    except ImportError as e:
        rows.append({"method": "cca-zoo linear CCA", "skipped": f"not installed ({e})"})

    if not _SKIP_SKLEARN.value:
        try:
            from sklearn.cross_decomposition import CCA as SkCCA

            med, best, sk = _timeit(lambda: SkCCA(n_components=k, max_iter=500).fit(x_v, x_s), 1)
            z_v, z_s = sk.transform(x_v, x_s)
            rows.append({"method": "scikit-learn CCA", "median_s": med, "best_s": best, "sum_corr": _corr_sum(z_v, z_s)})
        except ImportError as e:
            rows.append({"method": "scikit-learn CCA", "skipped": f"not installed ({e})"})

    ref = next(r for r in rows if r["method"].startswith("numpy"))
    ours = rows[0]
    for r in rows:
        if "median_s" in r:
            r["time_vs_dcca_jax_f64"] = r["median_s"] / ours["median_s"]
            r["sum_corr_diff_vs_numpy"] = r["sum_corr"] - ref["sum_corr"]
    result = {
        "benchmark": "linear CCA fit", "n": n, "d_v": 300, "d_s": 260, "k": k,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                    "jax": jax.__version__, "backend": jax.default_backend()},
        "rows": rows,
    }
    out = pathlib.Path(_WORKDIR.value) / "cca.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    lines = [f"Linear CCA fit, n={n}, 300 x 260 dims, {k} components (load avg {os.getloadavg()[0]:.2f})", "",
             "| method | median fit (s) | jit compile (s) | x dcca_jax f64 | sum of corr. | diff vs numpy |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "median_s" not in r:
            lines.append(f"| {r['method']} | {r['skipped']} | | | | |")
            continue
        comp = f"{r['compile_s']:.2f}" if "compile_s" in r else "-"
        lines.append(f"| {r['method']} | {r['median_s']:.4f} | {comp} | {r['time_vs_dcca_jax_f64']:.2f} | "
                     f"{r['sum_corr']:.6f} | {r['sum_corr_diff_vs_numpy']:+.1e} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
