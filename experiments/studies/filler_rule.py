r"""Table 2 under the old and the new top-n rule, from one finished pipeline run (issue 13, item 4).

Old rule (before 0.2): plain top-n of the scores, ties and empty places resolved by word index (so images
whose neighbours voted for fewer than n words got the lowest-index zero-score words). New rule
(:func:`dcca_jax.tagging.recommend.select_tags`): positive scores first, ties by the training tag prior, empty
places filled from the prior (``fill="prior"``) or left empty (``fill="none"``). Both are applied to the same
saved scores, so the paired bootstrap over test images isolates the rule.

  python experiments/studies/filler_rule.py --config=experiments/configs/corel5k.py \
      --config.data.root=../shared/data/corel5k --workdir=runs/corel5k
"""
from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from dcca_jax import pipeline
from dcca_jax.tagging import metrics, recommend

_CONFIG = config_flags.DEFINE_config_file("config", None, "pipeline config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "a finished (or resumable) pipeline work directory")
_RESAMPLES = flags.DEFINE_integer("resamples", 1000, "paired bootstrap resamples")
flags.mark_flags_as_required(["config", "workdir"])

KEYS = ("per_word/P", "per_word/R", "per_word/F1", "per_word/N+", "per_image/AP", "per_image/AR", "per_image/AF")


def old_rule(scores: np.ndarray, n: int) -> jnp.ndarray:
    """The pre-0.2 rule: ``lax.top_k`` (ties to the lower index), -inf excluded, zero scores kept."""
    return metrics.top_n_indicator(jnp.asarray(scores), n=n)


def compare(pipe: pipeline.Pipeline, *, n_resamples: int) -> dict:
    views = pipe.views()
    truth, prior = views.labels["test"], recommend.tag_prior(views.labels["train"])
    n = int(pipe.config.recommend.n_tags)
    titles = {**pipeline.BASELINE_TITLES, **pipeline.MODEL_TITLES}
    out = {}
    for name, scores in pipe.recommend_scores().items():
        old = old_rule(scores, n)
        rows = {"old": (old, 0)}
        for fill in recommend.FILL_RULES:
            sel = recommend.select_tags(scores, n=n, prior=prior, fill=fill)
            rows[f"new_{fill}"] = (sel.indicator, int(np.asarray(sel.from_prior).sum()))
        n_zero = int((np.take_along_axis(scores, np.argsort(-scores, 1, kind="stable")[:, :n], 1) <= 0).sum())
        res = {"old_zero_score_tags": n_zero}
        for label, (pred, filled) in rows.items():
            res[label] = {"metrics": metrics.to_python(metrics.evaluate(pred, truth)), "from_prior": filled}
            if label != "old":
                res[label]["vs_old"] = metrics.paired_bootstrap(pred, old, truth, n_resamples=n_resamples, keys=KEYS)
        out[titles.get(name, name)] = res
    return out


def markdown(results: dict, n: int, n_test: int) -> str:
    lines = [f"Top {n} tags for {n_test} test images. 'zero-score' = places the old rule filled with a tag of "
             "score <= 0 (in word order); 'prior' = places the new rule filled from the training tag prior.", "",
             "| method | rule | per-word P / R / F1 / N+ | per-image AP / AR / AF | filled | F1 - old [95% CI] | "
             "AF - old [95% CI] |", "|---|---|---|---|---|---|---|"]
    for method, r in results.items():
        for label in ("old", "new_prior", "new_none"):
            m = r[label]["metrics"]
            filled = r["old_zero_score_tags"] if label == "old" else r[label]["from_prior"]
            ci = ["", ""]
            if label != "old":
                ci = [f"{b['diff']:+.3f} [{b['low']:+.3f}, {b['high']:+.3f}]" for b in
                      (r[label]["vs_old"]["per_word/F1"], r[label]["vs_old"]["per_image/AF"])]
            lines.append(f"| {method} | {label} | {m['per_word/P']:.3f} / {m['per_word/R']:.3f} / "
                         f"{m['per_word/F1']:.3f} / {m['per_word/N+']} | {m['per_image/AP']:.3f} / "
                         f"{m['per_image/AR']:.3f} / {m['per_image/AF']:.3f} | {filled} | {ci[0]} | {ci[1]} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    pipe = pipeline.Pipeline(_CONFIG.value, _WORKDIR.value)
    results = compare(pipe, n_resamples=_RESAMPLES.value)
    out = pathlib.Path(_WORKDIR.value)
    (out / "filler_rule.json").write_text(json.dumps(results, indent=2))
    text = markdown(results, int(pipe.config.recommend.n_tags), int(pipe.views().labels["test"].shape[0]))  # resolved
    (out / "filler_rule.md").write_text(text)
    print(text)


if __name__ == "__main__":
    app.run(main)
