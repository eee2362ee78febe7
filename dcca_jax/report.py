"""Markdown tables and matplotlib figures from a pipeline results dict (Tables 1-2, Figures 2-3).

Per-image (Eq. 9-11) and per-word metrics are always in separate, labelled columns; correlation scores
on training (fit) data are always shown beside the held-out ones.
"""
from __future__ import annotations

import html
import os
import pathlib
from typing import Any, Sequence

import numpy as np
from absl import logging

from dcca_jax.visual import images as images_lib

__all__ = [
    "markdown_tables",
    "table1_markdown",
    "table2_markdown",
    "sizes_markdown",
    "plot_correlation",
    "plot_ap_ar",
    "plot_per_word_ap",
    "plot_per_word_f1_vs_frequency",
    "plot_sweep",
    "gallery",
]

_TOPS = (1, 2, 5, 10, 20)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, ax, path, *, legend_size: int) -> pathlib.Path:
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)
    path = pathlib.Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table1_markdown(table1: dict[str, Any], *, tops: Sequence[int] = _TOPS) -> str:
    """Table 1: CCS (running sum of per-component correlations) at top-k, fit / val / test per model."""
    lines = ["| model | split | " + " | ".join(f"top-{k}" for k in tops) + " | fit time (s) |",
             "|---|---|" + "---|" * (len(tops) + 1)]
    for model, row in table1.items():
        for split, label in (("fit", "train (fit)"), ("val", "validation"), ("test", "test (held out)")):
            curve = row["ccs"][split]
            vals = [f"{curve[k - 1]:.3f}" if k <= len(curve) else "-" for k in tops]
            t = f"{row['fit_seconds']:.1f}" if split == "fit" else ""
            lines.append(f"| {model} | {label} | " + " | ".join(vals) + f" | {t} |")
    return "\n".join(lines)


