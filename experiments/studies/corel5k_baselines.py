"""The Corel5k baseline study: JEC, general CCA (with every transfer method), CCA-KNN, on the standard split.

Protocol (honest): every hyperparameter is chosen on a seeded 4000/500 split of the 4,500 training images
(``select_metric``, per-word F1 by default); the chosen setting is refitted on all 4,500 training images and
evaluated once on the 499 test images.  Visual view: MobileNetV2 pre-logits (1280-d); semantic view: binary tag
vectors (general CCA) or mean skip-gram tag vectors (CCA-KNN).  Both metric families are reported, with paired
bootstrap intervals of each method's difference to the reference (general CCA + similarity-weighted kNN).

Search, in two stages to bound the cost:

1. the CCA space of general CCA (PCA dimension, ridges, number of directions) with plain kNN votes (K grid);
2. with that space's PCA and ridges fixed, each transfer method's own grid jointly with the number of directions.

CCA-KNN searches its PCA, ridges, directions, correlation power and K jointly (kNN votes, as Murthy et al.).

TagProp (:mod:`dcca_jax.tagging.tagprop`) searches K, the weighting (rank / distance), sigma-ML and the
regularisation (``config.tagprop``), on the raw CNN features (``"tagprop"``) or on the common space of a
correlation model of a finished pipeline run (``"tagprop@dcca"``, ``"tagprop@kcca"``, ``"tagprop@cca"``: the
model of ``config.pipeline_dir`` applied to that run's auto-encoder codes).  ``"pipeline:<name>"`` rows read the
test scores of the pipeline run's recommend stage (``pipeline:dcca`` = DMFR&DCCA, ``pipeline:jec`` = JEC, ...);
their settings are the pipeline's, not searched here.  ``"dcca_pixels"`` reads the test recommendations of the
fine-tuning study (``config.finetune_preds``, run ``config.finetune_run``) and is reported "not run" when the
file is absent.  A PNG of per-word F1 against training word frequency for the best methods goes beside the tables.

Entry point: :func:`run_corel5k_baselines` (``experiments/corel5k_baselines.py``).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import time
from typing import Any, Callable, Iterable

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dcca_jax import _io, report
from dcca_jax.data import datasets
from dcca_jax.tagging import metrics
from dcca_jax.tagging import recommend
from dcca_jax.tagging import tagprop as tagprop_lib
from dcca_jax.models.base import correlation_score_curve, load_model
from dcca_jax.baselines import cca_knn, general_cca, jec

# general CCA transfer variants ("general_cca+<variant>") -> their grid in config.transfer_grids
TRANSFER_VARIANTS = {"knn": "knn", "freq": "freq", "2pknn": "two_pass", "2pknn_freq": "two_pass_freq",
                     "corr_power": "corr_power", "tag_ranking": "tag_ranking"}


@dataclasses.dataclass(frozen=True)
class Corel5kLabels:
    """Corel5k's standard split: image ids (``folder/id``), 0/1 label matrices and the 260 words."""

    words: list[str]
    train_ids: list[str]
    test_ids: list[str]
    train_labels: np.ndarray  # (4500, 260)
    test_labels: np.ndarray  # (499, 260)


def load_corel5k_labels(root: str | os.PathLike) -> Corel5kLabels:
    """The standard split's ids, label matrices and words, read by :func:`dcca_jax.data.datasets.load_corel5k`.

    Args:
      root: folder with ``corel5k_{train,test}_list.txt``, ``corel5k_{train,test}_annot.mat``,
        ``corel5k_words.txt`` (images are not checked here; JEC reads them).

    Returns:
      :class:`Corel5kLabels` with float32 label matrices.
    """
    d = datasets.load_corel5k(root, check_images=False)
    return Corel5kLabels(list(d.vocabulary), list(d.train.ids), list(d.test.ids),
                         np.asarray(d.train.labels, np.float32), np.asarray(d.test.labels, np.float32))


def wait_for_file(path: str | os.PathLike, *, timeout_s: float, poll_s: float = 10.0) -> pathlib.Path:
    """Wait until ``path`` exists (another process is writing it); ValueError after ``timeout_s``."""
    path = pathlib.Path(path)
    t0 = time.time()
    while not path.exists():
        if time.time() - t0 > timeout_s:
            raise ValueError(f"{path} did not appear within {timeout_s:.0f} s; compute the features first")
        logging.info("waiting for %s", path)
        time.sleep(poll_s)
    return path


