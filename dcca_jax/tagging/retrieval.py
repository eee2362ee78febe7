"""Cross-modal retrieval beside Table 2: image-to-tag and tag-to-image on the test split.

Two score matrices per method, both (n_test, V):

* ``transfer``: the method's tag scores of the recommend stage (what :meth:`dcca_jax.Tagger.tag` ranks), for
  every method of the run (JEC, general CCA, CCA-KNN, DMFR&CCA/KCCA/DCCA);
* ``common_space``: the cosine between each test image's visual projection and each word's semantic projection
  (the word as a one-tag annotation through the semantic view), what :meth:`dcca_jax.Tagger.search` ranks, for
  the DMFR models.

Image-to-tag ranks the vocabulary for each test image; tag-to-image ranks the test images for each word
(relevant = the image carries the word). mAP over queries and P@10 for tag-to-image
(:func:`dcca_jax.tagging.metrics.retrieval_metrics`); a query with no relevant item is excluded from the means
and counted.
"""
from __future__ import annotations

import numpy as np

from dcca_jax.tagging import metrics as metrics_lib
from dcca_jax.tagging import recommend as rec_lib

CONVENTION = ("queries with no relevant item (an untagged test image; a word no test image carries) are excluded "
              "from mAP and P@10 and counted in n_no_relevant; equal scores keep the item order")


def common_space_scores(model, test_v, tag_s) -> np.ndarray:
    """``(n_test, V)`` cosines between the images' visual projections and the words' semantic projections."""
    zq, _ = model.transform(x_v=test_v)
    tag_z = model.transform(x_s=tag_s)[1]
    return np.asarray(rec_lib.tag_ranking_scores(zq, tag_z))


def _nan_to_none(x) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(x, np.float64)]


def pipeline_retrieval(pipeline, *, k: int = 10, n_boot: int = 1000) -> dict:
    """The retrieval block of results.json for a pipeline run (runs the stages it needs).

    Besides each method's metrics: per-word tag-to-image AP with the words' training frequencies (for the
    per-word plot) and paired-bootstrap intervals over queries (:func:`metrics_lib.paired_bootstrap_map`) of
    every mAP and of its difference from the first DMFR model's label transfer.
    """
    from dcca_jax import pipeline as pipeline_lib

    views, sem = pipeline.views(), pipeline.stage_semantic()
    truth = np.asarray(views.labels["test"])
    titles = {**pipeline_lib.BASELINE_TITLES, **pipeline_lib.MODEL_TITLES}
    scores = {"transfer": {titles[name]: s for name, s in pipeline.recommend_scores().items()}, "common_space": {}}
    for name in pipeline.config.models:
        model, _ = pipeline.stage_model(name)
        scores["common_space"][titles[name]] = common_space_scores(model, views.v["test"], sem["tags"])
    out = {"k": int(k), "convention": CONVENTION, "n_boot": int(n_boot),
           "per_word": {"train_frequency": np.asarray(views.labels["train"]).sum(0).astype(int).tolist(),
                        "t2i_AP": {}}}
    aps = {"i2t": {}, "t2i": {}}
    for kind, by_method in scores.items():
        out[kind] = {}
        for title, s in by_method.items():
            out[kind][title] = metrics_lib.retrieval_metrics(s, truth, k=k)
            label = f"{title} ({kind})"
            aps["i2t"][label] = np.asarray(metrics_lib.average_precision(s, truth))
            aps["t2i"][label] = np.asarray(metrics_lib.average_precision(s.T, truth.T))
            out["per_word"]["t2i_AP"][label] = _nan_to_none(aps["t2i"][label])
    if pipeline.config.models:
        reference = f"{titles[pipeline.config.models[0]]} (transfer)"
        out["bootstrap"] = {"reference": reference, **{
            d: metrics_lib.paired_bootstrap_map(a, reference=reference, n_boot=n_boot, seed=int(pipeline.config.seed))
            for d, a in aps.items() if np.isfinite(a[reference]).any()}}
    return out


def retrieval_markdown(retrieval: dict) -> str:
    """The retrieval table: one row per method and score kind."""
    k = retrieval.get("k", 10)
    lines = [f"| method | scores | image-to-tag mAP | tag-to-image mAP | tag-to-image P@{k} | queries (i2t / t2i) "
             "| without relevant item (i2t / t2i) |", "|---|---|---|---|---|---|---|"]
    boot = retrieval.get("bootstrap", {})

    def cell(value, direction, key):
        b = boot.get(direction, {}).get(key)
        if b is None:
            return f"{value:.3f}"
        return f"{value:.3f} [{b['mAP_lo']:.3f}, {b['mAP_hi']:.3f}]"

    for kind, label in (("transfer", "label transfer"), ("common_space", "common-space cosine")):
        for method, m in retrieval.get(kind, {}).items():
            key = f"{method} ({kind})"
            lines.append(f"| {method} | {label} | {cell(m['i2t/mAP'], 'i2t', key)} | {cell(m['t2i/mAP'], 't2i', key)} "
                         f"| {m[f't2i/P@{k}']:.3f} | {m['i2t/n_queries']} / {m['t2i/n_queries']} | "
                         f"{m['i2t/n_no_relevant']} / {m['t2i/n_no_relevant']} |")
    if boot:
        lines += ["", f"Brackets: 95% bootstrap intervals over queries ({retrieval.get('n_boot')} resamples). Paired "
                  f"differences from {boot['reference']} (mAP difference [95% interval]):", "",
                  "| method | image-to-tag | tag-to-image |", "|---|---|---|"]
        for key in boot.get("t2i", {}):
            if key == boot["reference"]:
                continue
            row = [f"{b[key]['diff']:+.3f} [{b[key]['diff_lo']:+.3f}, {b[key]['diff_hi']:+.3f}]" if key in b else ""
                   for b in (boot.get("i2t", {}), boot.get("t2i", {}))]
            lines.append(f"| {key} | {row[0]} | {row[1]} |")
    return "\n".join(lines)

