r"""TagProp (dcca_jax.tagging.tagprop) on Corel5k features: fit + score time, training loss, validation metrics.

  python experiments/bench/tagprop.py --features=runs/corel5k/stages/cnn --epochs=30,90 \
      --workdir=results/bench   # -> tagprop_corel5k.json

Fits on the 4000 images of the study's seeded 4000/500 split of the training images (seed 0, as
experiments/studies/corel5k_baselines.py), scores the 500 validation images (the test images are not used),
and records, per number of epochs: wall time of fit + scoring, the final leave-one-out loss, the validation
metrics of the 5 tags ``select_tags`` picks, and ``os.getloadavg()`` (timings under load are not speed claims).
"""
import json
import os
import pathlib
import time

import numpy as np
from absl import app, flags, logging

from dcca_jax import _io
from dcca_jax.tagging import metrics, recommend, tagprop
from experiments.studies import corel5k_baselines as study

_FEATURES = flags.DEFINE_string("features", "runs/corel5k/stages/cnn", "Folder with train.npy (4500 rows).")
_DATA = flags.DEFINE_string("data_dir", "../shared/data/corel5k", "Corel5k folder (labels).")
_EPOCHS = flags.DEFINE_list("epochs", ["30", "90"], "Numbers of epochs to try.")
_K = flags.DEFINE_integer("k", 100, "Neighbours.")
_WEIGHTING = flags.DEFINE_string("weighting", "distance", "rank or distance.")
_SIGMA = flags.DEFINE_bool("sigma_ml", True, "Word-specific sigmoids.")
_LR = flags.DEFINE_float("learning_rate", 0.05, "Adam learning rate.")
_WORKDIR = flags.DEFINE_string("workdir", "results/bench", "Output folder (tagprop_corel5k.json).")


def main(argv):
    del argv
    data = study.load_corel5k_labels(_DATA.value)
    x = np.load(pathlib.Path(_FEATURES.value) / "train.npy").astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(data.train_ids))
    val, fit = np.sort(perm[:500]), np.sort(perm[500:])
    y = data.train_labels
    rows = []
    for epochs in map(int, _EPOCHS.value):
        cfg = {"k": _K.value, "weighting": _WEIGHTING.value, "sigma_ml": _SIGMA.value, "epochs": epochs,
               "learning_rate": _LR.value}
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        model = tagprop.fit_tagprop(x[fit], y[fit], config=cfg)
        scores = np.asarray(tagprop.tagprop_scores(model, x[val]))
        seconds = time.perf_counter() - t0
        pred = recommend.select_tags(scores, n=5, prior=recommend.tag_prior(y[fit])).indicator
        m = metrics.to_python(metrics.evaluate(pred, y[val]))
        rows.append({"config": cfg, "seconds": round(seconds, 1), "loadavg_before": load0,
                     "loadavg_after": os.getloadavg(), "final_loss": model.history[-1],
                     "validation": {k: m[k] for k in metrics.METRIC_KEYS}})
        logging.info("%s", rows[-1])
    out = pathlib.Path(_WORKDIR.value) / "tagprop_corel5k.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    _io.atomic_write_text(out, json.dumps({"features": _FEATURES.value, "runs": rows}, indent=2))


if __name__ == "__main__":
    app.run(main)
