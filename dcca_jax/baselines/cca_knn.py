r"""CCA-KNN (Murthy, Maji and Manmatha, ICMR 2015): CCA between CNN features and word2vec tag vectors, then kNN.

The semantic view of an image is the mean of the word vectors of its tags,

.. math::
    s_i = \frac{1}{|Y_i|} \sum_{w \in Y_i} e_w

(a zero vector for an untagged image; such images are left out of the CCA fit but stay in the kNN pool);
linear CCA relates the CNN features (optionally PCA-reduced) and these vectors; a test image is projected with the
visual map and the projections are scaled by the canonical correlations to a power p before the cosine kNN
(:func:`dcca_jax.tagging.recommend.scale_by_correlation`; Murthy et al. follow Gong et al. with p = 4).  Tags are then
transferred from the neighbours by :func:`dcca_jax.tagging.recommend.transfer_scores` (similarity-weighted votes by
default; any transfer method of :mod:`dcca_jax.tagging.recommend` applies).

The word vectors come from the caller (the project's skip-gram module, or pretrained vectors);
:func:`train_tag_word2vec` trains them with the project's skip-gram (:func:`dcca_jax.semantic.skipgram.word2vec`)
on the training images' tag lists when none are given.

References:
  Murthy, Maji, Manmatha. Automatic image annotation using deep learning representations. ICMR 2015.
  Gong, Ke, Isard, Lazebnik. A multi-view embedding space for modeling internet images, tags, and their
  semantics. IJCV 2014.
  Mikolov et al. Distributed representations of words and phrases. NIPS 2013 (skip-gram).
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.typing import ArrayLike

from dcca_jax.tagging import recommend
from dcca_jax.baselines import general_cca
from dcca_jax.semantic import skipgram


def mean_tag_vectors(labels: ArrayLike, word_vectors: ArrayLike) -> np.ndarray:
    r"""Semantic view of CCA-KNN: the mean word vector of each image's tags (zeros for an untagged image).

    Args:
      labels: (n, V) 0/1 tags.
      word_vectors: (V, d) one vector per vocabulary word (row order = label columns).

    Returns:
      (n, d) mean vectors.
    """
    y = np.asarray(labels, np.float64)
    e = np.asarray(word_vectors, np.float64)
    if y.ndim != 2 or e.ndim != 2 or y.shape[1] != e.shape[0]:
        raise ValueError(f"labels {y.shape} and word_vectors {e.shape} disagree: need (n, V) and (V, d)")
    counts = y.sum(1, keepdims=True)
    return (y @ e) / np.maximum(counts, 1.0)


def train_tag_word2vec(labels: ArrayLike, words: Sequence[str], *, dim: int = 100, window: int = 5,
                       epochs: int = 50, negative: int = 5, seed: int = 0) -> np.ndarray:
    """Skip-gram word vectors (gensim ``Word2Vec``, sg=1) trained on each training image's tag list.

    Each image is one sentence (its tags in vocabulary order); with at most 5 tags per Corel5k image a window of
    5 sees the whole sentence.  Frequent words are not down-sampled (``sample=0``).  Trained by
    :func:`dcca_jax.semantic.skipgram.word2vec` (single worker, stable hash), so the vectors are the same in every
    process for a given seed.  Words absent from the training tags get a zero vector.

    Args:
      labels: (n, V) 0/1 training tags.
      words: the V vocabulary words.
      dim: vector size.
      window: context window (5, as the paper's skip-gram).
      epochs: passes over the tag lists (the corpus is small).
      negative: negative samples.
      seed: gensim seed.

    Returns:
      (V, dim) float32 vectors, row w for ``words[w]``.
    """
    # skipgram.word2vec quiets gensim's per-epoch INFO lines around the call (no global logging change).
    y = np.asarray(labels) > 0
    if y.shape[1] != len(words):
        raise ValueError(f"labels {y.shape} has {y.shape[1]} columns but {len(words)} words were given")
    sentences = [[words[w] for w in np.flatnonzero(row)] for row in y if row.any()]
    # sample=0: no down-sampling of frequent words, which on a tag corpus would drop most "sky" and "water"
    model = skipgram.word2vec(sentences, vector_size=dim, window=window, min_count=1, negative=negative, sample=0.0,
                              epochs=epochs, seed=seed, workers=1)
    out = np.zeros((len(words), dim), np.float32)
    for i, w in enumerate(words):
        if w in model.wv:
            out[i] = model.wv[w]
    return out


def cca_knn_config() -> ml_collections.ConfigDict:
    """Defaults: PCA 300, ridge 0.1, 100 directions, correlation power 4, 10-NN similarity votes."""
    c = general_cca.general_cca_config()
    c.transfer.corr_power = 4.0
    return c


def fit_cca_knn(x_v: ArrayLike, labels: ArrayLike, word_vectors: ArrayLike, *, pca_dims: int, n_components: int,
                ridge_v: float, ridge_s: float) -> general_cca.GeneralCCA:
    """Fit CCA-KNN's CCA between visual features and mean tag vectors (untagged images left out of the fit).

    Args:
      x_v: (n, d_v) visual (CNN) features.
      labels: (n, V) 0/1 tags.
      word_vectors: (V, d_w) word vectors.
      pca_dims: PCA dimension of the visual view (0 = none).
      n_components: canonical directions, <= d_w.
      ridge_v: visual ridge (Eq. 4).
      ridge_s: semantic ridge.

    Returns:
      a :class:`dcca_jax.baselines.general_cca.GeneralCCA` whose semantic map takes mean tag vectors; use
      :func:`dcca_jax.tagging.recommend.recommend_from_model` with ``train_s = mean_tag_vectors(labels, word_vectors)``
      and ``tag_s = word_vectors`` to recommend.
    """
    s = mean_tag_vectors(labels, word_vectors)
    keep = np.asarray(labels).sum(1) > 0
    return general_cca.fit_general_cca(jnp.asarray(x_v)[keep], s[keep], pca_dims=pca_dims,
                                       n_components=n_components, ridge_v=ridge_v, ridge_s=ridge_s)
