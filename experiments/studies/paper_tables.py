"""The paper's tables and figures as studies over a (cached) pipeline run.

Every study writes into its workdir a JSON file with the numbers, the full config and package
versions, a Markdown table and, where the paper has a figure, a PNG.

- :func:`correlation_study`: Table 1 (CCS top-1..K, training and held-out side by side).
- :func:`recommendation_study`: Table 2 (per-image AP/AR/AF and per-word P/R/F1/N+ for every method).
- :func:`dimension_sweep`: Figure 2 (AF against the common-space dimension; AP-AR curves).
- :func:`examples_gallery`: Figure 3 (images with ground-truth and recommended tags, mismatches in red).
- :func:`benchmark_models`: CCA vs KCCA vs DCCA fit time, transform time, held-out correlation.
"""
from __future__ import annotations

import copy
import json
import os
import pathlib
import time
from typing import Any, Sequence

import numpy as np

from dcca_jax import report
from dcca_jax.tagging import recommend
from dcca_jax.models.base import correlation_score_curve
from dcca_jax._io import atomic_write_text, jsonable, package_versions
from dcca_jax.pipeline import MODEL_TITLES, Pipeline, model_classes

__all__ = [
    "correlation_study",
    "recommendation_study",
    "dimension_sweep",
    "examples_gallery",
    "benchmark_models",
]


def _write(workdir: pathlib.Path, name: str, payload: dict, markdown: str) -> None:
    atomic_write_text(workdir / f"{name}.json", json.dumps(jsonable(payload), indent=2))
    atomic_write_text(workdir / f"{name}.md", markdown + "\n")


def correlation_study(config, workdir: str | os.PathLike, *, progress: bool = False) -> dict:
    """Table 1: the cross-modal correlation score of CCA, KCCA and DCCA on fit, validation and test."""
    p = Pipeline(config, workdir, progress=progress)
    table = p.correlation_table()
    out = {"table1_correlation": table, "config": config, "versions": package_versions()}
    _write(p.workdir, "table1", out, report.table1_markdown(table))
    report.plot_correlation({"table1_correlation": table}, p.workdir / "table1_ccs.png")
    return jsonable(out)


def recommendation_study(config, workdir: str | os.PathLike, *, progress: bool = False) -> dict:
    """Table 2: every baseline and DMFR&model on the same test rows, both metric families."""
    p = Pipeline(config, workdir, progress=progress)
    table = p.stage_recommend()
    out = {"table2_recommendation": table, "config": config, "versions": package_versions()}
    _write(p.workdir, "table2", out, report.table2_markdown(table))
    report.plot_ap_ar({"table2_recommendation": table}, p.workdir / "ap_ar.png")
    return jsonable(out)


def dimension_sweep(config, workdir: str | os.PathLike, *, dims: Sequence[int] = (10, 20, 50, 100, 150),
                    models: Sequence[str] = ("cca", "dcca"), progress: bool = False) -> dict:
    """Figure 2: per-image AF (and per-word F1) against the common-space dimension for DMFR&CCA/DCCA.

    Dimensions larger than the views allow (``min(d_v, d_s)`` for CCA) are skipped and listed.
    Each dimension keeps its own model stages (``stages/model_cca@d50`` ...) beside the shared
    feature stages, so the sweep resumes too.
    """
    base = Pipeline(config, workdir, progress=progress)
    views = base.views()
    max_dim = min(views.v["fit"].shape[1], views.s["fit"].shape[1])
    af: dict[str, dict[int, float]] = {MODEL_TITLES[m]: {} for m in models}
    f1: dict[str, dict[int, float]] = {MODEL_TITLES[m]: {} for m in models}
    curves: dict[str, dict[int, Any]] = {MODEL_TITLES[m]: {} for m in models}
    skipped = []
    for d in dims:
        if d > max_dim:
            skipped.append({"dim": int(d), "reason": f"larger than min(d_v, d_s) = {max_dim}"})
            continue
        cfg = copy.deepcopy(config)
        cfg.cca.n_components = int(d)
        cfg.kcca.n_components = int(d)
        cfg.dcca.towers.out_dim = int(d)
        if cfg.dcca.get("k") is not None and cfg.dcca.k > d:
            cfg.dcca.k = int(d)
        p = Pipeline(cfg, workdir, progress=progress, variant=f"d{d}")
        for m in models:
            r = p.recommend_with_model(m)
            af[MODEL_TITLES[m]][int(d)] = r["metrics"]["per_image/AF"]
            f1[MODEL_TITLES[m]][int(d)] = r["metrics"]["per_word/F1"]
            curves[MODEL_TITLES[m]][int(d)] = r["ap_ar_curve"]
    out = {"af": af, "per_word_f1": f1, "ap_ar_curves": curves, "skipped": skipped, "config": config,
           "versions": package_versions()}
    lines = ["| method | " + " | ".join(f"d={d}" for d in dims if d <= max_dim) + " |",
             "|---|" + "---|" * sum(d <= max_dim for d in dims)]
    for m, pts in af.items():
        lines.append(f"| {m} per-image AF | " + " | ".join(f"{pts[d]:.3f}" for d in dims if d <= max_dim) + " |")
    for m, pts in f1.items():
        lines.append(f"| {m} per-word F1 | " + " | ".join(f"{pts[d]:.3f}" for d in dims if d <= max_dim) + " |")
    if skipped:
        lines.append("\nSkipped: " + ", ".join(f"d={s['dim']} ({s['reason']})" for s in skipped))
    _write(base.workdir, "sweep_dims", out, "\n".join(lines))
    report.plot_sweep(af, base.workdir / "fig2_af_vs_dim.png")
    largest = max((d for d in dims if d <= max_dim), default=None)
    if largest is not None:
        fake = {"table2_recommendation": {m: {"ap_ar_curve": c[largest]} for m, c in curves.items()}}
        report.plot_ap_ar(fake, base.workdir / f"fig2_ap_ar_d{largest}.png")
    return jsonable(out)


