r"""Is the synthetic dataset nonlinear where it should be? Linear vs MLP tag probes on MobileNetV2 features.

Generates the default synthetic set (timed) unless --data already holds one, extracts MobileNetV2 features
(TFLite interpreter), then, per word group (scene, shape, colour, texture, concept words), compares the
held-out ROC AUC of a logistic-regression probe with that of a one-hidden-layer MLP probe trained the same
way (AdamW, full batch, on 256 principal components; the step count chosen on a validation part of the
training split). Test AUCs are against the noisy test tags, which caps them below 1.
A gap on the concept words (conjunctions, counts, XOR) and none on the plain words is what makes a
nonlinear correlation model (DCCA) able to beat linear CCA. Also reports linear CCA + 5-NN tag transfer
on the bag-of-words view, the baseline DCCA has to beat.

  python experiments/bench/synthetic.py --shared=../shared --data=runs/synthetic --workdir=results/bench
"""
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

from experiments.bench import measure
from dcca_jax.data import datasets
from dcca_jax.data import synthetic

_SHARED = flags.DEFINE_string("shared", "../shared", "The shared data folder.")
_DATA = flags.DEFINE_string("data", "runs/synthetic", "Synthetic dataset folder (generated when missing).")
_CACHE = flags.DEFINE_string("cache", "runs/cache", "Where MobileNetV2 features are cached.")
_WORKDIR = flags.DEFINE_string("workdir", "results/bench", "Output folder: synthetic.json and synthetic.md go there.")
_SEED = flags.DEFINE_integer("seed", 0, "Probe initialisation seed.")
_N_IMAGES = flags.DEFINE_integer("n_images", 1200, "Images to generate when --data has none.")
_NOISELESS = flags.DEFINE_bool("noiseless", False, "Generate with no label noise (missing, confusion, spurious = 0).")

