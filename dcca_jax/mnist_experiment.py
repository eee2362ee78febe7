"""The MNIST left/right halves benchmark (Andrew et al. 2013): linear CCA, KCCA and DCCA in one table.

Each 28x28 digit is split into its left and right 14 columns (392 pixels each, scaled to [0, 1]); the
two halves are the two views. Every model is fitted on the training images (DCCA holds out the last
``n_val`` of them for early stopping) and scored by the total canonical correlation of ``n_components``
dimensions on the 10,000 test images, using the projections fitted on training data.

Published test totals (50 dims): linear CCA about 28, KCCA about 33, DCCA 39.7 (Andrew et al. 2013).
"""
from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from dcca_jax.models.base import paired_correlations
from dcca_jax.models.cca import LinearCCA
from dcca_jax.models.dcca import DeepCCA
from dcca_jax.data.mnist import fit_kcca_mnist, load_mnist_halves

__all__ = ["run_mnist_halves", "results_markdown"]


def _total(model, x_v, x_s) -> float:
    z_v, z_s = model.transform(x_v, x_s)
    return float(np.sum(np.asarray(paired_correlations(z_v, z_s))))


def _row(name: str, objective: str, model, data, fit_s: float, **extra) -> dict:
    tr_l, tr_r, te_l, te_r = data
    row = {
        "model": name,
        "objective": objective,
        "train_total": _total(model, tr_l, tr_r),
        "test_total": _total(model, te_l, te_r),
        "fit_s": fit_s,
        **extra,
    }
    logging.info("mnist_halves %s", row)
    return row


def _kcca_row(config, workdir: pathlib.Path) -> dict:
    """KCCA through the kernel-CCA helper's :func:`dcca_jax.data.mnist.fit_kcca_mnist` (Nystrom, refit on all 60k)."""
    out = fit_kcca_mnist(config.data_path, config=config.kcca, n_val=int(config.n_val), refit_full=True,
                         save_dir=workdir / "kcca" / "model")
    row = {
        "model": "KCCA",
        "objective": f"kernel CCA ({config.kcca.solver}, {config.kcca.n_landmarks} landmarks)",
        "train_total": out["train_total"],
        "test_total": out["test_total"],
        "fit_s": out["final_fit_seconds"],
        "val_total": out["val_total"],
    }
    logging.info("mnist_halves %s", row)
    return row


def run_mnist_halves(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Fits the configured models on the MNIST halves and writes ``results.json`` and ``results.md``.

    Args:
      config: see ``experiments/configs/mnist_halves.py`` (data_path, workdir, n_val, n_components,
        linear_ridge, run_kcca/kcca, dcca (a DeepCCA config) and objectives (one DCCA per objective)).

    Returns:
      ``{"rows": [...], "config": ...}`` as written to ``workdir/results.json``.
    """
    d = load_mnist_halves(config.data_path)
    data = (d["train_v"], d["train_s"], d["test_v"], d["test_s"])
    k = int(config.n_components)
    rows = []
    if config.run_linear:
        t0 = time.time()
        lin = LinearCCA(n_components=k, ridge_v=config.linear_ridge, ridge_s=config.linear_ridge).fit(data[0], data[1])
        rows.append(_row("linear CCA", f"closed form, ridge {config.linear_ridge:g}", lin, data, time.time() - t0))
    workdir = pathlib.Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.run_kcca:
        rows.append(_kcca_row(config, workdir))
    tr_l, tr_r = data[0], data[1]
    n_val = int(config.n_val)
    fit_v, fit_s = tr_l[:-n_val], tr_r[:-n_val]
    val = (tr_l[-n_val:], tr_r[-n_val:])
    for objective in config.objectives:
        cfg = ml_collections.ConfigDict(config.dcca.to_dict())
        cfg.objective = objective
        if objective == "top_k":
            cfg.k = k
        model = DeepCCA(cfg).fit(fit_v, fit_s, validation=val, workdir=workdir / f"dcca_{objective}")
        fit_time = model.fit_seconds  # includes the time of earlier runs this one resumed
        epochs = len(model.history)
        model.save(workdir / f"dcca_{objective}" / "model")
        rows.append(_row(
            "DCCA", objective, model, data, fit_time,
            epochs=epochs, best_step=model.best_step, val_total=model.best_val_corr,
            s_per_epoch=fit_time / max(epochs, 1),
        ))
        _write(workdir, rows, config)
    return _write(workdir, rows, config)


def _write(workdir: pathlib.Path, rows, config) -> dict:
    result = {"rows": rows, "config": json.loads(config.to_json())}
    (workdir / "results.json").write_text(json.dumps(result, indent=2))
    (workdir / "results.md").write_text(results_markdown(rows))
    return result


def results_markdown(rows) -> str:
    """The results table in Markdown (train and test totals, fit time, objective)."""
    lines = [
        "| model | objective | train total | test total | fit time (s) | epochs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['objective']} | {r.get('train_total', float('nan')):.2f} | "
            f"{r.get('test_total', float('nan')):.2f} | {r.get('fit_s', float('nan')):.1f} | {r.get('epochs', '-')} |"
        )
    return "\n".join(lines) + "\n"