def load_features(config: ml_collections.ConfigDict, data: Corel5kLabels) -> tuple[np.ndarray, np.ndarray]:
    """(train (4500, d), test (499, d)) visual features from ``config.features_path`` (arrays train, test).

    When the file also holds ``train_ids`` / ``test_ids``, they must equal the list files' order.
    """
    if config.get("features_ready"):
        wait_for_file(config.features_ready, timeout_s=config.wait_features_s)
    path = wait_for_file(config.features_path, timeout_s=config.wait_features_s)
    if path.is_dir():  # a pipeline run's CNN stage: train.npy, test.npy in list-file order
        xtr, xte = (np.asarray(np.load(path / f"{s}.npy"), np.float64) for s in ("train", "test"))
        return _check_feature_rows(path, xtr, xte, data)
    with np.load(path) as z:
        for key, ids in (("train_ids", data.train_ids), ("test_ids", data.test_ids)):
            if key in z.files and [str(i) for i in z[key]] != list(ids):
                raise ValueError(f"{path}: {key} differ from the order of the Corel5k list files; re-extract the "
                                 "features in list-file order")
        xtr, xte = np.asarray(z["train"], np.float64), np.asarray(z["test"], np.float64)
    return _check_feature_rows(path, xtr, xte, data)


def _check_feature_rows(path, xtr, xte, data):
    if xtr.shape[0] != len(data.train_ids) or xte.shape[0] != len(data.test_ids) or xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"{path}: features train {xtr.shape} / test {xte.shape} do not match the "
                         f"{len(data.train_ids)} / {len(data.test_ids)} images of the split")
    return xtr, xte


def pipeline_test_scores(pipeline_dir: str | os.PathLike, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The (n_test, V) test scores of one method of a finished pipeline run's recommend stage, with its settings.

    Args:
      pipeline_dir: the pipeline's workdir (read only).
      name: ``jec``, ``general_cca``, ``cca_knn`` (baselines) or ``cca``, ``kcca``, ``dcca`` (DMFR&model).

    Returns:
      (scores, settings): the settings are the recommend stage's recorded inputs for that method.
    """
    d = pathlib.Path(pipeline_dir) / "stages" / "recommend"
    path = d / f"scores_{name}.npy"
    if not (d / "DONE").exists() or not path.exists():
        raise ValueError(f"{path} not found (or {d} unfinished): run the pipeline into {pipeline_dir} first, or drop "
                         f"'pipeline:{name}' from --config.methods")
    inputs = json.loads((d / "key.json").read_text())["inputs"]
    settings = inputs["baselines"].get(name) if name in inputs.get("baselines", {}) else {
        "model": inputs["models"].get(name), "transfer": inputs["recommend"]}
    return np.load(path), {"pipeline": str(pipeline_dir), **(settings or {})}


def pipeline_common_space(pipeline_dir: str | os.PathLike, model_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Train and test images in the common space of a finished pipeline run's correlation model (read only).

    The model's visual map is applied to the run's visual view (auto-encoder codes, or the CNN features when the
    run had no auto-encoder stage), in list-file order.

    Returns:
      (train (n_train, k), test (n_test, k)) visual projections.
    """
    st = pathlib.Path(pipeline_dir) / "stages"
    model_dir = st / f"model_{model_name}" / "model"
    if not (st / f"model_{model_name}" / "DONE").exists():
        raise ValueError(f"{model_dir} not found: the pipeline run {pipeline_dir} has no finished {model_name} model")
    for split in ("train", "test"):
        ok = st / "cnn" / f"{split}_ok.npy"
        if ok.exists() and not np.load(ok).all():
            raise ValueError(f"{ok}: some {split} images have no features, so the run's rows are not the list "
                             "files' rows; use a pipeline run in which every image was read")
    view = st / "autoencoder" if (st / "autoencoder" / "train.npy").exists() else st / "cnn"
    model = load_model(model_dir)
    return tuple(np.asarray(model.transform(x_v=np.load(view / f"{s}.npy"))[0], np.float32) for s in ("train", "test"))


def finetune_predictions(path: str | os.PathLike, run: str = "") -> tuple[np.ndarray, str] | None:
    """Test recommendations (n_test, V) of the fine-tuning study (``test_preds.npz``), or None when absent.

    Args:
      path: the study's ``test_preds.npz`` ("" = none).
      run: the run's key in the file; "" = the first key starting with ``finetune``.
    """
    if not path or not pathlib.Path(path).exists():
        return None
    with np.load(path) as z:
        names = [run] if run else sorted(k for k in z.files if k.startswith("finetune"))
        if not names or names[0] not in z.files:
            logging.warning("%s holds no run %r (it has %s)", path, run or "finetune*", z.files)
            return None
        return np.asarray(z[names[0]], np.float32), names[0]


def _tagprop_scores(x_fit, y_fit, x_eval, hp, base) -> np.ndarray:
    model = tagprop_lib.fit_tagprop(np.asarray(x_fit, np.float32), np.asarray(y_fit, np.float32),
                                    config=dict(base) | dict(hp))
    return np.asarray(tagprop_lib.tagprop_scores(model, np.asarray(x_eval, np.float32)))


def _sha256(path: str | os.PathLike) -> str | None:
    """Content hash of a file, or "<train.npy hash>,<test.npy hash>" of a CNN stage folder (features are shared
    artifacts that can be rewritten between runs)."""
    p = pathlib.Path(path)
    if p.is_dir():
        return ",".join(_io.file_sha256(p / f"{s}.npy") for s in ("train", "test"))
    return _io.file_sha256(p) if p.is_file() else None


def _grid(spec: dict[str, Iterable[Any]] | ml_collections.ConfigDict) -> list[dict[str, Any]]:
    keys = list(spec)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(list(spec[k]) for k in keys))]


