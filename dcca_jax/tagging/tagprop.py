r"""TagProp: discriminative metric learning in nearest-neighbour models for image annotation.

A query's tags are predicted from the tags of its K nearest training images, weighted by learned weights
:math:`\pi_{ij}` (Eq. 1), and the weights are learned by maximising the leave-one-out log-likelihood of the
training tags (Eq. 4): every training image is predicted from its K nearest *other* training images.

Two weightings (``weighting`` in :func:`tagprop_config`):

* ``"rank"``: a weight per neighbour rank, :math:`\pi_{ij} = \gamma_k` when j is i's k-th neighbour, with
  :math:`\gamma = \mathrm{softmax}(g)` (positive, summing to one; Eq. 2);
* ``"distance"``: :math:`\pi_{ij} \propto \exp(-d_w(i, j))`, :math:`d_w = \sum_m w_m d_m(i, j)` with learned
  non-negative weights :math:`w = e^{\theta}` on m base distances, normalised over the K neighbours (Eq. 3).
  The base distances are the squared Euclidean distances on ``feature_groups`` contiguous blocks of the
  features (1 block: one distance with a learned scale; d blocks: per-feature squared differences), each divided
  by its mean over the training neighbour pairs so the weights are comparable.

The word-specific sigmoid ("sigma-ML", Eq. 5), :math:`p(y_{iw}) = \sigma(\alpha_w x_{iw} + \beta_w)` with
:math:`x_{iw} = \sum_j \pi_{ij} y_{jw}`, lets rare words be predicted with a boosted probability.

Features are any (n, d) arrays: raw CNN features or a common space (CCA / KCCA / DCCA projections).  With
``normalize`` (the default) rows are L2-normalised first, so neighbours are cosine neighbours.

Use: ``model = fit_tagprop(x_train, y_train, config=tagprop_config())``, then
``scores = tagprop_scores(model, x_query)`` and the package's one top-n rule
:func:`dcca_jax.tagging.recommend.select_tags`.

References:
  Guillaumin, Mensink, Verbeek, Schmid. TagProp: Discriminative metric learning in nearest neighbor models for
  image auto-annotation. ICCV 2009.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.typing import ArrayLike

from dcca_jax.tagging import recommend

WEIGHTINGS = ("rank", "distance")


def tagprop_config() -> ml_collections.ConfigDict:
    """Default configuration of :func:`fit_tagprop`."""
    c = ml_collections.ConfigDict()
    c.k = 100  # neighbours K
    c.weighting = "distance"  # "rank" or "distance"
    c.feature_groups = 1  # base distances of the "distance" weighting: blocks of features
    c.sigma_ml = True  # word-specific sigmoid (Eq. 5)
    c.l2 = 0.0  # L2 penalty on the metric parameters (log distance weights or rank logits)
    c.normalize = True  # L2-normalise feature rows first (cosine neighbours)
    c.learning_rate = 0.05
    c.epochs = 30
    c.batch_size = 500  # training images per step; 0 = full batch
    c.eps = 1e-5  # p(y) floor of the plain model: p = eps + (1 - 2 eps) x
    c.seed = 0
    c.chunk = 256  # query rows per block when computing base distances
    return c


class TagProp(NamedTuple):
    r"""A fitted TagProp model (:func:`fit_tagprop`).

    Attributes:
      params: ``{"theta": (m,) log distance weights | "g": (K,) rank logits, "log_alpha": (V,), "beta": (V,)}``
        (sigma-ML slopes :math:`\alpha_w = e^{\mathrm{log\_alpha}_w}`, positive and trained in log space, where
        Adam's steps are relative: rare words need slopes ten times the starting one).
      train_x: (n, d) training features (normalised when ``config["normalize"]``).
      train_labels: (n, V) 0/1 training tags.
      scales: (m,) mean of each base distance over the training neighbour pairs.
      config: the configuration used (a dict).
      history: per-epoch mean training loss.
    """

    params: dict[str, jax.Array]
    train_x: jax.Array
    train_labels: jax.Array
    scales: jax.Array
    config: dict[str, Any]
    history: list[float]


def _features(x: ArrayLike, *, normalize: bool) -> jax.Array:
    x = jnp.asarray(x)
    x = x.astype(jnp.result_type(x.dtype, jnp.float32))
    return recommend.l2_normalize(x) if normalize else x


def nearest_neighbours(queries: ArrayLike, items: ArrayLike, *, k: int, exclude_self: bool = False) -> jax.Array:
    r"""Indices (n_q, k) of each query's k nearest items in squared Euclidean distance, nearest first.

    .. math::
        \arg\mathrm{topk}_j\, -\|x_q - y_j\|^2 = \arg\mathrm{topk}_j\, (2\langle x_q, y_j\rangle - \|y_j\|^2)

    (the second form, an inner product of augmented vectors, goes through the bounded-memory
    :func:`dcca_jax.tagging.recommend.chunked_topk`).  With ``exclude_self`` the queries are the items
    themselves and item i is never among query i's neighbours (the leave-one-out neighbourhoods of Eq. 4).

    Args:
      queries: (n_q, d).
      items: (n_items, d); n_items >= k (>= k + 1 with ``exclude_self``).
      k: neighbours.
      exclude_self: leave each query out of its own neighbourhood (queries must be the items).

    Returns:
      (n_q, k) int32 indices into ``items``.
    """
    q, it = jnp.asarray(queries), jnp.asarray(items)
    if q.ndim != 2 or it.ndim != 2 or q.shape[1] != it.shape[1]:
        raise ValueError(f"queries {q.shape} and items {it.shape} must be (n, d) matrices with the same d")
    need = k + 1 if exclude_self else k
    if not 0 < need <= it.shape[0]:
        raise ValueError(f"K={k} neighbours need K{' + 1' if exclude_self else ''} <= n_items = {it.shape[0]} "
                         f"(items {it.shape}); lower K")
    if exclude_self and q.shape != it.shape:
        raise ValueError(f"exclude_self needs queries {q.shape} to be the items {it.shape}")
    qa = jnp.concatenate([2.0 * q, -jnp.ones((q.shape[0], 1), q.dtype)], axis=1)
    ia = jnp.concatenate([it, jnp.sum(it * it, axis=1, keepdims=True)], axis=1)
    _, idx = recommend.chunked_topk(qa, ia, k=need, cosine=False)
    if not exclude_self:
        return idx
    is_self = idx == jnp.arange(q.shape[0], dtype=idx.dtype)[:, None]
    # Self first out (it is usually the nearest); when ties pushed it out of the top K+1, drop the farthest.
    drop = jnp.where(is_self.any(1), jnp.argmax(is_self, axis=1), need - 1)
    keep = jnp.argsort(jnp.arange(need)[None, :] == drop[:, None], axis=1, stable=True)[:, :k]
    return jnp.take_along_axis(idx, keep, axis=1)


@functools.partial(jax.jit, static_argnames=("groups", "chunk"))
def base_distances(queries: ArrayLike, items: ArrayLike, neighbours: ArrayLike, *, groups: int,
                   chunk: int = 256) -> jax.Array:
    r"""Squared Euclidean distances on ``groups`` contiguous feature blocks, for each query's neighbours.

    .. math::
        d_m(q, j) = \sum_{f \in B_m} (x_{qf} - x_{jf})^2,\qquad j \in N_K(q)

    Blocks split the d features as evenly as ``numpy.array_split`` does (groups = d gives per-feature squared
    differences).  Memory: one (chunk, K, d) block at a time.

    Args:
      queries: (n_q, d).
      items: (n_items, d).
      neighbours: (n_q, K) indices into ``items``.
      groups: number of blocks m, 1 <= m <= d.
      chunk: queries per block.

    Returns:
      (n_q, K, m) base distances.
    """
    q, it, nb = jnp.asarray(queries), jnp.asarray(items), jnp.asarray(neighbours)
    d = q.shape[1]
    if it.shape[1] != d or nb.shape[0] != q.shape[0]:
        raise ValueError(f"queries {q.shape}, items {it.shape} and neighbours {nb.shape} disagree")
    if not 0 < groups <= d:
        raise ValueError(f"feature_groups={groups} must lie in [1, d={d}] (features {q.shape})")
    group_of = jnp.asarray(np.repeat(np.arange(groups), [len(a) for a in np.array_split(np.arange(d), groups)]))
    onehot = jax.nn.one_hot(group_of, groups, dtype=q.dtype)  # (d, m)
    n_q = q.shape[0]
    c = min(chunk, n_q)
    n_c = -(-n_q // c)
    qp = jnp.pad(q, ((0, n_c * c - n_q), (0, 0))).reshape(n_c, c, d)
    nbp = jnp.pad(nb, ((0, n_c * c - n_q), (0, 0))).reshape(n_c, c, -1)

    def one(args):
        qb, ib = args
        diff = qb[:, None, :] - it[ib]  # (c, K, d)
        return (diff * diff) @ onehot

    return jax.lax.map(one, (qp, nbp)).reshape(n_c * c, nb.shape[1], groups)[:n_q]


def neighbour_weights(params: dict[str, jax.Array], distances: ArrayLike | None, *, weighting: str,
                      k: int) -> jax.Array:
    r"""TagProp's neighbour weights :math:`\pi_{ij}` (Eq. 2 rank-based, Eq. 3 distance-based).

    .. math::
        \text{rank:}\ \pi_{ij} = \gamma_{r(i,j)},\ \gamma = \mathrm{softmax}(g);\qquad
        \text{distance:}\ \pi_{ij} = \frac{\exp(-d_w(i,j))}{\sum_{j' \in N_K(i)} \exp(-d_w(i,j'))},\
        d_w = \sum_m e^{\theta_m} d_m

    Args:
      params: ``{"g": (K,)}`` (rank) or ``{"theta": (m,)}`` (distance).
      distances: (n, K, m) normalised base distances (distance weighting; ignored for rank).
      weighting: ``"rank"`` or ``"distance"``.
      k: K (the number of neighbours; rank weighting's output width).

    Returns:
      (n, K) weights, non-negative, each row summing to one ((1, K) for rank: the same for every image).
    """
    if weighting == "rank":
        return jax.nn.softmax(params["g"])[None, :k]
    if weighting == "distance":
        d = jnp.asarray(distances)
        dw = d @ jnp.exp(params["theta"]).astype(d.dtype)
        return jax.nn.softmax(-dw, axis=-1)
    raise ValueError(f"unknown weighting {weighting!r}; choose from {WEIGHTINGS}")


def tag_probabilities(pi: ArrayLike, neighbour_labels: ArrayLike, params: dict[str, jax.Array], *,
                      sigma_ml: bool, eps: float) -> jax.Array:
    r"""Tag presence probabilities from the weighted neighbours (Eq. 1) and the word-specific sigmoid (Eq. 5).

    .. math::
        x_{iw} = \sum_{j} \pi_{ij} y_{jw},\qquad
        p(y_{iw} = 1) = \begin{cases} \sigma(\alpha_w x_{iw} + \beta_w) & \text{sigma-ML} \\
        \epsilon + (1 - 2\epsilon)\, x_{iw} & \text{otherwise} \end{cases}

    Args:
      pi: (n, K) or (1, K) neighbour weights.
      neighbour_labels: (n, K, V) 0/1 tags of each image's neighbours.
      params: ``{"log_alpha": (V,), "beta": (V,)}`` when ``sigma_ml`` (:math:`\alpha_w = e^{\mathrm{log\_alpha}_w}`).
      sigma_ml: apply the word-specific sigmoid.
      eps: probability floor of the plain model.

    Returns:
      (n, V) probabilities in (0, 1).
    """
    yn = jnp.asarray(neighbour_labels)
    p = jnp.asarray(pi).astype(yn.dtype)
    x = jnp.einsum("nk,nkv->nv", jnp.broadcast_to(p, yn.shape[:2]), yn)
    if sigma_ml:
        return jax.nn.sigmoid(jnp.exp(params["log_alpha"]) * x + params["beta"])
    return eps + (1.0 - 2.0 * eps) * x


def log_likelihood(params: dict[str, jax.Array], distances: ArrayLike | None, neighbour_labels: ArrayLike,
                   labels: ArrayLike, *, weighting: str, k: int, sigma_ml: bool, eps: float) -> jax.Array:
    r"""Mean log-likelihood of the tags of n images given their neighbours (Eq. 4, per image and word).

    .. math::
        \mathcal{L} = \frac{1}{nV}\sum_{i,w} y_{iw} \log p(y_{iw}=1) + (1 - y_{iw}) \log(1 - p(y_{iw}=1))

    With leave-one-out neighbourhoods (:func:`nearest_neighbours` with ``exclude_self``) this is the training
    objective of TagProp (to be maximised).

    Args:
      params: the model parameters (:func:`neighbour_weights`, :func:`tag_probabilities`).
      distances: (n, K, m) normalised base distances (distance weighting) or None.
      neighbour_labels: (n, K, V) tags of the neighbours.
      labels: (n, V) 0/1 tags of the images.
      weighting, k, sigma_ml, eps: as in :func:`neighbour_weights` and :func:`tag_probabilities`.

    Returns:
      Scalar mean log-likelihood.
    """
    y = jnp.asarray(labels)
    yn = jnp.asarray(neighbour_labels)
    if yn.ndim != 3 or y.shape != (yn.shape[0], yn.shape[2]) or yn.shape[1] != k:
        raise ValueError(f"neighbour_labels {yn.shape} must be (n, K={k}, V) for labels {y.shape} (n, V)")
    pi = neighbour_weights(params, distances, weighting=weighting, k=k)
    if sigma_ml:
        x = jnp.einsum("nk,nkv->nv", jnp.broadcast_to(pi.astype(yn.dtype), yn.shape[:2]), yn)
        z = jnp.exp(params["log_alpha"]) * x + params["beta"]
        ll = y * jax.nn.log_sigmoid(z) + (1.0 - y) * jax.nn.log_sigmoid(-z)
    else:
        p = tag_probabilities(pi, yn, params, sigma_ml=False, eps=eps)
        ll = y * jnp.log(p) + (1.0 - y) * jnp.log1p(-p)
    return jnp.mean(ll)


def _penalty(params: dict[str, jax.Array]) -> jax.Array:
    # The metric only (log distance weights or rank logits): the per-word sigmoids are not regularised (as in
    # the paper), and a penalty summed over V words would swamp the per-entry mean log-likelihood.
    return sum(jnp.sum(params[name] ** 2) for name in ("theta", "g") if name in params)


def init_params(labels: ArrayLike, *, weighting: str, k: int, groups: int, sigma_ml: bool,
                dtype: Any) -> dict[str, jax.Array]:
    r"""Starting parameters: uniform rank weights, or distance weights :math:`w_m = 1/m`; the sigmoid starts at
    :math:`\alpha_w = 8`, :math:`\beta_w = -4` for every word, close to the plain model's :math:`p = x` on
    [0, 1] (p = .02, .5, .98 at x = 0, .5, 1), so training starts from the plain model's ranking."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose from {WEIGHTINGS}")
    y = jnp.asarray(labels, dtype)
    p: dict[str, jax.Array] = {}
    if weighting == "rank":
        p["g"] = jnp.zeros(k, dtype)
    else:
        p["theta"] = jnp.full(groups, -np.log(groups), dtype)
    if sigma_ml:
        p["log_alpha"] = jnp.full(y.shape[1], np.log(8.0), dtype)
        p["beta"] = jnp.full(y.shape[1], -4.0, dtype)
    return p


def _check(x: jax.Array, y: jax.Array, k: int, weighting: str) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"features {x.shape} and labels {y.shape} must be (n, d) and (n, V) with the same n")
    if not 0 < k < x.shape[0]:
        raise ValueError(f"K={k} must lie in [1, n - 1 = {x.shape[0] - 1}] (features {x.shape}): the leave-one-out "
                         "neighbourhoods need K other training images; lower K")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose from {WEIGHTINGS}")


