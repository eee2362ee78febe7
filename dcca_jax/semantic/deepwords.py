r"""The semantic view: deep textual words (paper section 2), raw bag of words, mean word vectors.

Deep textual words. Skip-gram vectors of the training tags (:mod:`dcca_jax.semantic.skipgram`) are clustered with
k-means (:mod:`dcca_jax.semantic.kmeans`); each cluster is one *deep word*. An annotation (a tag list) becomes the bag
of the deep words of its tags:

.. math::

    c_k(T) = \sum_{t \in T} [\,a(t) = k\,], \qquad k = 1..K,

with :math:`a(t)` the cluster of tag t, then weighted and normalised:

- ``weighting="count"``: :math:`c_k`; ``"binary"``: :math:`[c_k > 0]`; ``"tfidf"``:
  :math:`c_k \cdot \mathrm{idf}_k`, :math:`\mathrm{idf}_k = \ln\frac{1 + N}{1 + \mathrm{df}_k} + 1` with N the
  number of training annotations and :math:`\mathrm{df}_k` how many of them contain deep word k (smoothed, as
  scikit-learn's ``TfidfTransformer``; computed on the training split only);
- ``norm="l2"`` (unit Euclidean norm), ``"l1"`` (entries sum to 1) or ``"none"``.

Baselines: the raw bag of words (binary tag vector over the tag vocabulary; the semantic view FINDINGS.md
measured CCA with) and the mean skip-gram vector of the tags (the textual view of CCA-KNN).

Defined behaviour for awkward input (never a crash, always counted in a :class:`TagReport`):

- a tag an image carries that has no entry (not in the training vocabulary, or rarer than the skip-gram
  ``min_count``): dropped, counted per tag in ``report.unknown``;
- an empty tag list, or one whose tags are all unknown: the zero vector, the row listed in
  ``report.empty_rows`` (zero rows are harmless to CCA and kNN; filter them if your model needs to);
- ``bytes`` tags: decoded as UTF-8; undecodable bytes become U+FFFD (so the tag is normally unknown) and the
  row is listed in ``report.decode_error_rows``;
- tags are stripped of surrounding whitespace, empty strings dropped, and duplicates inside one list kept
  once (an annotation is a set); ``lowercase=True`` also folds case;
- a row that is a bare string (``"sky sea"`` instead of ``["sky", "sea"]``) or holds a non-text tag raises
  ValueError naming the row: that is a caller bug, not data noise.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dcca_jax._io import atomic_save_npy, atomic_save_npz, atomic_write_text
from dcca_jax.semantic import kmeans as _kmeans
from dcca_jax.semantic import skipgram as _skipgram

__all__ = [
    "REPRESENTATIONS",
    "WEIGHTINGS",
    "NORMS",
    "semantic_config",
    "TagReport",
    "clean_tag_lists",
    "DeepWordVocabulary",
    "build_deep_words",
    "idf_weights",
    "bag_of_deep_words",
    "bag_of_words",
    "mean_word_vectors",
    "SemanticEncoder",
    "fit_semantic_encoder",
    "SemanticView",
    "semantic_view",
    "export_semantic_view",
]

REPRESENTATIONS = ("deep_words", "bag_of_words", "mean_vectors")
WEIGHTINGS = ("count", "binary", "tfidf")
NORMS = ("l2", "l1", "none")


def semantic_config() -> ml_collections.ConfigDict:
    """Semantic-view config.

    Fields: representation (one of REPRESENTATIONS), skipgram (see :func:`dcca_jax.semantic.skipgram.skipgram_config`),
    n_clusters (deep-word vocabulary size K), kmeans_n_init / kmeans_max_iter / kmeans_tol / kmeans_seed,
    normalize_vectors (L2-normalise word vectors before k-means, so clusters follow cosine similarity),
    weighting (WEIGHTINGS) and norm (NORMS) of the bag of deep words, baseline_norm (NORMS; normalisation of
    the bag_of_words and mean_vectors representations, "none" = the raw binary vector / plain mean),
    lowercase, dtype ("float32" or "float64").
    """
    c = ml_collections.ConfigDict()
    c.representation = "deep_words"
    c.skipgram = _skipgram.skipgram_config()
    c.n_clusters = 100
    c.kmeans_n_init = 10
    c.kmeans_max_iter = 300
    c.kmeans_tol = 1e-4
    c.kmeans_seed = 0
    c.normalize_vectors = True
    c.weighting = "count"
    c.norm = "l2"
    c.baseline_norm = "none"
    c.lowercase = False
    c.dtype = "float32"
    return c


@dataclasses.dataclass
class TagReport:
    """What happened to one split's tag lists while encoding.

    Attributes:
      name: the split's name (e.g. "train", "test").
      n_rows: number of tag lists.
      empty_rows: rows whose vector is zero (empty list, or every tag unknown).
      unknown: tag -> occurrences dropped because the tag has no entry.
      decode_error_rows: rows with bytes that were not valid UTF-8.
    """

    name: str
    n_rows: int = 0
    empty_rows: list[int] = dataclasses.field(default_factory=list)
    unknown: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    decode_error_rows: list[int] = dataclasses.field(default_factory=list)

    @property
    def n_unknown(self) -> int:
        return sum(self.unknown.values())

    def message(self) -> str:
        parts = [f"{self.name}: {self.n_rows} tag lists"]
        if self.unknown:
            top = ", ".join(f"{t!r} x{c}" for t, c in self.unknown.most_common(5))
            parts.append(f"{self.n_unknown} unknown tag occurrences dropped ({len(self.unknown)} distinct: {top})")
        if self.empty_rows:
            parts.append(f"{len(self.empty_rows)} rows encoded as zero vectors (no known tag), e.g. rows {self.empty_rows[:5]}")
        if self.decode_error_rows:
            parts.append(f"{len(self.decode_error_rows)} rows had invalid UTF-8 (decoded with U+FFFD), e.g. rows {self.decode_error_rows[:5]}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_rows": self.n_rows,
            "empty_rows": list(self.empty_rows),
            "n_unknown": self.n_unknown,
            "unknown": dict(self.unknown),
            "decode_error_rows": list(self.decode_error_rows),
        }


def clean_tag_lists(
    tag_lists: Sequence[Sequence[str | bytes]], *, lowercase: bool = False, name: str = "tags"
) -> tuple[list[list[str]], TagReport]:
    """Normalise tag lists: decode bytes (UTF-8), strip, drop empty strings, dedupe, optional lowercase.

    Args:
      tag_lists: one sequence of tags (str or bytes) per image.
      lowercase: fold tags to lower case.
      name: split name used in the report and error messages.

    Returns:
      The cleaned lists and a TagReport (``decode_error_rows`` filled; ``empty_rows`` lists rows left empty).

    Raises:
      ValueError: a row is a bare string/bytes, or a tag is neither str nor bytes (names the row).
    """
    report = TagReport(name=name, n_rows=len(tag_lists))
    out: list[list[str]] = []
    for row, tags in enumerate(tag_lists):
        if isinstance(tags, str | bytes):
            raise ValueError(
                f"{name}[{row}] is a single string {tags!r}; pass a list of tags per image "
                "(split a space-separated string with .split())."
            )
        clean: dict[str, None] = {}
        bad_bytes = False
        for tag in tags:
            if isinstance(tag, bytes | bytearray):
                try:
                    tag = bytes(tag).decode("utf-8")
                except UnicodeDecodeError:
                    tag = bytes(tag).decode("utf-8", errors="replace")
                    bad_bytes = True
            elif not isinstance(tag, str):
                raise ValueError(f"{name}[{row}] holds a {type(tag).__name__} tag {tag!r}; tags must be str or bytes.")
            tag = tag.strip()
            if lowercase:
                tag = tag.lower()
            if tag:
                clean[tag] = None
        if bad_bytes:
            report.decode_error_rows.append(row)
        out.append(list(clean))
    return out, report


@dataclasses.dataclass(frozen=True)
class DeepWordVocabulary:
    """The deep-word vocabulary: every known tag's cluster.

    Attributes:
      words: V tags that have a word vector.
      assignment: (V,) int cluster (deep word) of each tag.
      centroids: (K, dim) cluster centres (of the normalised vectors when ``normalize_vectors``).
      inertia: the k-means objective of the kept run.
    """

    words: tuple[str, ...]
    assignment: np.ndarray
    centroids: np.ndarray
    inertia: float

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    def members(self, k: int) -> list[str]:
        """The tags of deep word k."""
        return [w for w, a in zip(self.words, self.assignment) if a == k]


def build_deep_words(
    wv: _skipgram.WordVectors,
    *,
    n_clusters: int,
    seed: int = 0,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
    normalize_vectors: bool = True,
) -> DeepWordVocabulary:
    """Cluster word vectors into K deep words with k-means (k-means++, restarts; section 2).

    Args:
      wv: word vectors of the training tags.
      n_clusters: K, 1 <= K <= number of words.
      seed, n_init, max_iter, tol: k-means settings (:func:`dcca_jax.semantic.kmeans.kmeans`).
      normalize_vectors: L2-normalise the vectors first (cosine geometry, as word vectors are compared).

    Returns:
      DeepWordVocabulary.
    """
    if not 1 <= n_clusters <= len(wv):
        raise ValueError(
            f"n_clusters={n_clusters} deep words need 1 <= K <= the {len(wv)} tags that have a word vector; "
            "lower n_clusters (or skipgram.min_count)."
        )
    x = np.asarray(wv.vectors, np.float64 if jax.config.jax_enable_x64 else np.float32)
    if normalize_vectors:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    res = _kmeans.kmeans(x, k=n_clusters, key=jax.random.key(seed), n_init=n_init, max_iter=max_iter, tol=tol)
    if not bool(res.converged):
        logging.warning("deep words: k-means hit max_iter=%d before converging; raise kmeans_max_iter.", max_iter)
    return DeepWordVocabulary(
        words=tuple(wv.words),
        assignment=np.asarray(res.labels, np.int64),
        centroids=np.asarray(res.centroids),
        inertia=float(res.inertia),
    )


def _normalise(m: np.ndarray, norm: str) -> np.ndarray:
    if norm == "none":
        return m
    if norm == "l2":
        s = np.sqrt(np.sum(m * m, axis=1, keepdims=True))
    elif norm == "l1":
        s = np.sum(np.abs(m), axis=1, keepdims=True)
    else:
        raise ValueError(f"norm must be one of {NORMS}; got {norm!r}.")
    return m / np.where(s > 0, s, 1.0)


def _index_matrix(tag_lists: list[list[str]], index: dict[str, int], n_cols: int, report: TagReport) -> np.ndarray:
    """Counts of mapped columns per row; unknown tags counted in the report."""
    m = np.zeros((len(tag_lists), n_cols), np.float64)
    for row, tags in enumerate(tag_lists):
        for t in tags:
            j = index.get(t)
            if j is None:
                report.unknown[t] += 1
            else:
                m[row, j] += 1.0
    report.empty_rows = np.flatnonzero(m.sum(axis=1) == 0).tolist()
    return m


def idf_weights(counts: np.ndarray) -> np.ndarray:
    r"""Smoothed inverse document frequency of each column of a training count matrix.

    .. math:: \mathrm{idf}_k = \ln\frac{1 + N}{1 + \mathrm{df}_k} + 1

    Args:
      counts: (N, K) non-negative counts of the training annotations.

    Returns:
      (K,) idf.
    """
    n = counts.shape[0]
    df = np.sum(counts > 0, axis=0)
    return np.log((1.0 + n) / (1.0 + df)) + 1.0


def bag_of_deep_words(
    tag_lists: Sequence[Sequence[str | bytes]],
    vocab: DeepWordVocabulary,
    *,
    weighting: str = "count",
    norm: str = "l2",
    idf: np.ndarray | None = None,
    lowercase: bool = False,
    name: str = "tags",
) -> tuple[np.ndarray, TagReport]:
    r"""Each annotation as a bag of deep words (section 2): :math:`c_k(T) = \sum_{t\in T} [a(t)=k]`.

    Args:
      tag_lists: n tag lists.
      vocab: the deep-word vocabulary.
      weighting: "count", "binary" or "tfidf" (needs ``idf``, from the training split: :func:`idf_weights`).
      norm: "l2", "l1" or "none".
      idf: (K,) inverse document frequencies for "tfidf".
      lowercase: fold case before lookup.
      name: split name for the report.

    Returns:
      (n, K) float64 matrix and the TagReport.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}; got {weighting!r}.")
    lists, report = clean_tag_lists(tag_lists, lowercase=lowercase, name=name)
    index = {w: int(a) for w, a in zip(vocab.words, vocab.assignment)}
    m = _index_matrix(lists, index, vocab.n_clusters, report)
    if weighting == "binary":
        m = (m > 0).astype(np.float64)
    elif weighting == "tfidf":
        if idf is None or np.shape(idf) != (vocab.n_clusters,):
            raise ValueError(
                f"tfidf weighting needs idf of shape ({vocab.n_clusters},) from the training split; "
                f"got {None if idf is None else np.shape(idf)}."
            )
        m = m * np.asarray(idf)[None, :]
    return _normalise(m, norm), report