@dataclasses.dataclass
class _Split:
    """A fit/evaluation pair of index sets with the data they select."""

    xv_fit: np.ndarray
    y_fit: np.ndarray
    xv_eval: np.ndarray
    y_eval: np.ndarray


def _eval_scores(scores, truth, n_tags, train_labels) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of the package's one top-n rule (``recommend.select_tags``; prior = ``train_labels``)."""
    pred = np.asarray(recommend.recommend_indicator(jnp.asarray(scores), n=n_tags,
                                                    prior=recommend.tag_prior(train_labels)))
    return metrics.to_python(metrics.evaluate(pred, truth)), pred


def _select(name: str, candidates: list[dict[str, Any]], score_fn: Callable[[dict[str, Any]], np.ndarray],
            split: _Split, *, n_tags: int, select_metric: str) -> tuple[dict[str, Any], dict[str, float], int]:
    """Best candidate by ``select_metric`` on the validation part (first one on ties)."""
    best, best_m, best_v = None, None, -np.inf
    for c in candidates:
        m, _ = _eval_scores(score_fn(c), split.y_eval, n_tags, split.y_fit)
        if m[select_metric] > best_v:
            best, best_m, best_v = c, m, m[select_metric]
    logging.info("%s: %d candidates on validation, best %s = %.4f with %s", name, len(candidates), select_metric,
                 best_v, best)
    return best, best_m, len(candidates)


class _SpaceCache:
    """Fitted CCA models keyed by (view, pca, ridges), fitted once at the largest number of directions."""

    def __init__(self, split: _Split, semantic: Callable[[np.ndarray], np.ndarray], max_dims: int, kind: str,
                 word_vectors: np.ndarray | None = None):
        self.split, self.semantic, self.max_dims, self.kind = split, semantic, max_dims, kind
        self.word_vectors = word_vectors
        self._models: dict[tuple, general_cca.GeneralCCA] = {}

    def model(self, pca_dims: int, ridge_v: float, ridge_s: float, n_components: int) -> general_cca.GeneralCCA:
        key = (pca_dims, ridge_v, ridge_s)
        if key not in self._models:
            if self.kind == "word2vec":
                m = cca_knn.fit_cca_knn(self.split.xv_fit, self.split.y_fit, self.word_vectors, pca_dims=pca_dims,
                                        n_components=self.max_dims, ridge_v=ridge_v, ridge_s=ridge_s)
            else:
                m = general_cca.fit_general_cca(self.split.xv_fit, self.semantic(self.split.y_fit),
                                                pca_dims=pca_dims, n_components=self.max_dims, ridge_v=ridge_v,
                                                ridge_s=ridge_s)
            self._models[key] = m
        return general_cca.truncate(self._models[key], n_components)

    def scores(self, hp: dict[str, Any], transfer: dict[str, Any], tag_s: np.ndarray) -> np.ndarray:
        m = self.model(hp["pca_dims"], hp["ridge_v"], hp["ridge_s"], hp["n_components"])
        _, s = recommend.recommend_from_model(m, self.split.xv_eval, train_v=self.split.xv_fit,
                                              train_s=self.semantic(self.split.y_fit),
                                              train_labels=self.split.y_fit, config=transfer, tag_s=tag_s)
        return np.asarray(s)


