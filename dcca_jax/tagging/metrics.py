r"""Tag recommendation metrics: the paper's per-image family and the annotation literature's per-word family.

Two families of numbers are used for image annotation and they must never be compared with each other:

* **per image** (the paper's Eq. 9-11): precision and recall of each image's recommended tag set, averaged over
  images (``per_image/AP``, ``per_image/AR``, ``per_image/AF``);
* **per word** (the protocol of Makadia et al. 2008, Guillaumin et al. 2009 and the annotation literature since):
  precision and recall of each *word* over the test images, averaged over words, F1 of the two averages, and N+,
  the number of words recalled at least once (``per_word/P``, ``per_word/R``, ``per_word/F1``, ``per_word/N+``).

Every function returns a dict whose keys carry the family prefix, so a number can never lose its label.

Inputs are 0/1 matrices: ``predicted`` (n, V), 1 where a tag is recommended for an image, and ``truth`` (n, V),
the ground-truth annotation.  :func:`top_n_indicator` turns a score matrix or a list of top-n indices into such
an indicator.

Edge cases (decided here, and the same everywhere in the project):

* An image with **no ground-truth tag** (7 Corel5k training images have none) has an undefined recall (Eq. 10
  divides by zero).  It is *excluded from AR* and counted in ``per_image/n_no_tag``.  Its precision is well
  defined (no recommended tag can be right, so 0) and it stays in AP, exactly as Eq. 9 is written.
* An image with **no recommended tag** has precision 0/0; it counts as precision 0 (a method that abstains gets no
  credit) and is counted in ``per_image/n_no_prediction``.
* A word **never predicted** has precision 0/0; it counts as P = 0 (the literature's convention; FINDINGS.md).
* A word **absent from the ground truth** of the evaluated images has an undefined recall; it is excluded from the
  word averages and counted in ``per_word/n_absent`` (none on the Corel5k test split: all 260 words occur).
* Retrieval (:func:`retrieval_metrics`): a query with **no relevant item** (an image without tags, a word that no
  evaluated image carries) has an undefined AP; it is excluded from mAP and P@k and counted in
  ``i2t/n_no_relevant`` / ``t2i/n_no_relevant``. Equal scores keep the item order (a stable sort).

References:
  Makadia, Pavlovic, Kumar. A new baseline for image annotation. ECCV 2008 (per-word protocol).
  Guillaumin, Mensink, Verbeek, Schmid. TagProp. ICCV 2009 (per-word P/R/N+ on Corel5k).
  The seed paper, Section 4, Eq. 9-11 (per-image AP/AR/AF).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

PER_IMAGE_KEYS = ("per_image/AP", "per_image/AR", "per_image/AF")
PER_WORD_KEYS = ("per_word/P", "per_word/R", "per_word/F1", "per_word/N+")
METRIC_KEYS = PER_WORD_KEYS + PER_IMAGE_KEYS


def _check_pair(predicted: jax.Array, truth: jax.Array) -> None:
    if predicted.ndim != 2 or predicted.shape != truth.shape:
        raise ValueError(
            f"predicted {predicted.shape} and truth {truth.shape} must be 0/1 matrices of the same shape "
            "(n_images, n_words); convert top-n indices with top_n_indicator(...) first")


def _as_indicator(x: ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)
    return (x != 0).astype(dtype)


def top_n_indicator(scores_or_indices: ArrayLike, *, n: int | None = None, n_words: int | None = None
                    ) -> jax.Array:
    """0/1 matrix (n_images, V) of the recommended tags.

    Args:
      scores_or_indices: either scores (n_images, V) (float; the ``n`` highest of each row are recommended, ties
        broken towards the lower index, never a tag scored -inf, so a row may get fewer than n) or integer tag indices (n_images, n) of the recommended tags.
      n: number of tags to recommend from scores (required with scores).
      n_words: vocabulary size V (required with indices).

    Returns:
      (n_images, V) float 0/1 indicator.
    """
    a = jnp.asarray(scores_or_indices)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D score or index matrix, got shape {a.shape}")
    if jnp.issubdtype(a.dtype, jnp.integer):
        if n_words is None:
            raise ValueError(f"tag indices {a.shape} need n_words= (the vocabulary size)")
        rows = jnp.arange(a.shape[0])[:, None]
        return jnp.zeros((a.shape[0], n_words), jnp.result_type(float)).at[rows, a].set(1.0)
    if n is None or not 0 < n <= a.shape[1]:
        raise ValueError(f"scores {a.shape} need 0 < n <= {a.shape[1]}, got n={n}")
    val, idx = jax.lax.top_k(a, n)
    rows = jnp.arange(a.shape[0])[:, None]
    # a score of -inf marks a tag that may not be recommended (e.g. JEC's greedy transfer ran out of candidates)
    return jnp.zeros(a.shape, jnp.result_type(float)).at[rows, idx].set((val > -jnp.inf).astype(float))


def per_image_metrics(predicted: ArrayLike, truth: ArrayLike) -> dict[str, jax.Array]:
    r"""The paper's per-image average precision, recall and F-measure (Eq. 9, 10, 11).

    .. math::
        AP = \frac{1}{n}\sum_i \frac{|Rec_i \cap Tag_i|}{|Rec_i|},\quad
        AR = \frac{1}{n'}\sum_{i:|Tag_i|>0} \frac{|Rec_i \cap Tag_i|}{|Tag_i|},\quad
        AF = \frac{2\,AP\,AR}{AP + AR}

    Images without a ground-truth tag are left out of AR only (n' counts the others); see the module docstring.

    Args:
      predicted: (n, V) 0/1, the recommended tags of each image.
      truth: (n, V) 0/1, the ground-truth tags.

    Returns:
      dict with ``per_image/AP``, ``per_image/AR``, ``per_image/AF`` and the counts ``per_image/n_images``,
      ``per_image/n_no_tag`` (left out of AR), ``per_image/n_no_prediction``.

    References:
      Seed paper, Section 4, Eq. 9-11.
    """
    p, t = _as_indicator(predicted), _as_indicator(truth)
    _check_pair(p, t)
    return _per_image_from_counts(*_image_counts(p, t), weights=jnp.ones(p.shape[0], p.dtype))


def _image_counts(p: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return (p * t).sum(1), p.sum(1), t.sum(1)


def _per_image_from_counts(hits, n_rec, n_true, *, weights) -> dict[str, jax.Array]:
    """Eq. 9-11 from per-image counts; ``weights`` are image multiplicities (1 each, or bootstrap counts)."""
    prec = jnp.where(n_rec > 0, hits / jnp.maximum(n_rec, 1), 0.0)
    has_tag = n_true > 0
    rec = jnp.where(has_tag, hits / jnp.maximum(n_true, 1), 0.0)
    ap = (weights * prec).sum(-1) / weights.sum(-1)
    n_tagged = (weights * has_tag).sum(-1)
    ar = (weights * rec).sum(-1) / jnp.maximum(n_tagged, 1)
    return {
        "per_image/AP": ap,
        "per_image/AR": ar,
        "per_image/AF": f_measure(ap, ar),
        "per_image/n_images": weights.sum(-1),
        "per_image/n_no_tag": (weights * ~has_tag).sum(-1),
        "per_image/n_no_prediction": (weights * (n_rec == 0)).sum(-1),
    }


def f_measure(precision: ArrayLike, recall: ArrayLike) -> jax.Array:
    r"""Harmonic mean :math:`2PR/(P+R)`, 0 where P + R = 0 (Eq. 11, and the per-word F1)."""
    p, r = jnp.asarray(precision), jnp.asarray(recall)
    s = p + r
    return jnp.where(s > 0, 2 * p * r / jnp.where(s > 0, s, 1), 0.0)


def per_word_metrics(predicted: ArrayLike, truth: ArrayLike) -> dict[str, jax.Array]:
    r"""Per-word precision and recall averaged over words, their F1, and N+ (the annotation protocol).

    .. math::
        P_w = \frac{|\{i: w \in Rec_i \cap Tag_i\}|}{|\{i: w \in Rec_i\}|},\quad
        R_w = \frac{|\{i: w \in Rec_i \cap Tag_i\}|}{|\{i: w \in Tag_i\}|},\quad
        P = \overline{P_w},\ R = \overline{R_w},\ F1 = \frac{2PR}{P+R},\ N^+ = |\{w: R_w > 0\}|

    :math:`P_w = 0` for a word never predicted; words absent from ``truth`` are left out of the averages (counted
    in ``per_word/n_absent``).

    Args:
      predicted: (n, V) 0/1, the recommended tags of each image.
      truth: (n, V) 0/1, the ground-truth tags.

    Returns:
      dict with ``per_word/P``, ``per_word/R``, ``per_word/F1``, ``per_word/N+``, ``per_word/n_words`` (words
      averaged over), ``per_word/n_absent``, ``per_word/n_never_predicted`` (among the averaged words).

    References:
      Makadia et al., ECCV 2008; Guillaumin et al., ICCV 2009.
    """
    p, t = _as_indicator(predicted), _as_indicator(truth)
    _check_pair(p, t)
    return _per_word_from_counts((p * t).sum(0), p.sum(0), t.sum(0))


def _word_precision_recall(hits, n_pred, n_true) -> tuple[jax.Array, jax.Array, jax.Array]:
    present = n_true > 0
    prec = jnp.where(n_pred > 0, hits / jnp.maximum(n_pred, 1), 0.0)
    rec = jnp.where(present, hits / jnp.maximum(n_true, 1), 0.0)
    return present, prec, rec


def word_scores(predicted: ArrayLike, truth: ArrayLike) -> dict[str, jax.Array]:
    r"""Each word's own :math:`P_w`, :math:`R_w` and :math:`F1_w = 2P_wR_w/(P_w+R_w)` (V,), and ``present``
    (the word occurs in ``truth``), for per-word plots; :func:`per_word_metrics` averages P_w and R_w instead."""
    p, t = _as_indicator(predicted), _as_indicator(truth)
    _check_pair(p, t)
    present, prec, rec = _word_precision_recall((p * t).sum(0), p.sum(0), t.sum(0))
    return {"P": prec, "R": rec, "F1": f_measure(prec, rec), "present": present}


def _per_word_from_counts(hits, n_pred, n_true) -> dict[str, jax.Array]:
    present, prec, rec = _word_precision_recall(hits, n_pred, n_true)
    n_words = present.sum(-1)
    denom = jnp.maximum(n_words, 1)
    mean_p = (prec * present).sum(-1) / denom
    mean_r = (rec * present).sum(-1) / denom
    return {
        "per_word/P": mean_p,
        "per_word/R": mean_r,
        "per_word/F1": f_measure(mean_p, mean_r),
        "per_word/N+": (rec > 0).sum(-1),
        "per_word/n_words": n_words,
        "per_word/n_absent": (~present).sum(-1),
        "per_word/n_never_predicted": (present & (n_pred == 0)).sum(-1),
    }


def evaluate(predicted: ArrayLike, truth: ArrayLike) -> dict[str, jax.Array]:
    """Both metric families for one set of recommendations: :func:`per_word_metrics` | :func:`per_image_metrics`.

    Args:
      predicted: (n, V) 0/1 recommended tags (see :func:`top_n_indicator`).
      truth: (n, V) 0/1 ground truth.

    Returns:
      One dict with the ``per_word/...`` and ``per_image/...`` keys.
    """
    return {**per_word_metrics(predicted, truth), **per_image_metrics(predicted, truth)}


def to_python(metrics: Mapping[str, Any]) -> dict[str, float | int]:
    """Metric dict with jax/numpy scalars turned into Python numbers (for JSON)."""
    out: dict[str, float | int] = {}
    for k, v in metrics.items():
        leaf = k.rsplit("/", 1)[-1]
        out[k] = int(np.asarray(v)) if leaf == "N+" or leaf.startswith("n_") else float(np.asarray(v))
    return out


def _bootstrap_all(p: jax.Array, t: jax.Array, counts: jax.Array) -> dict[str, jax.Array]:
    """Both families on bootstrap resamples given as image multiplicities ``counts`` (B, n)."""
    hits_i, n_rec_i, n_true_i = _image_counts(p, t)
    per_image = _per_image_from_counts(hits_i[None], n_rec_i[None], n_true_i[None], weights=counts)
    per_word = _per_word_from_counts(counts @ (p * t), counts @ p, counts @ t)
    return {**per_word, **per_image}


def paired_bootstrap(predicted_a: ArrayLike, predicted_b: ArrayLike, truth: ArrayLike, *,
                     n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                     keys: tuple[str, ...] = METRIC_KEYS) -> dict[str, dict[str, float]]:
    r"""Paired bootstrap over test images of the difference of each metric between two methods (A - B).

    Test images are resampled with replacement (the same resample for both methods, hence *paired*), every
    metric is recomputed on the resample for A and for B, and the percentile interval of the difference is
    returned.  Per-word metrics are recomputed from resampled word counts, so the interval reflects which words
    each resample contains.

    .. math::
        \Delta^{(b)} = m(A; S_b) - m(B; S_b),\quad S_b \sim \text{multinomial}(n, 1/n)

    Args:
      predicted_a: (n, V) 0/1 recommendations of method A.
      predicted_b: (n, V) 0/1 recommendations of method B, for the same images.
      truth: (n, V) 0/1 ground truth.
      n_resamples: number of bootstrap resamples B.
      confidence: two-sided confidence level of the percentile interval.
      seed: seed of the resampling (``jax.random.key``).
      keys: metric keys to report.

    The per-word metrics are not averages over images: a resample drops about a third of the images, and with
    them some words' only occurrences, so the resampled per-word values are shifted (a word absent from a
    resample leaves the averages; a word whose single test image is drawn twice counts it twice).  The shift
    largely cancels in a paired difference but not entirely; ``boot_mean`` (the mean of the resampled
    differences) against ``diff`` shows it.  The interval is the plain percentile interval.

    Returns:
      ``{key: {"diff": m(A) - m(B) on the full set, "low": ..., "high": ..., "p_le_0": fraction of resamples
      with difference <= 0, "boot_mean": mean resampled difference}}``.

    References:
      Efron and Tibshirani, An Introduction to the Bootstrap, 1993 (percentile interval);
      Koehn, Statistical significance tests for machine translation evaluation, EMNLP 2004 (paired bootstrap).
    """
    a, b, t = _as_indicator(predicted_a), _as_indicator(predicted_b), _as_indicator(truth)
    _check_pair(a, t)
    _check_pair(b, t)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    unknown = set(keys) - set(METRIC_KEYS)
    if unknown:
        raise ValueError(f"unknown metric keys {sorted(unknown)}; choose from {METRIC_KEYS}")
    n = t.shape[0]
    full_a, full_b = evaluate(a, t), evaluate(b, t)
    idx = jax.random.randint(jax.random.key(seed), (n_resamples, n), 0, n)
    counts = jnp.zeros((n_resamples, n), t.dtype).at[jnp.arange(n_resamples)[:, None], idx].add(1.0)
    boot: Callable = jax.jit(_bootstrap_all)
    ra, rb = boot(a, t, counts), boot(b, t, counts)
    alpha = (1 - confidence) / 2
    out = {}
    for k in keys:
        d = np.asarray(ra[k], np.float64) - np.asarray(rb[k], np.float64)
        out[k] = {
            "diff": float(np.asarray(full_a[k], np.float64) - np.asarray(full_b[k], np.float64)),
            "low": float(np.quantile(d, alpha)),
            "high": float(np.quantile(d, 1 - alpha)),
            "p_le_0": float(np.mean(d <= 0)),
            "boot_mean": float(np.mean(d)),
        }
    return out


# ------------------------------------------------------------------------------------- cross-modal retrieval
@jax.jit
def _ranked_relevance(scores: jax.Array, relevant: jax.Array) -> jax.Array:
    # NaN and -inf rank last; equal scores keep the items' order (a stable sort): the stated tie rule.
    s = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    order = jnp.argsort(-s, axis=-1, stable=True)
    return jnp.take_along_axis(relevant, order, axis=-1)


def average_precision(scores: ArrayLike, relevant: ArrayLike) -> jax.Array:
    r"""Average precision of each query's ranking of the items (one row per query).

    .. math::
        \mathrm{AP}_q = \frac{1}{R_q} \sum_{k=1}^{N} \mathrm{rel}_{q,(k)}\,
        \frac{\sum_{j \le k} \mathrm{rel}_{q,(j)}}{k}

    Items are ranked by score, highest first; equal scores keep the item order (stable), NaN and -inf rank last.
    A query with no relevant item (:math:`R_q = 0`) has an undefined AP: NaN here, excluded from the means of
    :func:`retrieval_metrics` and counted there.

    Args:
      scores: (n_q, N) scores of every item for every query.
      relevant: (n_q, N) 0/1, 1 where the item is relevant to the query.

    Returns:
      (n_q,) AP, NaN where the query has no relevant item.
    """
    s, r = jnp.asarray(scores), jnp.asarray(relevant)
    if s.ndim != 2 or s.shape != r.shape:
        raise ValueError(f"scores {s.shape} and relevant {r.shape} must be (n_queries, n_items) matrices")
    rel = (_ranked_relevance(s, r) > 0).astype(jnp.float32)
    hits = jnp.cumsum(rel, axis=-1)
    ranks = jnp.arange(1, s.shape[1] + 1, dtype=jnp.float32)
    n_rel = rel.sum(-1)
    ap = (rel * hits / ranks).sum(-1) / jnp.maximum(n_rel, 1.0)
    return jnp.where(n_rel > 0, ap, jnp.nan)


def precision_at_k(scores: ArrayLike, relevant: ArrayLike, *, k: int = 10) -> jax.Array:
    r"""Precision of each query's top k items, :math:`\frac{1}{k}\sum_{j \le k} \mathrm{rel}_{q,(j)}` (same ranking
    and tie rule as :func:`average_precision`; NaN where the query has no relevant item; k is capped at N)."""
    s, r = jnp.asarray(scores), jnp.asarray(relevant)
    if s.ndim != 2 or s.shape != r.shape:
        raise ValueError(f"scores {s.shape} and relevant {r.shape} must be (n_queries, n_items) matrices")
    k = min(int(k), s.shape[1])
    rel = (_ranked_relevance(s, r) > 0).astype(jnp.float32)
    p = rel[:, :k].sum(-1) / k
    return jnp.where(rel.sum(-1) > 0, p, jnp.nan)


def retrieval_metrics(scores: ArrayLike, truth: ArrayLike, *, k: int = 10) -> dict[str, float | int]:
    """The cross-modal retrieval protocol on one (n_images, V) image-tag score matrix.

    * image-to-tag (``i2t/``): each image is a query and ranks the V words (a row of ``scores``);
    * tag-to-image (``t2i/``): each word is a query and ranks the n images (a column); relevant = the image
      carries the word.

    Convention: a query with no relevant item (an image without tags; a word that no evaluated image carries) is
    excluded from the means and counted in ``*/n_no_relevant``; ``*/n_queries`` counts the queries averaged.

    Args:
      scores: (n_images, V) scores (higher = more related).
      truth: (n_images, V) 0/1 ground truth.
      k: the cut-off of tag-to-image precision (P@10 by default).

    Returns:
      ``{"i2t/mAP", "i2t/n_queries", "i2t/n_no_relevant", "t2i/mAP", "t2i/P@10", "t2i/n_queries",
      "t2i/n_no_relevant"}`` as Python numbers.
    """
    s, t = jnp.asarray(scores), jnp.asarray(truth)
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"scores {s.shape} and truth {t.shape} must both be (n_images, V)")
    i2t = np.asarray(average_precision(s, t))
    t2i = np.asarray(average_precision(s.T, t.T))
    p_k = np.asarray(precision_at_k(s.T, t.T, k=k))
    ok_i, ok_t = np.isfinite(i2t), np.isfinite(t2i)

    def mean(x, ok):
        return float(x[ok].mean()) if ok.any() else float("nan")

    return {"i2t/mAP": mean(i2t, ok_i), "i2t/n_queries": int(ok_i.sum()), "i2t/n_no_relevant": int((~ok_i).sum()),
            "t2i/mAP": mean(t2i, ok_t), f"t2i/P@{k}": mean(p_k, ok_t), "t2i/n_queries": int(ok_t.sum()),
            "t2i/n_no_relevant": int((~ok_t).sum())}


def random_ranking_ap(n_items: ArrayLike, n_relevant: ArrayLike) -> np.ndarray:
    r"""Expected AP of a uniformly random ranking of N items of which R are relevant (R >= 1).

    .. math::
        \mathbb{E}[\mathrm{AP}] = \frac{H_N}{N} + \frac{(R - 1)(N - H_N)}{N (N - 1)},\qquad H_N = \sum_{k=1}^N 1/k

    (from :math:`\mathbb{E}[\mathrm{rel}_k \sum_{j \le k} \mathrm{rel}_j] = R/N + (k-1) R (R-1) / (N (N-1))`).
    """
    n = np.asarray(n_items, np.float64)
    r = np.asarray(n_relevant, np.float64)
    h = np.vectorize(lambda m: np.sum(1.0 / np.arange(1, int(m) + 1)))(n)
    return h / n + np.where(n > 1, (r - 1) * (n - h) / np.maximum(n * (n - 1), 1.0), 0.0)


def paired_bootstrap_map(aps: Mapping[str, ArrayLike], *, reference: str, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.95) -> dict[str, dict[str, float]]:
    r"""Bootstrap intervals of mAP and of mAP differences against ``reference``, resampling the queries.

    Every method is evaluated on the same resampled queries (paired), so the interval of a difference is much
    narrower than the two mAP intervals suggest. Queries whose AP is NaN (no relevant item) are dropped first;
    they are the same for every method evaluated on the same ground truth.

    Args:
      aps: method -> (n_queries,) per-query AP (:func:`average_precision`), same queries in the same order.
      reference: the method the differences are taken against.
      n_boot: bootstrap resamples.
      seed: numpy seed of the resampling.
      level: coverage of the percentile intervals.

    Returns:
      method -> ``{"mAP", "mAP_lo", "mAP_hi", "diff", "diff_lo", "diff_hi"}`` (diff = method - reference).
    """
    arrays = {m: np.asarray(a, np.float64) for m, a in aps.items()}
    if reference not in arrays:
        raise ValueError(f"reference {reference!r} is not among the methods {sorted(arrays)}")
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"per-query APs must be 1-D arrays of one length; got shapes {sorted(shapes)}")
    keep = np.isfinite(arrays[reference])
    n = int(keep.sum())
    if n == 0:
        raise ValueError("no query has a relevant item")
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n  # (B, n) weights
    ref = arrays[reference][keep]
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    out = {}
    for m, a in arrays.items():
        a = a[keep]
        boot, diff = counts @ a, counts @ (a - ref)
        lo, hi = np.percentile(boot, q)
        dlo, dhi = np.percentile(diff, q)
        out[m] = {"mAP": float(a.mean()), "mAP_lo": float(lo), "mAP_hi": float(hi), "diff": float((a - ref).mean()),
                  "diff_lo": float(dlo), "diff_hi": float(dhi)}
    return out