GROUPS = {
    "scene": synthetic.SCENES,
    "shape": synthetic.SHAPES,
    "colour": synthetic.COLOURS,
    "texture": ("striped", "dotted", "checkered"),
    "conjunction": synthetic.CONJUNCTION_WORDS,
    "count": synthetic.COUNT_WORDS,
    "xor": synthetic.XOR_WORDS,
}
_CHECKPOINTS = (100, 300, 1000, 2000)


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank statistic (ties get average ranks)."""
    from scipy.stats import rankdata

    pos = truth.astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train_probe(x, y, x_eval, *, hidden: int, steps: int, seed: int, lr=1e-3, wd=1e-2):
    """Multi-label logistic probe (hidden=0) or one-hidden-layer ReLU MLP probe, AdamW, full batch.

    Returns the eval logits at each step count in _CHECKPOINTS up to ``steps``.
    """
    key = jax.random.key(seed)
    d, v = x.shape[1], y.shape[1]
    k1, k2 = jax.random.split(key)
    if hidden:
        params = {"w1": jax.random.normal(k1, (d, hidden)) * np.sqrt(2 / d), "b1": jnp.zeros(hidden),
                  "w2": jax.random.normal(k2, (hidden, v)) * np.sqrt(1 / hidden), "b2": jnp.zeros(v)}
    else:
        params = {"w2": jnp.zeros((d, v)), "b2": jnp.zeros(v)}

    def forward(p, x):
        h = jax.nn.relu(x @ p["w1"] + p["b1"]) if hidden else x
        return h @ p["w2"] + p["b2"]

    opt = optax.adamw(lr, weight_decay=wd)
    state = opt.init(params)
    x, y = jnp.asarray(x), jnp.asarray(y)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(lambda p: optax.sigmoid_binary_cross_entropy(forward(p, x), y).mean())(p)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss

    outs = []
    for t in range(1, steps + 1):
        params, state, _ = step(params, state)
        if t in _CHECKPOINTS:
            outs.append(np.asarray(forward(params, jnp.asarray(x_eval))))
    return outs


def group_aucs(logits, labels, vocab):
    per_word = {w: auc(logits[:, j], labels[:, j]) for j, w in enumerate(vocab)}
    return {g: float(np.nanmean([per_word[w] for w in ws])) for g, ws in GROUPS.items()}, per_word


def main(argv):
    del argv
    data = pathlib.Path(_DATA.value)
    gen_s = None
    if not (data / "tags.tsv").is_file():
        t0 = time.perf_counter()
        cfg = synthetic.synthetic_config()
        cfg.n_images = _N_IMAGES.value
        if _NOISELESS.value:
            cfg.missing_rate = cfg.confusion_rate = cfg.noise_rate = 0.0
        synthetic.generate(data, config=cfg)
        gen_s = time.perf_counter() - t0
    d = datasets.load_image_folder(data)
    shared = pathlib.Path(_SHARED.value)
    cache = pathlib.Path(_CACHE.value)
    t0 = time.perf_counter()
    xtr = measure.tflite_features(d.train.image_paths, shared=shared, cache=cache)
    xte = measure.tflite_features(d.test.image_paths, shared=shared, cache=cache)
    feat_s = time.perf_counter() - t0
    # Probes see the features reduced to 256 principal components (fitted on train) and standardised.
    ptr, pte = measure.pca(xtr, xte, dim=256)
    sd = ptr.std(0)
    ztr, zte = ptr / sd, pte / sd
    ytr, yte = d.train.labels.astype(np.float32), d.test.labels.astype(np.float32)
    # Probe step counts are chosen on a validation part of the training split; test is used once.
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(ztr))
    n_val = len(ztr) // 5
    va, fi = perm[:n_val], perm[n_val:]
    result = {"n_train": len(ztr), "n_test": len(zte), "generate_s": gen_s, "features_s": feat_s, "probes": {}}
    for name, hidden in (("linear", 0), ("mlp", 512)):
        val_logits = train_probe(ztr[fi], ytr[fi], ztr[va], hidden=hidden, steps=_CHECKPOINTS[-1], seed=_SEED.value)
        val_auc = [np.nanmean(list(group_aucs(lg, ytr[va], d.vocabulary)[1].values())) for lg in val_logits]
        best = _CHECKPOINTS[int(np.argmax(val_auc))]
        test_logits = train_probe(ztr, ytr, zte, hidden=hidden, steps=best, seed=_SEED.value)[-1]
        groups, per_word = group_aucs(test_logits, yte, d.vocabulary)
        result["probes"][name] = {"steps": best, "val_mean_auc": float(max(val_auc)), "test_group_auc": groups,
                                  "test_word_auc": per_word}
        logging.info("%s probe (%d steps): %s", name, best, groups)
    # Linear CCA + 5-NN on the bag-of-words view (ridge chosen on the validation part).
    pv_fit, pv_va = measure.pca(xtr[fi], xtr[va], dim=300)
    scores = {r: measure.cca_eval(pv_fit, ytr[fi], pv_va, ytr[va], d.train.labels[fi], d.train.labels[va],
                                   n_components=40, ridge_rel=r)["F1"] for r in (0.01, 0.1, 1.0)}
    ridge = max(scores, key=scores.get)
    pv_tr, pv_te = measure.pca(xtr, xte, dim=300)
    result["linear_cca_knn"] = measure.cca_eval(pv_tr, ytr, pv_te, yte, d.train.labels, d.test.labels,
                                                 n_components=40, ridge_rel=ridge)
    result["linear_cca_knn"]["ridge_rel"] = ridge
    out = pathlib.Path(_WORKDIR.value) / "synthetic.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    lin, mlp = result["probes"]["linear"]["test_group_auc"], result["probes"]["mlp"]["test_group_auc"]
    lines = ["| word group | linear probe AUC | MLP probe AUC | gap |", "|---|---|---|---|"]
    for g in GROUPS:
        lines.append(f"| {g} ({len(GROUPS[g])} words) | {lin[g]:.3f} | {mlp[g]:.3f} | {mlp[g] - lin[g]:+.3f} |")
    c = result["linear_cca_knn"]
    lines += ["", f"Linear CCA (PCA 300, 40 dims, ridge {ridge}) + 5-NN, test: per-word P/R/F1/N+ "
              f"{c['P']:.3f}/{c['R']:.3f}/{c['F1']:.3f}/{c['N+']}, per-image AP/AR/AF {c['AP']:.3f}/{c['AR']:.3f}/"
              f"{c['AF']:.3f}; held-out CCS top-1/5/10/20 {c['ccs_test']['1']:.3f}/{c['ccs_test']['5']:.2f}/"
              f"{c['ccs_test']['10']:.2f}/{c['ccs_test']['20']:.2f}."]
    if gen_s is not None:
        lines.append(f"Generation: {gen_s:.1f} s for {len(ztr) + len(zte)} images.")
    lines.append(f"MobileNetV2 features (TFLite, uncached): {feat_s:.1f} s.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    app.run(main)