def _ccs(model, x_tr, s_tr, x_te, s_te, tops=(1, 5, 10, 20)) -> dict[str, dict[int, float]]:
    """Table 1's cross-modal correlation score (top-1..20 running sums) on training and test data."""
    out = {}
    for split, (x, s) in (("train", (x_tr, s_tr)), ("test", (x_te, s_te))):
        curve = np.asarray(correlation_score_curve(*model.transform(x_v=x, x_s=s)))
        out[split] = {t: float(curve[t - 1]) for t in tops if t <= len(curve)}
    return out


def _space_keys():
    return ("pca_dims", "ridge_v", "ridge_s", "n_components")


def run_corel5k_baselines(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Run the Corel5k baseline study and write ``results.json`` and ``results.md`` to ``workdir``.

    Args:
      config: see ``experiments/configs/corel5k_baselines.py``.
      workdir: output folder (created).

    Returns:
      The results dict written to ``results.json``: per method its chosen hyperparameters, validation and test
      metrics (both families, labelled), the paired bootstrap against the reference, and timings.
    """
    t_start = time.time()
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = load_corel5k_labels(config.data_dir)
    n_tags, sel = int(config.n_tags), config.select_metric
    rng = np.random.default_rng(config.seed)
    perm = rng.permutation(len(data.train_ids))
    val_idx, fit_idx = np.sort(perm[:config.val_size]), np.sort(perm[config.val_size:])
    if config.get("max_train"):  # tiny runs (tests)
        fit_idx = fit_idx[:config.max_train]
    y_tr, y_te = data.train_labels, data.test_labels
    results: dict[str, Any] = {"protocol": {
        "split": f"{len(fit_idx)}/{len(val_idx)} validation split of the {len(y_tr)} training images "
                 f"(seed {config.seed}); test {len(y_te)} images used once per method",
        "select_metric": sel, "n_tags": n_tags, "features": str(config.features_path)}, "methods": {}}
    test_preds: dict[str, np.ndarray] = {}

    def record(name, hp, val_m, n_cand, test_scores, seconds, extra=None, pred=None):
        if pred is None:
            test_m, pred = _eval_scores(test_scores, y_te, n_tags, y_tr)
        else:  # recommendations made elsewhere (the fine-tuning study)
            test_m = metrics.to_python(metrics.evaluate(pred, y_te))
        test_preds[name] = pred
        results["methods"][name] = {"hyperparameters": hp, "n_candidates": n_cand, "validation": val_m,
                                    "test": test_m, "seconds": round(seconds, 1), **(extra or {})}
        logging.info("%s test: %s", name, {k: round(test_m[k], 4) for k in metrics.METRIC_KEYS})

    methods = list(config.methods)
    t0 = time.time()

    # ---------------------------------------------------------------- most frequent tags (no hyperparameters)
    if "most_frequent" in methods:
        freq = y_tr[fit_idx].sum(0)
        val_m, _ = _eval_scores(np.tile(freq, (len(val_idx), 1)), y_tr[val_idx], n_tags, y_tr[fit_idx])
        record("most_frequent", {}, val_m, 1, np.tile(y_tr.sum(0), (len(y_te), 1)), time.time() - t0)

    # ---------------------------------------------------------------- JEC (image features, no CNN)
    if "jec" in methods:
        t0 = time.time()
        root = pathlib.Path(config.data_dir)
        paths = [root / f"{i}.jpeg" for i in data.train_ids + data.test_ids]
        feats = jec.compute_jec_features(paths, cache_path=config.jec_cache)
        ftr = {f: v[:len(y_tr)] for f, v in feats.items()}
        fte = {f: v[len(y_tr):] for f, v in feats.items()}
        sub = lambda d, idx: {f: v[idx] for f, v in d.items()}
        fit_f = sub(ftr, fit_idx)
        d_val = np.asarray(jec.jec_distances(sub(ftr, val_idx), fit_f, scales=jec.distance_scales(fit_f)))
        hp, val_m, n_c = _select("jec", _grid({"k": config.jec.k}),
                                 lambda c: jec.jec_transfer(d_val, y_tr[fit_idx], n_tags=n_tags, k=c["k"]),
                                 _Split(None, y_tr[fit_idx], None, y_tr[val_idx]), n_tags=n_tags,
                                 select_metric=sel)
        d_te = np.asarray(jec.jec_distances(fte, ftr, scales=jec.distance_scales(ftr)))
        record("jec", hp, val_m, n_c, jec.jec_transfer(d_te, y_tr, n_tags=n_tags, k=hp["k"]), time.time() - t0)

    needs_cnn = [m for m in methods if m not in ("most_frequent", "jec", "dcca_pixels")
                 and not m.startswith(("pipeline:", "tagprop@"))]
    if needs_cnn:
        xtr, xte = load_features(config, data)
        results["protocol"]["features_sha256"] = _sha256(config.features_path)
        val_split = _Split(xtr[fit_idx], y_tr[fit_idx], xtr[val_idx], y_tr[val_idx])
        full_split = _Split(xtr, y_tr, xte, y_te)
        eye = np.eye(len(data.words))
        ident = lambda y: y

        # ------------------------------------------------------------ cosine kNN on the raw CNN features
        if "raw_knn" in methods:
            t0 = time.time()

            def raw_scores(split, c):
                s, i = recommend.chunked_topk(split.xv_eval, split.xv_fit, k=c["k"])
                return np.asarray(recommend.knn_vote_scores(s, i, split.y_fit))

            hp, val_m, n_c = _select("raw_knn", _grid({"k": config.raw_knn.k}),
                                     lambda c: raw_scores(val_split, c), val_split, n_tags=n_tags,
                                     select_metric=sel)
            record("raw_knn", hp, val_m, n_c, raw_scores(full_split, hp), time.time() - t0)

        # ------------------------------------------------------------ general CCA, stage 1: the space
        gc = config.general_cca
        transfer_methods = [m for m in methods if m.startswith("general_cca")]
        if transfer_methods:
            t0 = time.time()
            max_dims = max(gc.n_components)
            cache = _SpaceCache(val_split, ident, max_dims, "binary")
            space_grid = _grid({"pca_dims": gc.pca_dims, "ridge_v": gc.ridge_v, "ridge_s": gc.ridge_s,
                                "n_components": gc.n_components})
            cands = [s | t for s in space_grid for t in _grid(config.transfer_grids.knn)]
            base_t = dict(recommend.transfer_config())
            split_hp = lambda c: ({k: c[k] for k in _space_keys()},
                                  base_t | {k: v for k, v in c.items() if k not in _space_keys()})
            hp, val_m, n_c = _select("general_cca", cands, lambda c: cache.scores(*split_hp(c), eye), val_split,
                                     n_tags=n_tags, select_metric=sel)
            stage1 = (hp, val_m, n_c)
            space = {k: hp[k] for k in ("pca_dims", "ridge_v", "ridge_s")}
            stage1_s = time.time() - t0
            full_cache = _SpaceCache(full_split, ident, max_dims, "binary")
            for name in transfer_methods:
                t0 = time.time()
                variant = name[len("general_cca"):].lstrip("+") or "knn"
                if variant not in TRANSFER_VARIANTS:
                    raise ValueError(f"unknown method {name!r}; general CCA variants are "
                                     f"{['general_cca+' + v for v in TRANSFER_VARIANTS]}")
                hp, val_m, n_c = stage1
                if variant != "knn":
                    tgrid = config.transfer_grids[TRANSFER_VARIANTS[variant]]
                    cands = [space | {"n_components": d} | t for d in gc.n_components for t in _grid(tgrid)]
                    hp, val_m, n_c = _select(name, cands, lambda c: cache.scores(*split_hp(c), eye), val_split,
                                             n_tags=n_tags, select_metric=sel)
                s_hp, t_hp = split_hp(hp)
                extra = {"transfer": {k: t_hp[k] for k in ("method", "k", "k1", "weighting", "temperature",
                                                            "freq_power", "corr_power", "against")}}
                if variant == "knn":
                    extra["correlation_score_curve"] = _ccs(full_cache.model(**s_hp), xtr, y_tr, xte, y_te)
                record(name, hp, val_m, n_c, full_cache.scores(s_hp, t_hp, eye),
                       time.time() - t0 + (stage1_s if variant == "knn" else 0.0), extra)

        # ------------------------------------------------------------ CCA-KNN (word2vec semantic view)
        if "cca_knn" in methods:
            t0 = time.time()
            ck = config.cca_knn
            w2v = lambda y, seed: cca_knn.train_tag_word2vec(y, data.words, dim=ck.w2v_dim, window=ck.w2v_window,
                                                             epochs=ck.w2v_epochs, seed=seed)
            per_seed = []
            for seed in ck.seeds:
                e_fit = w2v(y_tr[fit_idx], seed)
                mean_vec = lambda y, e=e_fit: cca_knn.mean_tag_vectors(y, e)
                cache = _SpaceCache(val_split, mean_vec, min(max(ck.n_components), ck.w2v_dim), "word2vec", e_fit)
                space_grid = _grid({"pca_dims": ck.pca_dims, "ridge_v": ck.ridge_v, "ridge_s": ck.ridge_s,
                                    "n_components": ck.n_components})
                tg = _grid(ck.transfer)
                cands = [s | t for s in space_grid for t in tg]
                base_t = dict(recommend.transfer_config())
                split_hp = lambda c: ({k: c[k] for k in _space_keys()},
                                      base_t | {k: v for k, v in c.items() if k not in _space_keys()})
                hp, val_m, n_c = _select(f"cca_knn seed {seed}", cands,
                                         lambda c: cache.scores(*split_hp(c), e_fit), val_split, n_tags=n_tags,
                                         select_metric=sel)
                e_full = w2v(y_tr, seed)
                full_cache = _SpaceCache(full_split, lambda y, e=e_full: cca_knn.mean_tag_vectors(y, e),
                                         min(max(ck.n_components), ck.w2v_dim), "word2vec", e_full)
                s_hp, t_hp = split_hp(hp)
                test_scores = full_cache.scores(s_hp, t_hp, e_full)
                per_seed.append((seed, hp, val_m, n_c, test_scores))
            seed, hp, val_m, n_c, test_scores = per_seed[0]
            seed_metrics = [_eval_scores(p[4], y_te, n_tags, y_tr)[0] for p in per_seed]
            spread = {k: {"mean": float(np.mean([m[k] for m in seed_metrics])),
                          "std": float(np.std([m[k] for m in seed_metrics]))} for k in metrics.METRIC_KEYS}
            record("cca_knn", hp | {"w2v_seed": seed}, val_m, n_c, test_scores, time.time() - t0,
                   {"word2vec_seeds": {"seeds": list(ck.seeds), "test": spread,
                                       "hyperparameters": [p[1] for p in per_seed]}})

        # ------------------------------------------------------------ TagProp on the raw CNN features
        if "tagprop" in methods:
            t0 = time.time()
            base = dict(config.tagprop_base)
            hp, val_m, n_c = _select("tagprop", _grid(config.tagprop),
                                     lambda c: _tagprop_scores(val_split.xv_fit, val_split.y_fit, val_split.xv_eval,
                                                               c, base), val_split, n_tags=n_tags, select_metric=sel)
            record("tagprop", hp, val_m, n_c, _tagprop_scores(xtr, y_tr, xte, hp, base), time.time() - t0)

    # ---------------------------------------------------------------- rows from a finished pipeline run
    for name in methods:
        if name.startswith("tagprop@"):  # TagProp in the common space of the run's model
            t0 = time.time()
            ztr, zte = pipeline_common_space(config.pipeline_dir, name.split("@", 1)[1])
            base = dict(config.tagprop_base)
            z_split = _Split(ztr[fit_idx], y_tr[fit_idx], ztr[val_idx], y_tr[val_idx])
            hp, val_m, n_c = _select(name, _grid(config.tagprop),
                                     lambda c: _tagprop_scores(z_split.xv_fit, z_split.y_fit, z_split.xv_eval, c,
                                                               base), z_split, n_tags=n_tags, select_metric=sel)
            record(name, hp, val_m, n_c, _tagprop_scores(ztr, y_tr, zte, hp, base), time.time() - t0,
                   {"space": f"{config.pipeline_dir} model_{name.split('@', 1)[1]} ({ztr.shape[1]} dims)"})
        elif name.startswith("pipeline:"):  # the run's own test scores, its own settings
            scores, settings = pipeline_test_scores(config.pipeline_dir, name.split(":", 1)[1])
            if scores.shape != y_te.shape:
                raise ValueError(f"{config.pipeline_dir}: {name} scores {scores.shape} do not match the test labels "
                                 f"{y_te.shape}")
            record(name, {"settings": "the pipeline run's"}, None, 0, scores, 0.0, {"pipeline_settings": settings})
    if "dcca_pixels" in methods:
        found = finetune_predictions(config.finetune_preds, config.finetune_run)
        if found is None:
            results.setdefault("not_run", {})["dcca_pixels"] = (
                f"no fine-tuned run in {config.finetune_preds or '(finetune_preds unset)'}; run "
                "experiments/finetune_corel5k.py and pass --config.finetune_preds=<workdir>/test_preds.npz")
        else:
            pred, run = found
            if pred.shape != y_te.shape:
                raise ValueError(f"{config.finetune_preds}: run {run} predictions {pred.shape} do not match the test "
                                 f"labels {y_te.shape}")
            record("dcca_pixels", {"run": run, "file": str(config.finetune_preds)}, None, 0, None, 0.0, pred=pred)

    # ---------------------------------------------------------------- paired bootstrap against the reference
    ref = config.reference
    if ref in test_preds:
        for name, pred in test_preds.items():
            if name == ref:
                continue
            results["methods"][name]["bootstrap_vs_" + ref] = metrics.paired_bootstrap(
                pred, test_preds[ref], y_te, n_resamples=config.bootstrap_resamples, seed=config.seed,
                keys=("per_word/F1", "per_word/N+", "per_image/AF"))
    ranked = sorted((n for n in test_preds if n != "most_frequent"),
                    key=lambda n: -results["methods"][n]["test"]["per_word/F1"])[:int(config.plot_top)]
    if ranked:
        report.plot_per_word_f1_vs_frequency({n: test_preds[n] for n in ranked}, y_te, y_tr,
                                              workdir / "per_word_f1_vs_frequency.png")
        results["plot"] = {"file": "per_word_f1_vs_frequency.png", "methods": ranked}
    results["seconds"] = round(time.time() - t_start, 1)
    _io.atomic_write_text(workdir / "results.json", json.dumps(results, indent=2))
    _io.atomic_write_text(workdir / "results.md", results_markdown(results, reference=ref))
    logging.info("wrote %s", workdir / "results.json")
    return results


def results_markdown(results: dict[str, Any], *, reference: str) -> str:
    """Markdown table of a results dict (per-word and per-image families in separate column groups)."""
    lines = [
        f"Protocol: {results['protocol']['split']}; hyperparameters chosen by validation "
        f"{results['protocol']['select_metric']}; top {results['protocol']['n_tags']} tags per image.",
        "",
        "| method | per-word P | R | F1 | N+ | per-image AP | AR | AF | F1 - ref [95% CI] | AF - ref [95% CI] "
        "| chosen hyperparameters |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["methods"].items():
        t = r["test"]
        b = r.get("bootstrap_vs_" + reference)
        ci = lambda k: (f"{b[k]['diff']:+.3f} [{b[k]['low']:+.3f}, {b[k]['high']:+.3f}]" if b else "(reference)")
        hp = ", ".join(f"{k}={v}" for k, v in r["hyperparameters"].items())
        lines.append(
            f"| {name} | {t['per_word/P']:.3f} | {t['per_word/R']:.3f} | {t['per_word/F1']:.3f} | "
            f"{t['per_word/N+']} | {t['per_image/AP']:.3f} | {t['per_image/AR']:.3f} | {t['per_image/AF']:.3f} | "
            f"{ci('per_word/F1')} | {ci('per_image/AF')} | {hp} |")
    for name, why in results.get("not_run", {}).items():
        lines.append(f"| {name} | not run: {why} |" + " |" * 9)
    for name, r in results["methods"].items():
        if "correlation_score_curve" in r:
            c = r["correlation_score_curve"]
            lines += ["", f"{name}: cross-modal correlation score (top-1/5/10/20) train "
                      + " / ".join(f"{v:.3f}" for v in c["train"].values()) + ", test "
                      + " / ".join(f"{v:.3f}" for v in c["test"].values())]
        if "word2vec_seeds" in r:
            w = r["word2vec_seeds"]
            lines += ["", f"{name} over word2vec seeds {w['seeds']} (each seed selected on validation): "
                      + ", ".join(f"{k} {w['test'][k]['mean']:.3f} +/- {w['test'][k]['std']:.3f}"
                                  for k in metrics.METRIC_KEYS)]
    return "\n".join(lines) + "\n"
