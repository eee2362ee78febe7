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


def pipeline_retrieval(pipeline, *, k: int = 10) -> dict:
    """The retrieval block of results.json for a pipeline run (runs the stages it needs)."""
    from dcca_jax import pipeline as pipeline_lib

    views, sem = pipeline.views(), pipeline.stage_semantic()
    truth = np.asarray(views.labels["test"])
    titles = {**pipeline_lib.BASELINE_TITLES, **pipeline_lib.MODEL_TITLES}
    transfer = {titles[name]: metrics_lib.retrieval_metrics(s, truth, k=k)
                for name, s in pipeline.recommend_scores().items()}
    common = {}
    for name in pipeline.config.models:
        model, _ = pipeline.stage_model(name)
        common[titles[name]] = metrics_lib.retrieval_metrics(
            common_space_scores(model, views.v["test"], sem["tags"]), truth, k=k)
    return {"transfer": transfer, "common_space": common, "k": int(k), "convention": CONVENTION}


def retrieval_markdown(retrieval: dict) -> str:
    """The retrieval table: one row per method and score kind."""
    k = retrieval.get("k", 10)
    lines = [f"| method | scores | image-to-tag mAP | tag-to-image mAP | tag-to-image P@{k} | queries (i2t / t2i) "
             "| without relevant item (i2t / t2i) |", "|---|---|---|---|---|---|---|"]
    for kind, label in (("transfer", "label transfer"), ("common_space", "common-space cosine")):
        for method, m in retrieval.get(kind, {}).items():
            lines.append(f"| {method} | {label} | {m['i2t/mAP']:.3f} | {m['t2i/mAP']:.3f} | {m[f't2i/P@{k}']:.3f} | "
                         f"{m['i2t/n_queries']} / {m['t2i/n_queries']} | "
                         f"{m['i2t/n_no_relevant']} / {m['t2i/n_no_relevant']} |")
    return "\n".join(lines)