def fit_tagprop(x: ArrayLike, labels: ArrayLike, *,
                config: ml_collections.ConfigDict | dict[str, Any] | None = None) -> TagProp:
    """Fit TagProp on training features and tags by maximising the leave-one-out log-likelihood (Eq. 4), optax Adam.

    The K leave-one-out neighbours of every training image (and their base distances) are computed once; each
    step then takes a mini-batch of training images (``batch_size``; 0 = all) and follows the gradient of
    ``-log_likelihood + l2 * penalty``.  Raises ValueError on a non-finite loss.

    Args:
      x: (n, d) training features (any space: CNN features, CCA / KCCA / DCCA projections).
      labels: (n, V) 0/1 training tags.
      config: :func:`tagprop_config` fields (missing ones take the defaults).

    Returns:
      A :class:`TagProp`.
    """
    c = dict(tagprop_config()) | dict(config or {})
    k, weighting, sigma_ml = int(c["k"]), str(c["weighting"]), bool(c["sigma_ml"])
    xf = _features(x, normalize=bool(c["normalize"]))
    y = jnp.asarray(labels).astype(xf.dtype)
    _check(xf, y, k, weighting)
    n = xf.shape[0]
    groups = int(c["feature_groups"]) if weighting == "distance" else 1
    nb = nearest_neighbours(xf, xf, k=k, exclude_self=True)
    if weighting == "distance":
        dist = base_distances(xf, xf, nb, groups=groups, chunk=int(c["chunk"]))
        scales = jnp.maximum(dist.mean(axis=(0, 1)), jnp.finfo(xf.dtype).tiny)
        dist = dist / scales
    else:
        dist, scales = jnp.zeros((n, k, 0), xf.dtype), jnp.ones(1, xf.dtype)
    params = init_params(y, weighting=weighting, k=k, groups=groups, sigma_ml=sigma_ml, dtype=xf.dtype)
    opt = optax.adam(float(c["learning_rate"]))
    l2, eps = float(c["l2"]), float(c["eps"])

    @jax.jit
    def step(params, state, rows):
        def loss_fn(p):
            ll = log_likelihood(p, dist[rows], y[nb[rows]], y[rows], weighting=weighting, k=k, sigma_ml=sigma_ml,
                                eps=eps)
            return -ll + l2 * _penalty(p)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    state = opt.init(params)
    bs = int(c["batch_size"]) or n
    bs = min(bs, n)
    n_batches = n // bs  # a fixed batch shape (one compilation); the remainder rotates through the permutation
    key = jax.random.key(int(c["seed"]))
    history = []
    for epoch in range(int(c["epochs"])):
        perm = jax.random.permutation(jax.random.fold_in(key, epoch), n) if bs < n else jnp.arange(n)
        losses = []
        for b in range(n_batches):
            params, state, loss = step(params, state, perm[b * bs:(b + 1) * bs])
            losses.append(loss)
        mean_loss = float(jnp.mean(jnp.stack(losses)))
        if not np.isfinite(mean_loss):
            raise ValueError(f"TagProp: non-finite training loss {mean_loss} at epoch {epoch} (learning_rate="
                             f"{c['learning_rate']}, K={k}, weighting={weighting}); lower the learning rate")
        history.append(mean_loss)
    logging.info("TagProp (%s, K=%d, sigma_ml=%s, l2=%g): loss %.5f -> %.5f over %d epochs", weighting, k, sigma_ml,
                 l2, history[0] if history else float("nan"), history[-1] if history else float("nan"), len(history))
    return TagProp(params, xf, y, scales, c, history)