def bag_of_words(
    tag_lists: Sequence[Sequence[str | bytes]],
    vocabulary: Sequence[str],
    *,
    norm: str = "none",
    lowercase: bool = False,
    name: str = "tags",
) -> tuple[np.ndarray, TagReport]:
    """The raw bag-of-words baseline: a binary vector over the tag vocabulary (column j = vocabulary[j]).

    Args:
      tag_lists: n tag lists.
      vocabulary: V tags, in column order.
      norm: "none" (binary 0/1), "l2" or "l1".
      lowercase: fold case before lookup (the vocabulary is used as given).
      name: split name for the report.

    Returns:
      (n, V) float64 matrix and the TagReport.
    """
    index = {w: j for j, w in enumerate(vocabulary)}
    if len(index) != len(vocabulary):
        dup = [w for w, c in collections.Counter(vocabulary).items() if c > 1]
        raise ValueError(f"bag_of_words vocabulary has duplicate words {dup[:5]}.")
    lists, report = clean_tag_lists(tag_lists, lowercase=lowercase, name=name)
    return _normalise(_index_matrix(lists, index, len(vocabulary), report), norm), report


def mean_word_vectors(
    tag_lists: Sequence[Sequence[str | bytes]],
    wv: _skipgram.WordVectors,
    *,
    norm: str = "none",
    lowercase: bool = False,
    name: str = "tags",
) -> tuple[np.ndarray, TagReport]:
    r"""Mean skip-gram vector of each annotation's known tags (CCA-KNN's textual view).

    .. math:: s(T) = \frac{1}{|T \cap V|} \sum_{t \in T \cap V} v_t \quad (0 \text{ when } T \cap V = \emptyset)

    Args:
      tag_lists: n tag lists.
      wv: word vectors.
      norm: optional normalisation of the mean ("none", "l2", "l1").
      lowercase: fold case before lookup.
      name: split name for the report.

    Returns:
      (n, dim) float64 matrix and the TagReport.
    """
    lists, report = clean_tag_lists(tag_lists, lowercase=lowercase, name=name)
    counts = _index_matrix(lists, wv.index, len(wv), report)
    n_known = counts.sum(axis=1, keepdims=True)
    mean = (counts @ np.asarray(wv.vectors, np.float64)) / np.where(n_known > 0, n_known, 1.0)
    return _normalise(mean, norm), report