def table2_markdown(table2: dict[str, Any]) -> str:
    """Table 2: per-word P/R/F1/N+ and per-image AP/AR/AF (Eq. 9-11), one row per method."""
    lines = ["| method | per-word P | per-word R | per-word F1 | N+ | per-image AP | per-image AR | per-image AF "
             "| tags from the prior |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, r in table2.items():
        m = r["metrics"]
        filled = m.get("tags/from_prior")
        if filled is None:
            prior = ""
        else:
            total = int(r.get("n_tags", 0)) * int(m["per_image/n_images"])
            prior = f"{filled} of {total}" if total else str(filled)
        lines.append(
            f"| {method} | {m['per_word/P']:.3f} | {m['per_word/R']:.3f} | {m['per_word/F1']:.3f} | "
            f"{int(m['per_word/N+'])} | {m['per_image/AP']:.3f} | {m['per_image/AR']:.3f} | {m['per_image/AF']:.3f} "
            f"| {prior} |"
        )
    return "\n".join(lines)


def sizes_markdown(sizes: dict[str, Any]) -> str:
    """The sizes of the run (:mod:`dcca_jax.sizes`): value, auto or set, the largest that fits; then warnings."""
    lines = ["| flag | value | from | largest that fits |", "|---|---|---|---|"]
    for flag, r in sizes["resolved"].items():
        bound = "" if r["max"] is None else f"{r['max']} = {r['limit']}"
        lines.append(f"| `--config.{flag}` | {r['value']} | {'auto' if r['auto'] else 'set'} | {bound} |")
    lines += [""] + [f"Warning: {w}" for w in sizes.get("warnings", [])]
    return "\n".join(lines).rstrip()


def markdown_tables(results: dict[str, Any]) -> str:
    """The whole Markdown report of a pipeline run."""
    ds, vis = results["dataset"], results["visual"]
    parts = [
        f"# Results: {ds['name']}",
        "",
        f"train {ds['n_train']} (fit {ds['n_fit']} + validation {ds['n_val']}), test {ds['n_test']}, "
        f"vocabulary {ds['vocabulary']} words; visual backbone `{vis['backbone']}` ({vis['cnn_dim']}-d), "
        f"semantic view {results['semantic']['dim']}-d; {len(vis['failed_images'])} image(s) skipped.",
        "",
    ]
    ae = vis.get("autoencoder")
    if ae:
        h, p = ae["held_out"], ae["held_out_pca_same_dim"]
        parts += [f"Auto-encoder {ae['input_dim']} -> {ae['code_dim']}: held-out variance retained "
                  f"{h['variance_retained']:.3f} (PCA to the same dimension: {p['variance_retained']:.3f}).", ""]
    parts += ["## Table 1: cross-modal correlation score (sum of the top-k correlations)", "",
              "Components are ordered by their training correlation; held-out rows apply the fitted projections "
              "to unseen pairs.", "", table1_markdown(results["table1_correlation"]), "",
              "## Table 2: tag recommendation (test split)", "",
              "Per-word: P and R averaged over words (P = 0 for a word never predicted), F1 of the averages, N+ = "
              "words recalled at least once. Per-image: the paper's Eq. 9-11. The two families are not comparable. "
              "Places with no positive score are filled from the training tag prior (most frequent first; "
              "--config.recommend.fill=none leaves them empty); the last column counts them.",
              "", table2_markdown(results["table2_recommendation"]), ""]
    if results.get("sizes"):
        d = results["sizes"]["data"]
        parts += ["## Sizes", "",
                  f"Resolved from the data after the split (\"auto\": towards the targets `config.sizes`, capped by "
                  f"the data; dcca_jax/sizes.py has the rules). Tags per training image: mean "
                  f"{d['tags_per_image']:.2f}, min {d['tags_min']}, max {d['tags_max']}, single-tag "
                  f"{d['single_tag_share']:.0%}.", "", sizes_markdown(results["sizes"]), ""]
    if results.get("retrieval"):
        from dcca_jax.tagging import retrieval

        parts += ["## Cross-modal retrieval (test split)", "",
                  "Image-to-tag ranks the vocabulary for each test image; tag-to-image ranks the test images for "
                  "each word (relevant = the image carries it). Label transfer: the method's tag scores (what "
                  "`Tagger.tag` ranks); common-space cosine: image and word projections (what `Tagger.search` "
                  f"ranks). Convention: {results['retrieval']['convention']}.", "",
                  retrieval.retrieval_markdown(results["retrieval"]), ""]
    if results.get("tagger"):
        t = results["tagger"]
        parts += [f"Tagger bundle: `{t['path']}` (default model {t['default_model']}, the best validation "
                  "per-word F1: " + ", ".join(f"{m} {v['val_per_word_F1']:.3f}" for m, v in t["models"].items())
                  + ").", ""]
    return "\n".join(parts)


def plot_correlation(results: dict[str, Any], path: str | os.PathLike) -> pathlib.Path:
    """Table 1 as curves: CCS against k, solid = training (fit) data, dashed = test."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (model, row) in enumerate(results["table1_correlation"].items()):
        colour = f"C{i}"
        for split, style in (("fit", "-"), ("test", "--")):
            curve = row["ccs"][split]
            ax.plot(np.arange(1, len(curve) + 1), curve, style, color=colour, label=f"{model} ({split})")
    ax.set_xlabel("k (top-k canonical components)")
    ax.set_ylabel("cross-modal correlation score")
    ax.set_title("Table 1: training (solid) vs held-out (dashed)")
    return _finish(plt, fig, ax, path, legend_size=7)


def plot_per_word_ap(results: dict[str, Any], path: str | os.PathLike, *, methods: Sequence[str] | None = None
                     ) -> pathlib.Path:
    """Each word's tag-to-image AP against its training frequency (log scale), one series per method
    (``results["retrieval"]["per_word"]``, :mod:`dcca_jax.tagging.retrieval`)."""
    per_word = results["retrieval"]["per_word"]
    freq = np.asarray(per_word["train_frequency"], np.float64)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, ap in per_word["t2i_AP"].items():
        if methods is not None and label not in methods:
            continue
        ap = np.array([np.nan if v is None else v for v in ap])
        ok = np.isfinite(ap) & (freq > 0)
        ax.scatter(freq[ok], ap[ok], s=10, alpha=0.6, label=f"{label}: mAP {ap[ok].mean():.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("training images carrying the word")
    ax.set_ylabel("tag-to-image AP (test split)")
    return _finish(plt, fig, ax, path, legend_size=7)


def plot_per_word_f1_vs_frequency(predictions: dict[str, Any], truth: Any, train_labels: Any,
                                  path: str | os.PathLike, *, n_bins: int = 8) -> pathlib.Path:
    """Each word's test F1 against its training frequency (log scale), one series per method: the words (dots)
    and the mean F1 of the words in frequency bins of equal word count (line).

    Args:
      predictions: method -> (n_test, V) 0/1 recommendations.
      truth: (n_test, V) 0/1 test tags (words absent from it are left out).
      train_labels: (n_train, V) 0/1 training tags (the frequencies).
      path: PNG to write.
      n_bins: frequency bins of the mean line.
    """
    from dcca_jax.tagging import metrics as metrics_lib

    freq = np.asarray(train_labels).sum(0).astype(np.float64)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pred in predictions.items():
        w = {k: np.asarray(v) for k, v in metrics_lib.word_scores(pred, truth).items()}
        ok = w["present"] & (freq > 0)
        f, f1 = freq[ok], w["F1"][ok]
        dots = ax.scatter(f, f1, s=8, alpha=0.35)
        order = np.argsort(f, kind="stable")
        bins = [b for b in np.array_split(order, n_bins) if len(b)]
        ax.plot([np.exp(np.log(f[b]).mean()) for b in bins], [f1[b].mean() for b in bins], "o-",
                color=dots.get_facecolor()[0][:3], label=f"{label} (mean word F1 {f1.mean():.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("training images carrying the word")
    ax.set_ylabel("per-word F1 (test split)")
    return _finish(plt, fig, ax, path, legend_size=7)


def plot_ap_ar(results: dict[str, Any], path: str | os.PathLike) -> pathlib.Path:
    """AP against AR as the number of recommended tags grows (Fig. 2, right), one curve per method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for method, r in results["table2_recommendation"].items():
        c = r["ap_ar_curve"]
        ax.plot([p["per_image/AR"] for p in c], [p["per_image/AP"] for p in c], "o-", ms=3, label=method)
    ax.set_xlabel("AR (per image, Eq. 10)")
    ax.set_ylabel("AP (per image, Eq. 9)")
    ax.set_title("AP-AR over 1..N recommended tags")
    return _finish(plt, fig, ax, path, legend_size=7)


def plot_sweep(sweep: dict[str, dict[int, float]], path: str | os.PathLike, *, ylabel: str = "AF (per image)") -> pathlib.Path:
    """Figure 2: a metric against the common-space dimension, one curve per method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for method, pts in sweep.items():
        dims = sorted(int(d) for d in pts)
        ax.plot(dims, [pts[d] if d in pts else pts[str(d)] for d in dims], "o-", label=method)
    ax.set_xlabel("common-space dimension")
    ax.set_ylabel(ylabel)
    return _finish(plt, fig, ax, path, legend_size=8)


def gallery(items: Sequence[dict[str, Any]], out_dir: str | os.PathLike, *, thumb: int = 160,
            columns: int = 4, title: str = "Recommended tags",
            max_pixels: int = images_lib.DEFAULT_MAX_PIXELS) -> tuple[pathlib.Path, pathlib.Path]:
    """Figure 3: an HTML page and a PNG contact sheet of images with ground-truth and recommended tags.

    Each item has ``path`` (image file), ``truth`` (tags) and ``recommended`` (tags, best first);
    recommended tags not in the ground truth are marked in red. Images are read by
    :func:`dcca_jax.visual.images.open_image`; one it refuses (``max_pixels``, corrupt, missing) is drawn as
    an "unreadable" box and logged.

    Returns:
      ``(html_path, png_path)``.
    """
    from PIL import Image, ImageDraw, ImageOps

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for it in items:
        truth = set(it["truth"])
        rec = " ".join(
            html.escape(t) if t in truth else f'<span style="color:red">{html.escape(t)}</span>' for t in it["recommended"]
        )
        rows.append(
            f'<figure style="display:inline-block;width:{thumb + 20}px;vertical-align:top;margin:6px">'
            f'<img src="{html.escape(pathlib.Path(it["path"]).resolve().as_uri())}" width="{thumb}">'
            f'<figcaption><div>{html.escape(" ".join(it["truth"]))}</div><div>{rec}</div>'
            f'<div style="color:#666">F={it.get("f", 0):.2f}</div></figcaption></figure>'
        )
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>"
            "<p>Upper line: ground truth. Lower line: recommended (red = not in the ground truth).</p>" + "".join(rows))
    html_path = out / "gallery.html"
    html_path.write_text(page, encoding="utf-8")

    cell_w, cell_h = thumb + 10, thumb + 44
    n_rows = max(1, -(-len(items) // columns))
    sheet = Image.new("RGB", (columns * cell_w, n_rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, it in enumerate(items):
        x, y = (i % columns) * cell_w + 5, (i // columns) * cell_h + 5
        try:  # the package's reader: same refusals as the visual stage, and a large photo decoded reduced
            im = images_lib.open_image(it["path"], min_side=thumb, max_pixels=max_pixels)
            sheet.paste(ImageOps.contain(im, (thumb, thumb)), (x, y))
        except images_lib.ImageLoadError as e:
            logging.warning("gallery: %s", e)
            draw.rectangle([x, y, x + thumb, y + thumb], outline="grey")
            draw.text((x + 4, y + 4), "unreadable", fill="grey")
        truth = set(it["truth"])
        for line_y, words, colour_of in ((y + thumb + 2, it["truth"], lambda t: "black"),
                                         (y + thumb + 18, it["recommended"], lambda t: "black" if t in truth else "red")):
            cx = x
            for t in words:
                w = int(draw.textlength(t + " "))
                if cx + w > x + cell_w - 8:
                    draw.text((cx, line_y), "...", fill="grey")
                    break
                draw.text((cx, line_y), t, fill=colour_of(t))
                cx += w
    png_path = out / "gallery.png"
    sheet.save(png_path)
    return html_path, png_path