def tagprop_scores(model: TagProp, queries: ArrayLike) -> jax.Array:
    """Tag scores (n_q, V) of query images: p(y_qw = 1) from their K nearest training images (Eq. 1, 5).

    Pass them to :func:`dcca_jax.tagging.recommend.select_tags` for the recommended tags.

    Args:
      model: a fitted :class:`TagProp`.
      queries: (n_q, d) features in the same space as the training features.

    Returns:
      (n_q, V) probabilities (higher is better).
    """
    c = model.config
    q = _features(queries, normalize=bool(c["normalize"])).astype(model.train_x.dtype)
    if q.ndim != 2 or q.shape[1] != model.train_x.shape[1]:
        raise ValueError(f"queries {q.shape} must be (n_q, d) with the training features' d "
                         f"(train {model.train_x.shape})")
    k = int(c["k"])
    nb = nearest_neighbours(q, model.train_x, k=k)
    dist = None
    if c["weighting"] == "distance":
        dist = base_distances(q, model.train_x, nb, groups=int(model.params["theta"].shape[0]),
                              chunk=int(c["chunk"])) / model.scales
    pi = neighbour_weights(model.params, dist, weighting=c["weighting"], k=k)
    return tag_probabilities(pi, model.train_labels[nb], model.params, sigma_ml=bool(c["sigma_ml"]),
                             eps=float(c["eps"]))


def distance_weights(model: TagProp) -> jax.Array:
    """The learned non-negative weights (m,) of the base distances, in units of the normalised distances."""
    if "theta" not in model.params:
        raise ValueError("rank-based TagProp has no distance weights")
    return jnp.exp(model.params["theta"])