@dataclasses.dataclass
class SemanticEncoder:
    """A fitted semantic view: turns tag lists into vectors the same way for every split.

    Build it with :func:`fit_semantic_encoder` (or :func:`semantic_view`); ``encode`` applies it;
    ``save``/``load`` store it as a directory (config.json + arrays.npz, no pickle).
    """

    config: ml_collections.ConfigDict
    vocabulary: tuple[str, ...]
    word_vectors: _skipgram.WordVectors | None = None
    deep_words: DeepWordVocabulary | None = None
    idf: np.ndarray | None = None

    @property
    def dim(self) -> int:
        rep = self.config.representation
        if rep == "deep_words":
            return self.deep_words.n_clusters
        if rep == "bag_of_words":
            return len(self.vocabulary)
        return self.word_vectors.vectors.shape[1]

    def encode_numpy(self, tag_lists, *, name: str = "tags") -> tuple[np.ndarray, TagReport]:
        cfg = self.config
        rep = cfg.representation
        if rep == "deep_words":
            m, report = bag_of_deep_words(
                tag_lists, self.deep_words, weighting=cfg.weighting, norm=cfg.norm, idf=self.idf,
                lowercase=cfg.lowercase, name=name,
            )
        elif rep == "bag_of_words":
            m, report = bag_of_words(tag_lists, self.vocabulary, norm=cfg.baseline_norm, lowercase=cfg.lowercase, name=name)
        else:
            m, report = mean_word_vectors(tag_lists, self.word_vectors, norm=cfg.baseline_norm, lowercase=cfg.lowercase, name=name)
        if report.unknown or report.empty_rows or report.decode_error_rows:
            logging.warning("semantic view (%s): %s", rep, report.message())
        return m.astype(cfg.dtype), report

    def encode(self, tag_lists, *, name: str = "tags") -> tuple[jax.Array, TagReport]:
        """Encode n tag lists: (n, dim) jax.Array in ``config.dtype`` and the TagReport."""
        m, report = self.encode_numpy(tag_lists, name=name)
        return jnp.asarray(m), report

    def tag_vectors(self, tags: Sequence[str] | None = None) -> tuple[jax.Array, TagReport]:
        """Each single tag encoded as a one-tag annotation: (V, dim), for ranking tags in the common space.

        Args:
          tags: the tags to encode (default: ``vocabulary``); unknown ones give zero rows (reported).
        """
        tags = self.vocabulary if tags is None else tags
        return self.encode([[t] for t in tags], name="tags")

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"vocabulary": np.array(self.vocabulary, dtype=np.str_)}
        if self.word_vectors is not None:
            arrays.update(
                wv_words=np.array(self.word_vectors.words, dtype=np.str_),
                wv_vectors=self.word_vectors.vectors,
                wv_counts=self.word_vectors.counts,
            )
        if self.deep_words is not None:
            arrays.update(
                dw_words=np.array(self.deep_words.words, dtype=np.str_),
                dw_assignment=self.deep_words.assignment,
                dw_centroids=self.deep_words.centroids,
                dw_inertia=np.array(self.deep_words.inertia),
            )
        if self.idf is not None:
            arrays["idf"] = self.idf
        atomic_save_npz(path / "arrays.npz", **arrays)
        atomic_write_text(path / "config.json", json.dumps({"format": "dcca_jax.semantic_encoder.v1",
                                                      "config": self.config.to_dict()}, indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SemanticEncoder":
        path = pathlib.Path(path)
        try:
            meta = json.loads((path / "config.json").read_text())
            z = dict(np.load(path / "arrays.npz", allow_pickle=False))
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read a semantic encoder from {path}: {e}") from e
        if meta.get("format") != "dcca_jax.semantic_encoder.v1":
            raise ValueError(f"{path}/config.json is not a dcca_jax semantic encoder.")
        cfg = semantic_config()
        cfg.update(ml_collections.ConfigDict(meta["config"]))
        wv = dw = None
        if "wv_words" in z:
            wv = _skipgram.WordVectors(tuple(map(str, z["wv_words"])), z["wv_vectors"], z["wv_counts"],
                                       config=cfg.skipgram.to_dict())
        if "dw_words" in z:
            dw = DeepWordVocabulary(tuple(map(str, z["dw_words"])), z["dw_assignment"], z["dw_centroids"],
                                    float(z["dw_inertia"]))
        return cls(cfg, tuple(map(str, z["vocabulary"])), wv, dw, z.get("idf"))


def _merged_config(config) -> ml_collections.ConfigDict:
    cfg = semantic_config()
    if config is not None:
        cfg.update(config)
    if cfg.representation not in REPRESENTATIONS:
        raise ValueError(f"representation must be one of {REPRESENTATIONS}; got {cfg.representation!r}.")
    if cfg.weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}; got {cfg.weighting!r}.")
    for field in ("norm", "baseline_norm"):
        if cfg[field] not in NORMS:
            raise ValueError(f"{field} must be one of {NORMS}; got {cfg[field]!r}.")
    if cfg.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {cfg.dtype!r}.")
    return cfg


def fit_semantic_encoder(
    train_tags: Sequence[Sequence[str | bytes]],
    *,
    config: ml_collections.ConfigDict | None = None,
    vocabulary: Sequence[str] | None = None,
    word_vectors: _skipgram.WordVectors | None = None,
) -> SemanticEncoder:
    """Fit the semantic view on the TRAINING tag lists only.

    Args:
      train_tags: training tag lists.
      config: see :func:`semantic_config`.
      vocabulary: the tag vocabulary in column order (e.g. a dataset's word list); default: the sorted
        distinct training tags.
      word_vectors: pre-trained skip-gram vectors to reuse (skips training).

    Returns:
      SemanticEncoder.
    """
    cfg = _merged_config(config)
    lists, report = clean_tag_lists(train_tags, lowercase=cfg.lowercase, name="train")
    if report.decode_error_rows:
        logging.warning("semantic view: %s", report.message())
    if vocabulary is None:
        vocabulary = sorted({t for tags in lists for t in tags})
    vocabulary = tuple(vocabulary)
    enc = SemanticEncoder(cfg, vocabulary)
    if cfg.representation == "bag_of_words":
        return enc
    if word_vectors is None:
        word_vectors = _skipgram.train_skipgram(lists, config=cfg.skipgram)
    enc.word_vectors = word_vectors
    if cfg.representation == "deep_words":
        enc.deep_words = build_deep_words(
            word_vectors, n_clusters=cfg.n_clusters, seed=cfg.kmeans_seed, n_init=cfg.kmeans_n_init,
            max_iter=cfg.kmeans_max_iter, tol=cfg.kmeans_tol, normalize_vectors=cfg.normalize_vectors,
        )
        if cfg.weighting == "tfidf":
            counts, _ = bag_of_deep_words(lists, enc.deep_words, weighting="count", norm="none")
            enc.idf = idf_weights(counts)
    return enc


class SemanticView(NamedTuple):
    """Output of :func:`semantic_view`.

    Attributes:
      train: (n_train, dim) jax.Array.
      others: one (n_i, dim) jax.Array per extra split, in the order given.
      encoder: the fitted SemanticEncoder (encode more tag lists, or single tags for tag ranking).
      reports: one TagReport per split (train first).
    """

    train: jax.Array
    others: tuple[jax.Array, ...]
    encoder: SemanticEncoder
    reports: tuple[TagReport, ...]


def semantic_view(
    train_tags: Sequence[Sequence[str | bytes]],
    *other_tags: Sequence[Sequence[str | bytes]],
    config: ml_collections.ConfigDict | None = None,
    vocabulary: Sequence[str] | None = None,
    word_vectors: _skipgram.WordVectors | None = None,
    names: Sequence[str] | None = None,
) -> SemanticView:
    """The semantic view of every split, fitted on the training split (the pipeline's entry point).

    Skip-gram vectors and the deep-word clustering (and tf-idf weights) are learned from ``train_tags``
    only, then every split is encoded the same way (section 2).

    Args:
      train_tags: training tag lists.
      *other_tags: any number of further splits' tag lists (validation, test, ...).
      config: see :func:`semantic_config` (``representation`` picks deep words, raw bag of words, or mean
        word vectors).
      vocabulary: tag vocabulary in column order (bag of words); default the sorted training tags.
      word_vectors: reuse trained vectors instead of training.
      names: split names for the reports (default "train", "split1", ...).

    Returns:
      SemanticView(train, others, encoder, reports).
    """
    enc = fit_semantic_encoder(train_tags, config=config, vocabulary=vocabulary, word_vectors=word_vectors)
    if names is None:
        names = ["train"] + [f"split{i + 1}" for i in range(len(other_tags))]
    if len(names) != 1 + len(other_tags):
        raise ValueError(f"names has {len(names)} entries for {1 + len(other_tags)} splits.")
    outs, reports = [], []
    for name, tags in zip(names, (train_tags, *other_tags)):
        m, r = enc.encode(tags, name=name)
        outs.append(m)
        reports.append(r)
    return SemanticView(outs[0], tuple(outs[1:]), enc, tuple(reports))




def export_semantic_view(
    dataset, out_dir: str | os.PathLike, *, config: ml_collections.ConfigDict | None = None
) -> dict[str, Any]:
    """Fit the semantic view on ``dataset.train`` and write every split's matrix (an explicit I/O function).

    Writes ``out_dir/semantic_<split>.npy`` ((n, dim), rows in the split's order), ``out_dir/semantic_encoder/``
    (:meth:`SemanticEncoder.save`) and ``out_dir/semantic_report.json`` (dimensions, timings, TagReports, the
    deep words' member tags).

    Args:
      dataset: a :class:`dcca_jax.data.datasets.Dataset` (its vocabulary gives the bag-of-words column order).
      out_dir: destination folder (created).
      config: see :func:`semantic_config`.

    Returns:
      The report dict that was written.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(dataset.splits)
    t0 = time.perf_counter()
    view = semantic_view(
        *[dataset.splits[n].tags for n in names], config=config, vocabulary=dataset.vocabulary, names=names
    )
    seconds = time.perf_counter() - t0
    for name, m in zip(names, (view.train, *view.others)):
        atomic_save_npy(out / f"semantic_{name}.npy", np.asarray(m))
    view.encoder.save(out / "semantic_encoder")
    report: dict[str, Any] = {
        "dataset": dataset.name,
        "representation": view.encoder.config.representation,
        "dim": view.encoder.dim,
        "seconds": seconds,
        "rows": {n: int(m.shape[0]) for n, m in zip(names, (view.train, *view.others))},
        "reports": [r.to_dict() for r in view.reports],
        "config": view.encoder.config.to_dict(),
    }
    if view.encoder.deep_words is not None:
        dwv = view.encoder.deep_words
        report["deep_words"] = [dwv.members(k) for k in range(dwv.n_clusters)]
        report["kmeans_inertia"] = dwv.inertia
    atomic_write_text(out / "semantic_report.json", json.dumps(report, indent=2, ensure_ascii=False))
    return report

