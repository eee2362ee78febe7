r"""Which semantic view suits Corel5k? Raw bag of words vs bags of deep words vs mean skip-gram vectors.

Each view is paired with MobileNetV2 features (PCA 300) by linear CCA (up to 100 components), then tags are
transferred by 5-NN in the visual projection (top 5). Honest protocol: the CCA ridge is chosen per view on a
4000/500 split of the training images; the test images are used once, with the view refitted on all 4500.
Also times the pieces of the default semantic view (skip-gram, k-means).

  python experiments/bench/semantic_view.py --shared=../shared --workdir=results/bench
"""
import dataclasses
import json
import pathlib
import time

import ml_collections
import numpy as np
from absl import app, flags, logging

from experiments.bench import measure
from dcca_jax.data import datasets
from dcca_jax.semantic import deepwords
from dcca_jax.semantic import skipgram

_SHARED = flags.DEFINE_string("shared", "../shared", "The shared data folder.")
_CACHE = flags.DEFINE_string("cache", "runs/cache", "Where MobileNetV2 features are cached.")
_WORKDIR = flags.DEFINE_string("workdir", "results/bench", "Output folder: semantic_view.json and semantic_view.md go there.")
_RIDGES = (0.01, 0.1, 1.0)


def _candidates():
    out = {"bag_of_words (260)": {"representation": "bag_of_words"},
           "mean skip-gram vectors (100)": {"representation": "mean_vectors"}}
    for k in (50, 100, 150):
        for weighting in ("count", "tfidf"):
            out[f"deep words K={k}, {weighting}"] = {"representation": "deep_words", "n_clusters": k,
                                                     "weighting": weighting}
    return out


def _view(train_tags, other_tags, vocabulary, overrides):
    cfg = deepwords.semantic_config()
    cfg.update(ml_collections.ConfigDict(overrides))
    v = deepwords.semantic_view(train_tags, other_tags, config=cfg, vocabulary=vocabulary)
    return np.asarray(v.train, np.float64), np.asarray(v.others[0], np.float64)


def main(argv):
    del argv
    shared = pathlib.Path(_SHARED.value)
    d = datasets.load_corel5k(shared / "data" / "corel5k")
    cache = pathlib.Path(_CACHE.value)
    t0 = time.perf_counter()
    xtr = measure.tflite_features(d.train.image_paths, shared=shared, cache=cache)
    xte = measure.tflite_features(d.test.image_paths, shared=shared, cache=cache)
    logging.info("features: %.1f s", time.perf_counter() - t0)
    train = dataclasses.replace(d.train, features=xtr)
    fit, val = datasets.train_validation_split(train, fraction=500 / 4500, seed=0)

    # Timing of the default view's pieces on the 4500 training lists.
    t0 = time.perf_counter()
    wv = skipgram.train_skipgram(d.train.tags, config=deepwords.semantic_config().skipgram)
    t_sg = time.perf_counter() - t0
    t0 = time.perf_counter()
    deepwords.build_deep_words(wv, n_clusters=100)
    t_km = time.perf_counter() - t0
    t0 = time.perf_counter()
    deepwords.build_deep_words(wv, n_clusters=100, seed=1)
    t_km2 = time.perf_counter() - t0

    pv_fit, pv_val = measure.pca(fit.features, val.features, dim=300)
    pv_tr, pv_te = measure.pca(xtr, xte, dim=300)
    rows = []
    for name, overrides in _candidates().items():
        s_fit, s_val = _view(fit.tags, val.tags, d.vocabulary, overrides)
        val_scores = {r: measure.cca_eval(pv_fit, s_fit, pv_val, s_val, fit.labels, val.labels,
                                           n_components=100, ridge_rel=r) for r in _RIDGES}
        best = max(_RIDGES, key=lambda r: val_scores[r]["F1"])
        t0 = time.perf_counter()
        s_tr, s_te = _view(d.train.tags, d.test.tags, d.vocabulary, overrides)
        t_view = time.perf_counter() - t0
        test = measure.cca_eval(pv_tr, s_tr, pv_te, s_te, d.train.labels, d.test.labels,
                                 n_components=100, ridge_rel=best)
        rows.append({"view": name, "dim": s_tr.shape[1], "ridge_rel": best, "val": val_scores[best],
                     "test": test, "view_seconds": t_view})
        logging.info("%s: val F1 %.3f, test %s", name, val_scores[best]["F1"], test)
    result = {"timing": {"skipgram_s": t_sg, "kmeans_first_s": t_km, "kmeans_again_s": t_km2}, "rows": rows}
    out = pathlib.Path(_WORKDIR.value) / "semantic_view.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    lines = [
        "| semantic view | CCA dims | ridge (val) | val F1 | test P / R / F1 / N+ | test AP / AR / AF | test CCS top-1/5/10/20 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["test"]
        c = t["ccs_test"]
        lines.append(
            f"| {r['view']} | {t['n_components']} | {r['ridge_rel']} | {r['val']['F1']:.3f} | "
            f"{t['P']:.3f} / {t['R']:.3f} / {t['F1']:.3f} / {t['N+']} | {t['AP']:.3f} / {t['AR']:.3f} / {t['AF']:.3f} | "
            f"{c['1']:.3f} / {c['5']:.2f} / {c['10']:.2f} / {c['20']:.2f} |"
        )
    lines.append("")
    lines.append(f"Default view on the 4500 training lists: skip-gram {t_sg:.1f} s, k-means (K=100, 10 restarts) "
                 f"{t_km:.1f} s with compilation, {t_km2:.1f} s again.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    app.run(main)