def examples_gallery(config, workdir: str | os.PathLike, *, model: str = "dcca", n_images: int = 12,
                     progress: bool = False) -> dict:
    """Figure 3: test images with ground truth and DMFR&<model> recommendations (mismatches in red).

    Images are picked to span the per-image F-measure (worst to best), as the paper's figure does.
    """
    p = Pipeline(config, workdir, progress=progress)
    data, rows = p.stage_data(), p.rows()
    r = p.recommend_with_model(model)
    scores = r["scores"]
    n_tags = int(p.config.recommend.n_tags)  # resolved from the data
    top = np.asarray(recommend.recommend_top_n(scores, n=n_tags, prior=recommend.tag_prior(p.views().labels["train"]),
                                               fill=p.config.recommend.get("fill", "prior")))
    vocab = data["dataset"].vocabulary
    test = data["test"]
    items = []
    for qi, row in enumerate(rows["test"]):
        truth = list(test.tags[row])
        rec = [vocab[j] for j in top[qi]]
        hit = len(set(truth) & set(rec))
        prec, recall = hit / max(len(rec), 1), hit / max(len(truth), 1)
        f = 0.0 if hit == 0 else 2 * prec * recall / (prec + recall)
        path = None if test.image_paths is None else str(test.image_paths[row])
        items.append({"id": test.ids[row], "path": path, "truth": truth, "recommended": rec, "f": f})
    if items and items[0]["path"] is None:
        raise ValueError("the gallery needs images; this dataset has precomputed features only.")
    order = sorted(range(len(items)), key=lambda i: (items[i]["f"], items[i]["id"]))
    pick = [order[int(round(j))] for j in np.linspace(0, len(order) - 1, min(n_images, len(order)))]
    chosen = [items[i] for i in pick]
    out_dir = p.workdir / "gallery"
    html_path, png_path = report.gallery(chosen, out_dir, title=f"{MODEL_TITLES[model]} recommendations")
    out = {"items": chosen, "html": str(html_path), "png": str(png_path), "config": config,
           "versions": package_versions()}
    atomic_write_text(out_dir / "gallery.json", json.dumps(jsonable(out), indent=2))
    return jsonable(out)


def benchmark_models(config, workdir: str | os.PathLike, *, models: Sequence[str] = ("cca", "kcca", "dcca"),
                     repeats: int = 3, progress: bool = False) -> dict:
    """CCA vs KCCA vs DCCA on the same DMFR views: fit time, transform time, held-out correlation.

    Models are fitted afresh here (not read from the cache): fit time is the median of ``repeats``
    fits for CCA/KCCA and one fit for DCCA (its first epoch includes jit compilation, reported as is).
    """
    p = Pipeline(config, workdir, progress=progress)
    views = p.views()
    classes = model_classes()
    k = int(p.config.eval.ccs_top_k)
    rows = []
    for m in models:
        fits, model = [], None
        for _ in range(1 if m == "dcca" else repeats):
            model = classes[m](p.config[m])  # sizes resolved from the data
            t0 = time.perf_counter()
            if m == "dcca":
                model.fit(views.v["fit"], views.s["fit"], validation=(views.v["val"], views.s["val"]))
            else:
                model.fit(views.v["fit"], views.s["fit"])
            fits.append(time.perf_counter() - t0)
        model.transform(views.v["test"], views.s["test"])  # warm-up (compilation)
        t0 = time.perf_counter()
        z_v, z_s = model.transform(views.v["test"], views.s["test"])
        np.asarray(z_v)
        transform_s = time.perf_counter() - t0
        test_curve = np.asarray(correlation_score_curve(z_v, z_s))
        fit_curve = np.asarray(correlation_score_curve(*model.transform(views.v["fit"], views.s["fit"])))
        kk = min(k, len(test_curve))
        rows.append({"model": MODEL_TITLES[m], "fit_seconds": float(np.median(fits)), "transform_seconds": transform_s,
                     "n_test": int(len(z_v)), "top_k": kk, "ccs_fit": float(fit_curve[kk - 1]),
                     "ccs_test": float(test_curve[kk - 1])})
    out = {"rows": rows, "loadavg": os.getloadavg(), "config": config, "versions": package_versions()}
    lines = ["| model | fit (s) | transform test (s) | CCS top-k train (fit) | CCS top-k test |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['fit_seconds']:.2f} | {r['transform_seconds']:.4f} | "
                     f"{r['ccs_fit']:.3f} (k={r['top_k']}) | {r['ccs_test']:.3f} |")
    _write(p.workdir, "benchmark_models", out, "\n".join(lines))
    return jsonable(out)
