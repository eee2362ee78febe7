r"""Tag recommendation from a common (CCA / KCCA / DCCA) space: kNN label transfer, 2PKNN, tag ranking.

A test image is projected into the common space with the visual map; it is compared (cosine) with the training
items' projections (their visual projections, or their semantic projections: ``against`` in the config) and tags
are scored by one of the transfer methods below; the top ``n`` tags (5 by default) are recommended.

Transfer methods (``method`` in :func:`transfer_config`):

* ``"knn"``: similarity-weighted votes of the K nearest training items (:func:`knn_vote_scores`).
* ``"2pknn"``: Verma and Jawahar's two-pass kNN: for every word, the ``k1`` training items *carrying that word* that
  are most similar to the query form its semantic neighbourhood; their union is the neighbourhood of the second
  pass, in which the items vote with weights :math:`\exp(-(1-\cos)/\tau)` (:func:`two_pass_knn_scores`).  Every
  word, however rare, thus gets a chance to be voted for.
* ``"tag_ranking"``: each word's semantic vector (one-hot or word vector) is embedded with the semantic map and
  words are ranked by cosine similarity with the image's projection (:func:`tag_ranking_scores`).

Two modifiers apply to any method:

* frequency-aware vote weighting (``freq_power`` = a): scores divided by the word's training frequency to the
  power a (:func:`frequency_weighting`), so votes for rare words count more;
* correlation-power scaling (``corr_power`` = p, CCA-KNN): the common-space coordinates are scaled by their
  canonical correlations to the power p before the cosine (:func:`scale_by_correlation`), so poorly correlated
  directions stop dominating the neighbourhoods.

References:
  Makadia, Pavlovic, Kumar. A new baseline for image annotation. ECCV 2008 (kNN label transfer).
  Verma, Jawahar. Image annotation using metric learning in semantic neighbourhoods. ECCV 2012 (2PKNN).
  Murthy, Maji, Manmatha. Automatic image annotation using deep learning representations. ICMR 2015 (CCA-KNN).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.typing import ArrayLike

from dcca_jax.tagging import metrics
from dcca_jax.models.base import paired_correlations

TRANSFER_METHODS = ("knn", "2pknn", "tag_ranking")
VOTE_WEIGHTS = ("similarity", "uniform", "exp")


def l2_normalize(x: ArrayLike, *, eps: float = 1e-12) -> jax.Array:
    r"""Rows scaled to unit Euclidean norm, :math:`x / \max(\|x\|, \epsilon)` (zero rows stay zero)."""
    x = jnp.asarray(x)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=("k", "query_chunk", "item_chunk", "cosine"))
def chunked_topk(queries: ArrayLike, items: ArrayLike, *, k: int, query_chunk: int = 1024,
                 item_chunk: int = 16384, cosine: bool = True) -> tuple[jax.Array, jax.Array]:
    r"""The k most similar items of every query, in bounded memory.

    .. math::
        s_{qj} = \frac{\langle x_q, y_j\rangle}{\|x_q\|\,\|y_j\|}\ (\text{or } \langle x_q, y_j\rangle),\quad
        \mathrm{topk}_j\, s_{qj}

    Queries are processed in chunks of ``query_chunk`` (``lax.map``); inside a chunk, a ``lax.scan`` over item
    chunks of ``item_chunk`` keeps a running top-k (merge of the current k best with the chunk's k best).  The
    full (n_q, n_items) similarity matrix is never formed.

    Memory bound: besides the inputs and the (n_q, k) outputs, the live intermediates are one
    (query_chunk, item_chunk) similarity block and (query_chunk, 2k) merge buffers, so the temporary memory is
    :math:`O(q_c\,i_c + q_c k)` whatever n_q and n_items are: with the defaults and float32, one 64 MiB block.
    Measured with ``jax.jit(...).lower(...).compile().memory_analysis()`` on CPU: for 100,000 queries against
    200,000 items in 64 dimensions (float32, k = 10) the temporaries are 0.15 GiB (the inputs 73 MiB) against
    74.5 GiB for the dense similarity matrix (``experiments/bench/topk.py`` measures time and memory).

    Ties are broken towards the lower item index, as a stable ``argsort(-s)``.

    Args:
      queries: (n_q, d) query vectors.
      items: (n_items, d) item vectors; n_items >= k.
      k: number of neighbours.
      query_chunk: queries per chunk.
      item_chunk: items per chunk (raised to k if smaller).
      cosine: cosine similarity (rows L2-normalised first) if True, else the inner product.

    Returns:
      (similarities (n_q, k) descending, indices (n_q, k) int32 into ``items``).
    """
    q, it = jnp.asarray(queries), jnp.asarray(items)
    if q.ndim != 2 or it.ndim != 2 or q.shape[1] != it.shape[1]:
        raise ValueError(f"queries {q.shape} and items {it.shape} must be (n, d) matrices with the same d")
    n_q, n_i = q.shape[0], it.shape[0]
    if not 0 < k <= n_i:
        raise ValueError(f"k={k} must lie in [1, n_items={n_i}]")
    dtype = jnp.result_type(q.dtype, it.dtype, jnp.float32)
    q, it = q.astype(dtype), it.astype(dtype)
    if cosine:
        q, it = l2_normalize(q), l2_normalize(it)
    qc = min(query_chunk, n_q)
    ic = min(max(item_chunk, k), n_i)
    n_qc, n_ic = -(-n_q // qc), -(-n_i // ic)
    q = jnp.pad(q, ((0, n_qc * qc - n_q), (0, 0))).reshape(n_qc, qc, -1)
    it = jnp.pad(it, ((0, n_ic * ic - n_i), (0, 0))).reshape(n_ic, ic, -1)
    offsets = jnp.arange(n_ic, dtype=jnp.int32) * ic
    neg_inf = jnp.array(-jnp.inf, dtype)

    def one_query_chunk(qb):
        def step(carry, xs):
            best_v, best_i = carry
            ib, off = xs
            s = qb @ ib.T
            col = off + jnp.arange(ic, dtype=jnp.int32)
            s = jnp.where(col[None, :] < n_i, s, neg_inf)
            cv, ci = jax.lax.top_k(s, k)
            mv = jnp.concatenate([best_v, cv], axis=1)
            mi = jnp.concatenate([best_i, ci.astype(jnp.int32) + off], axis=1)
            v, pos = jax.lax.top_k(mv, k)
            return (v, jnp.take_along_axis(mi, pos, axis=1)), None

        init = (jnp.full((qc, k), neg_inf), jnp.zeros((qc, k), jnp.int32))
        (v, i), _ = jax.lax.scan(step, init, (it, offsets))
        return v, i

    v, i = jax.lax.map(one_query_chunk, q)
    return v.reshape(-1, k)[:n_q], i.reshape(-1, k)[:n_q]


def vote_weights(similarities: ArrayLike, *, kind: str = "similarity", temperature: float = 0.1) -> jax.Array:
    r"""Vote weight of a neighbour from its cosine similarity s.

    ``"similarity"``: :math:`\max(s, 0)`; ``"uniform"``: 1; ``"exp"``: :math:`\exp(-(1 - s)/\tau)` (the
    2PKNN weight :math:`e^{-D/\tau}` with the cosine distance D = 1 - s).
    """
    s = jnp.asarray(similarities)
    if kind == "similarity":
        return jnp.maximum(s, 0.0)
    if kind == "uniform":
        return jnp.where(jnp.isfinite(s), 1.0, 0.0).astype(s.dtype)
    if kind == "exp":
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        return jnp.exp(-(1.0 - s) / temperature)
    raise ValueError(f"unknown vote weight kind {kind!r}; choose from {VOTE_WEIGHTS}")


def knn_vote_scores(similarities: ArrayLike, indices: ArrayLike, item_labels: ArrayLike, *,
                    weighting: str = "similarity", temperature: float = 0.1) -> jax.Array:
    r"""Similarity-weighted kNN votes for every tag.

    .. math::
        \mathrm{score}_{qw} = \sum_{j \in N_K(q)} \omega(s_{qj})\, y_{jw}

    Args:
      similarities: (n_q, K) similarities of each query's K neighbours (from :func:`chunked_topk`).
      indices: (n_q, K) their indices into the training items.
      item_labels: (n_items, V) 0/1 tags of the training items.
      weighting: vote weight kind (:func:`vote_weights`).
      temperature: temperature of the ``"exp"`` weight.

    Returns:
      (n_q, V) tag scores.
    """
    s, idx, y = jnp.asarray(similarities), jnp.asarray(indices), jnp.asarray(item_labels)
    if s.shape != idx.shape or s.ndim != 2:
        raise ValueError(f"similarities {s.shape} and indices {idx.shape} must both be (n_q, K)")
    w = vote_weights(s, kind=weighting, temperature=temperature)
    return jnp.einsum("qk,qkv->qv", w, y[idx].astype(w.dtype))


def frequency_weighting(scores: ArrayLike, item_labels: ArrayLike, *, power: float) -> jax.Array:
    r"""Frequency-aware vote weighting: tag scores divided by the tag's training frequency to a power.

    .. math::
        \mathrm{score}'_{qw} = \mathrm{score}_{qw} / f_w^{a},\qquad f_w = \frac{1 + \sum_j y_{jw}}{n}

    (the +1 keeps words absent from training finite; a = 0 leaves the scores unchanged).  A vote for a word
    seen 10 times then counts :math:`(100/10)^a` times a vote for a word seen 100 times, which counters the
    pull of frequent words in the votes of nearest neighbours.

    Args:
      scores: (n_q, V) tag scores.
      item_labels: (n_items, V) 0/1 training tags.
      power: a >= 0.

    Returns:
      (n_q, V) reweighted scores.
    """
    y = jnp.asarray(item_labels)
    if power < 0:
        raise ValueError(f"freq_power must be >= 0, got {power}")
    freq = (1.0 + y.sum(0)) / y.shape[0]
    return jnp.asarray(scores) / freq ** power


def scale_by_correlation(z: ArrayLike, correlations: ArrayLike, *, power: float) -> jax.Array:
    r"""CCA-KNN scaling of the common-space coordinates by their canonical correlations to a power.

    .. math::
        z'_{c} = z_c\, \rho_c^{\,p}

    Args:
      z: (n, k) common-space coordinates.
      correlations: (k,) canonical correlations of the k directions (clipped at 0).
      power: p >= 0 (0 leaves z unchanged; Murthy et al. use p = 4).

    Returns:
      (n, k) scaled coordinates.

    References:
      Murthy, Maji, Manmatha, ICMR 2015; Gong, Ke, Isard, Lazebnik, IJCV 2014 (eigenvalue-power scaling).
    """
    z, rho = jnp.asarray(z), jnp.asarray(correlations)
    if rho.shape != z.shape[-1:]:
        raise ValueError(f"correlations {rho.shape} must have one entry per column of z {z.shape}")
    return z * jnp.maximum(rho, 0.0) ** power


@functools.partial(jax.jit, static_argnames=("k1", "query_chunk", "weighting", "temperature"))
def two_pass_knn_scores(queries: ArrayLike, items: ArrayLike, item_labels: ArrayLike, *, k1: int,
                        temperature: float = 0.1, weighting: str = "exp", query_chunk: int = 64) -> jax.Array:
    r"""2PKNN tag scores (Verma and Jawahar, ECCV 2012), cosine similarity.

    First pass: for every word w, :math:`T_w` = the ``k1`` training items annotated with w that are most similar
    to the query.  Second pass: the union :math:`T = \cup_w T_w` votes,

    .. math::
        \mathrm{score}_{qw} = \sum_{j \in T} \omega(s_{qj})\, y_{jw},\qquad
        \omega(s) = \exp(-(1 - s)/\tau)

    so each word has k1 items carrying it in the neighbourhood (fewer if it has fewer training items), however
    rare it is.  This is 2PKNN without its metric learning (the "2PKNN" rows of the paper, not "2PKNN+ML").

    Memory: per query chunk one (query_chunk, n_items) similarity block; the per-word first pass is a
    ``lax.map`` over the V words, each a top-k1 of that block.

    Args:
      queries: (n_q, d) query projections.
      items: (n_items, d) training projections.
      item_labels: (n_items, V) 0/1 training tags.
      k1: items per word in the first pass.
      temperature: :math:`\tau` of the vote weight.
      weighting: vote weight kind (:func:`vote_weights`).
      query_chunk: queries per chunk.

    Returns:
      (n_q, V) tag scores.
    """
    q, it = l2_normalize(jnp.asarray(queries)), l2_normalize(jnp.asarray(items))
    y = jnp.asarray(item_labels)
    if q.shape[1] != it.shape[1] or y.shape[0] != it.shape[0]:
        raise ValueError(f"queries {q.shape}, items {it.shape} and item_labels {y.shape} disagree")
    n_q, n_i = q.shape[0], it.shape[0]
    if not 0 < k1 <= n_i:
        raise ValueError(f"k1={k1} must lie in [1, n_items={n_i}]")
    qc = min(query_chunk, n_q)
    n_qc = -(-n_q // qc)
    qp = jnp.pad(q, ((0, n_qc * qc - n_q), (0, 0))).reshape(n_qc, qc, -1)
    has = y.T > 0  # (V, n_i)
    yf = y.astype(q.dtype)

    def one_chunk(qb):
        s = qb @ it.T  # (qc, n_i)

        def per_word(mask):
            v, i = jax.lax.top_k(jnp.where(mask[None, :], s, -jnp.inf), k1)
            return i, jnp.isfinite(v)

        idx, ok = jax.lax.map(per_word, has)  # (V, qc, k1)
        rows = jnp.broadcast_to(jnp.arange(qc)[None, :, None], idx.shape)
        member = jnp.zeros((qc, n_i), q.dtype).at[rows, idx].max(ok.astype(q.dtype))
        w = vote_weights(s, kind=weighting, temperature=temperature) * member
        return w @ yf

    return jax.lax.map(one_chunk, qp).reshape(n_qc * qc, -1)[:n_q]


def tag_ranking_scores(queries: ArrayLike, tag_embeddings: ArrayLike) -> jax.Array:
    r"""Cosine similarity of each image projection with each tag's embedding in the common space.

    .. math::
        \mathrm{score}_{qw} = \cos(f_V(x_q), f_S(e_w))

    Args:
      queries: (n_q, k) image projections.
      tag_embeddings: (V, k) projections of the tags' semantic vectors (one-hot rows, or word vectors).

    Returns:
      (n_q, V) scores.
    """
    q, t = jnp.asarray(queries), jnp.asarray(tag_embeddings)
    if q.ndim != 2 or t.ndim != 2 or q.shape[1] != t.shape[1]:
        raise ValueError(f"queries {q.shape} and tag_embeddings {t.shape} must be (n, k) with the same k")
    return l2_normalize(q) @ l2_normalize(t).T


def transfer_config() -> ml_collections.ConfigDict:
    """Default configuration of :func:`transfer_scores` (plain similarity-weighted 10-NN, top 5)."""
    c = ml_collections.ConfigDict()
    c.method = "knn"  # one of TRANSFER_METHODS
    c.k = 10  # neighbours ("knn")
    c.k1 = 3  # items per word in 2PKNN's first pass
    c.against = "visual"  # training items' "visual" or "semantic" projections
    c.weighting = "similarity"  # vote weight: "similarity", "uniform", "exp"
    c.temperature = 0.1  # of the "exp" vote weight
    c.freq_power = 0.0  # frequency-aware vote weighting exponent (0 = off)
    c.corr_power = 0.0  # CCA-KNN correlation-power scaling exponent (0 = off)
    c.n_tags = 5  # tags recommended per image
    c.fill = "prior"  # places without a positive score: "prior" (most frequent training words) or "none"
    c.query_chunk = 1024
    c.item_chunk = 16384
    return c


def transfer_scores(query_z: ArrayLike, item_z: ArrayLike, item_labels: ArrayLike, *,
                    config: ml_collections.ConfigDict | dict[str, Any], correlations: ArrayLike | None = None,
                    tag_z: ArrayLike | None = None) -> jax.Array:
    """Tag scores of query images by the transfer method of ``config`` (:func:`transfer_config`).

    Args:
      query_z: (n_q, k) visual projections of the query images.
      item_z: (n_items, k) projections of the training items (visual or semantic, as ``config.against`` says;
        the caller chose them).
      item_labels: (n_items, V) 0/1 training tags.
      config: transfer configuration.
      correlations: (k,) correlations of the common-space directions; required when ``config.corr_power`` != 0.
      tag_z: (V, k) tag embeddings in the common space; required for ``"tag_ranking"``.

    Returns:
      (n_q, V) tag scores (higher is better).
    """
    c = dict(transfer_config()) | dict(config)
    q, it = jnp.asarray(query_z), jnp.asarray(item_z)
    if c["corr_power"]:
        if correlations is None:
            raise ValueError(f"corr_power={c['corr_power']} needs the correlations of the {q.shape[1]} directions")
        q = scale_by_correlation(q, correlations, power=c["corr_power"])
        it = scale_by_correlation(it, correlations, power=c["corr_power"])
        if tag_z is not None:
            tag_z = scale_by_correlation(tag_z, correlations, power=c["corr_power"])
    method = c["method"]
    if method == "knn":
        s, i = chunked_topk(q, it, k=int(c["k"]), query_chunk=int(c["query_chunk"]),
                            item_chunk=int(c["item_chunk"]))
        scores = knn_vote_scores(s, i, item_labels, weighting=c["weighting"], temperature=c["temperature"])
    elif method == "2pknn":
        scores = two_pass_knn_scores(q, it, item_labels, k1=int(c["k1"]), temperature=c["temperature"],
                                     weighting=c["weighting"])
    elif method == "tag_ranking":
        if tag_z is None:
            raise ValueError("method 'tag_ranking' needs tag_z, the (V, k) tag embeddings in the common space")
        scores = tag_ranking_scores(q, tag_z)
    else:
        raise ValueError(f"unknown transfer method {method!r}; choose from {TRANSFER_METHODS}")
    if c["freq_power"]:
        if method == "tag_ranking":
            raise ValueError("freq_power applies to voting methods, not to 'tag_ranking' (cosine scores)")
        scores = frequency_weighting(scores, item_labels, power=c["freq_power"])
    return scores


FILL_RULES = ("prior", "none")


class TagSelection(NamedTuple):
    """The recommended tags of a batch of images (:func:`select_tags`).

    Attributes:
      indices: (n_q, n) int32 tag indices, best first; -1 marks an empty place (``fill="none"`` only).
      indicator: (n_q, V) 0/1 float matrix of the same tags, ready for :mod:`dcca_jax.tagging.metrics`.
      from_prior: (n_q, n) bool, True where the place was filled from the training tag prior because fewer
        than n tags had a positive score.
    """

    indices: jax.Array
    indicator: jax.Array
    from_prior: jax.Array


def tag_prior(train_labels: ArrayLike) -> jax.Array:
    """The training tag prior: the number of training items carrying each word, ``(V,)`` float."""
    y = jnp.asarray(train_labels)
    if y.ndim != 2:
        raise ValueError(f"train_labels must be an (n_items, V) 0/1 matrix, got shape {y.shape}")
    return (y > 0).sum(0).astype(jnp.result_type(float))


@functools.partial(jax.jit, static_argnames=("n", "fill"))
def _select(scores, prior, *, n, fill):
    s = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    n_q, v = s.shape
    # 0 = the most frequent word; equal frequencies keep word order (a stable sort).
    prior_order = jnp.argsort(-prior, stable=True)
    prior_rank = jnp.zeros(v, jnp.int32).at[prior_order].set(jnp.arange(v, dtype=jnp.int32))
    # Score descending; ties (at the n-th place too) go to the more frequent word, never to the lower index.
    order = jnp.lexsort((jnp.broadcast_to(prior_rank, s.shape), -s), axis=-1)[:, :n].astype(jnp.int32)
    top = jnp.take_along_axis(s, order, axis=1)
    evidence = top > 0  # a prefix of each row: positive scores sort first
    n_ev = evidence.sum(1)
    rows = jnp.arange(n_q)[:, None]
    chosen = jnp.zeros((n_q, v), bool).at[rows, order].max(evidence)
    places = jnp.arange(n, dtype=jnp.int32)[None, :]
    if fill == "none":
        idx = jnp.where(evidence, order, -1)
        from_prior = jnp.zeros((n_q, n), bool)
    else:
        # The most frequent words not already chosen, in prior order, fill the places after the evidence.
        free = ~chosen[:, prior_order]  # (n_q, V), columns in prior order
        pos = jnp.where(free, jnp.arange(v, dtype=jnp.int32)[None, :], v)
        first_free = jnp.sort(pos, axis=1)[:, :n]  # positions (in prior order) of the first n free words
        fill_idx = prior_order[jnp.minimum(first_free, v - 1)]
        k = jnp.clip(places - n_ev[:, None], 0, n - 1)
        from_prior = places >= n_ev[:, None]
        idx = jnp.where(from_prior, jnp.take_along_axis(fill_idx, k, axis=1), order)
    ok = idx >= 0
    indicator = jnp.zeros((n_q, v), jnp.result_type(float)).at[rows, jnp.maximum(idx, 0)].max(ok.astype(float))
    return idx, indicator, from_prior


def select_tags(scores: ArrayLike, *, n: int, prior: ArrayLike | None, fill: str = "prior",
                row_chunk: int = 8192) -> TagSelection:
    r"""The one top-n rule of the package: the n tags recommended for each image.

    1. Tags with a positive score, highest first. Ties, at the n-th place too, go to the tag with the larger
       training prior (more frequent word), never to the lower word index.
    2. When fewer than n tags have a positive score (the neighbours' votes cover fewer than n words, JEC's
       transfer ran out of candidates, a cosine is <= 0), the remaining places are filled from the training tag
       prior, most frequent first, skipping words already chosen (``fill="prior"``), or left empty
       (``fill="none"``: fewer than n tags). The filled places are marked in ``from_prior`` so results can
       count them.

    Scores of -inf or NaN are never evidence. Every method (kNN, 2PKNN, tag ranking, JEC, general CCA,
    CCA-KNN, DCCA from pixels, the tagger) goes through this function.

    Args:
      scores: (n_q, V) tag scores, higher is better.
      n: tags per image, 1 <= n <= V.
      prior: (V,) training tag counts (:func:`tag_prior`); None means a flat prior (ties by word index and
        fill in word order, the pre-0.2 behaviour; for tests and ablations only).
      fill: ``"prior"`` or ``"none"``.
      row_chunk: rows per jitted call (bounds the (rows, V) sort buffers).

    Returns:
      A :class:`TagSelection`.
    """
    s = jnp.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be an (n_images, V) matrix, got shape {s.shape}")
    v = s.shape[1]
    if not 0 < n <= v:
        raise ValueError(f"n={n} tags per image must lie in [1, V={v}] (scores {s.shape}); "
                         f"set --config.recommend.n_tags to at most {v}")
    if fill not in FILL_RULES:
        raise ValueError(f"fill must be one of {FILL_RULES}, got {fill!r}")
    p = jnp.zeros(v) if prior is None else jnp.asarray(prior, jnp.result_type(float))
    if p.shape != (v,):
        raise ValueError(f"prior {p.shape} must have one entry per word of scores {s.shape}")
    if not jnp.issubdtype(s.dtype, jnp.floating):
        s = s.astype(jnp.result_type(float))
    parts = [_select(s[i:i + row_chunk], p, n=int(n), fill=fill) for i in range(0, max(s.shape[0], 1), row_chunk)]
    if s.shape[0] == 0:
        return TagSelection(jnp.zeros((0, n), jnp.int32), jnp.zeros((0, v)), jnp.zeros((0, n), bool))
    return TagSelection(*(jnp.concatenate(x, axis=0) for x in zip(*parts)))


def first_places(selection: TagSelection, n: int) -> TagSelection:
    r"""The selection of :func:`select_tags` with ``n`` tags, from one made with more places.

    The rule is prefix-consistent: the first n places for n tags are the first n places for any larger number
    (evidence first in score order, then the prior's fill), so ``first_places(select_tags(s, n=N, ...), n)``
    equals ``select_tags(s, n=n, ...)`` for every n <= N, at the cost of one compiled selection instead of one
    per n (an AP/AR curve over n = 1..10).

    Args:
      selection: a :class:`TagSelection` with N >= n places.
      n: places to keep, 1 <= n <= N.

    Returns:
      A :class:`TagSelection` with n places.
    """
    idx = np.asarray(selection.indices)
    n_q, big_n = idx.shape
    if not 0 < n <= big_n:
        raise ValueError(f"n={n} must lie in [1, {big_n}] (the places of the selection, indices {idx.shape})")
    idx = idx[:, :n]
    # numpy, not jnp: an eager scatter would compile once per n
    indicator = np.zeros((n_q, selection.indicator.shape[1]), selection.indicator.dtype)
    rows, places = np.nonzero(idx >= 0)
    indicator[rows, idx[rows, places]] = 1
    return TagSelection(jnp.asarray(idx), jnp.asarray(indicator), jnp.asarray(np.asarray(selection.from_prior)[:, :n]))


def recommend_top_n(scores: ArrayLike, *, n: int = 5, prior: ArrayLike | None = None, fill: str = "prior") -> jax.Array:
    """Indices (n_q, n) of the recommended tags, best first, by :func:`select_tags`."""
    return select_tags(scores, n=n, prior=prior, fill=fill).indices


def recommend_indicator(scores: ArrayLike, *, n: int = 5, prior: ArrayLike | None = None,
                        fill: str = "prior") -> jax.Array:
    """0/1 matrix (n_q, V) of the recommended tags (:func:`select_tags`), ready for :mod:`dcca_jax.tagging.metrics`."""
    return select_tags(scores, n=n, prior=prior, fill=fill).indicator


def recommend_from_model(model: Any, query_v: ArrayLike, *, train_v: ArrayLike, train_s: ArrayLike,
                         train_labels: ArrayLike, config: ml_collections.ConfigDict | dict[str, Any],
                         tag_s: ArrayLike | None = None) -> tuple[jax.Array, jax.Array]:
    """Recommend tags with any fitted correlation model (``transform(x_v, x_s) -> (z_v, z_s)``).

    The directions' correlations used by ``corr_power`` are the model's ``correlations`` attribute when it has
    one (linear CCA: its training canonical correlations), else the paired correlations of the training
    projections.

    Args:
      model: a fitted :class:`dcca_jax.models.base.CorrelationModel` (CCA, KCCA, DCCA).
      query_v: (n_q, d_v) visual features of the query images.
      train_v: (n_items, d_v) training visual features.
      train_s: (n_items, d_s) training semantic features.
      train_labels: (n_items, V) 0/1 training tags.
      config: transfer configuration (:func:`transfer_config`).
      tag_s: (V, d_s) semantic vectors of the tags (one-hot rows or word vectors), for ``"tag_ranking"``.

    Returns:
      (indices (n_q, n_tags) of the recommended tags, scores (n_q, V)).
    """
    c = dict(transfer_config()) | dict(config)
    zq, _ = model.transform(x_v=query_v)
    zv, zs = model.transform(x_v=train_v, x_s=train_s)
    if c["against"] not in ("visual", "semantic"):
        raise ValueError(f"against must be 'visual' or 'semantic', got {c['against']!r}")
    items = zv if c["against"] == "visual" else zs
    corr = None
    if c["corr_power"]:
        corr = getattr(model, "correlations", None)
        corr = paired_correlations(zv, zs) if corr is None else corr
    tag_z = model.transform(x_s=tag_s)[1] if c["method"] == "tag_ranking" and tag_s is not None else None
    scores = transfer_scores(zq, items, train_labels, config=c, correlations=corr, tag_z=tag_z)
    top = recommend_top_n(scores, n=int(c["n_tags"]), prior=tag_prior(train_labels), fill=c["fill"])
    return top, scores

