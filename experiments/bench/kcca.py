r"""Benchmark: exact kernel CCA fit against cca-zoo's KCCA, side by side in one run.

Same data (generated views with a quadratic relation, ``--n`` training + ``--n_test`` held-out rows),
same RBF kernels (bandwidths from the median heuristic, passed to both: cca-zoo's
``gamma = 1 / (2 sigma^2)``), same regularisation (cca-zoo's ``shrinkage = c`` is
``(1-c) S + c I``, i.e. our ``ridge = c / (1 - c)``: identical directions and correlations), same number
of components. Reports fit time (dcca_jax: first call including jit compile, and a second call),
the time ratio, the training and held-out per-component correlations of both, and their largest
difference. cca-zoo (and scikit-learn, which it uses for the kernels) exist only in the bench venv.

  .venv-bench/bin/python experiments/bench/kcca.py --n=5000 --workdir=results/bench   # -> kcca_n5000.json

cca-zoo eigendecomposes each ``n x n`` kernel and then a ``2n x 2n`` generalised problem, so at the
default ``n = 5000`` it needs a ``10,000 x 10,000`` eigendecomposition: tens of minutes on 2 busy cores.
"""
import json
import os
import pathlib
import platform
import time

import jax
import numpy as np
from absl import app, flags

jax.config.update("jax_enable_x64", True)

from dcca_jax.models.base import paired_correlations  # noqa: E402
from dcca_jax.data.synthetic import correlated_views  # noqa: E402
from dcca_jax.models.kcca import KernelCCA, median_bandwidth  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "results/bench", "Output folder: kcca_n<n>.json and .md go there.")
_N = flags.DEFINE_integer("n", 5000, "Training samples.")
_N_TEST = flags.DEFINE_integer("n_test", 1000, "Held-out samples.")
_K = flags.DEFINE_integer("k", 10, "Components.")
_SHRINKAGE = flags.DEFINE_float("shrinkage", 0.01, "cca-zoo shrinkage c; our ridge is c / (1 - c).")
_SKIP_ZOO = flags.DEFINE_bool("skip_zoo", False, "Skip cca-zoo.")


def _corr(z_v, z_s):
    return np.asarray(paired_correlations(np.asarray(z_v, np.float64), np.asarray(z_s, np.float64)))


def main(argv):
    del argv
    n, k, c = _N.value, _K.value, _SHRINKAGE.value
    x_v, x_s = correlated_views(n + _N_TEST.value, 20, 20, latent=5, noise=0.5, nonlinear=True, seed=0)
    a_v, a_s, b_v, b_s = x_v[:n], x_s[:n], x_v[n:], x_s[n:]
    sig_v, sig_s = median_bandwidth(a_v), median_bandwidth(a_s)
    ridge = c / (1.0 - c)
    load_start = os.getloadavg()
    rows = []

    cfg = dict(n_components=k, solver="exact", bandwidth_v=sig_v, bandwidth_s=sig_s, ridge_v=ridge, ridge_s=ridge)
    t0 = time.perf_counter()
    model = KernelCCA(**cfg).fit(a_v, a_s)
    jax.block_until_ready(model.correlations)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = KernelCCA(**cfg).fit(a_v, a_s)
    jax.block_until_ready(model.correlations)
    second = time.perf_counter() - t0
    rows.append({"method": "dcca_jax KernelCCA exact (float64)", "fit_s": second, "first_fit_incl_compile_s": first,
                 "train_corr": _corr(*model.transform(a_v, a_s)).tolist(),
                 "held_out_corr": _corr(*model.transform(b_v, b_s)).tolist()})

    if not _SKIP_ZOO.value:
        try:
            from cca_zoo.nonparametric import KCCA

            zoo = KCCA(n_components=k, kernel="rbf", gamma=[1 / (2 * sig_v**2), 1 / (2 * sig_s**2)], shrinkage=c)
            t0 = time.perf_counter()
            zoo.fit([a_v, a_s])
            fit_s = time.perf_counter() - t0
            zt, zh = zoo.transform([a_v, a_s]), zoo.transform([b_v, b_s])
            rows.append({"method": "cca-zoo KCCA (numpy float64)", "fit_s": fit_s,
                         "train_corr": _corr(*zt).tolist(), "held_out_corr": _corr(*zh).tolist()})
        except ImportError as e:
            rows.append({"method": "cca-zoo KCCA", "skipped": f"not installed ({e})"})

    ours = rows[0]
    for r in rows:
        if "fit_s" in r:
            r["time_vs_dcca_jax"] = r["fit_s"] / ours["fit_s"]
            r["train_total"] = float(np.sum(r["train_corr"]))
            r["held_out_total"] = float(np.sum(r["held_out_corr"]))
            r["max_abs_held_out_diff_vs_dcca_jax"] = float(
                np.max(np.abs(np.abs(r["held_out_corr"]) - np.abs(ours["held_out_corr"]))))
    result = {
        "benchmark": "exact kernel CCA fit", "n": n, "n_test": _N_TEST.value, "d_v": 20, "d_s": 20, "k": k,
        "kernel": "rbf", "bandwidths": [sig_v, sig_s], "zoo_shrinkage": c, "ridge": ridge,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_start": load_start,
                    "loadavg_end": os.getloadavg(), "jax": jax.__version__, "backend": jax.default_backend()},
        "rows": rows,
    }
    out = pathlib.Path(_WORKDIR.value) / f"kcca_n{n}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    lines = [f"Exact RBF kernel CCA, n={n} train / {_N_TEST.value} held out, 20 x 20 dims, {k} components, "
             f"ridge {ridge:.4g} (= cca-zoo shrinkage {c}); load avg {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f} "
             f"on {os.cpu_count()} CPUs", "",
             "| method | fit (s) | x dcca_jax | train total | held-out total | max held-out diff |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "fit_s" not in r:
            lines.append(f"| {r['method']} | {r['skipped']} | | | | |")
            continue
        lines.append(f"| {r['method']} | {r['fit_s']:.2f} | {r['time_vs_dcca_jax']:.2f} | {r['train_total']:.4f} | "
                     f"{r['held_out_total']:.4f} | {r['max_abs_held_out_diff_vs_dcca_jax']:.2e} |")
    if "first_fit_incl_compile_s" in ours:
        lines.append(f"\ndcca_jax first fit including jit compile: {ours['first_fit_incl_compile_s']:.2f} s")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
