r"""Skip-gram word vectors of the tag vocabulary (paper section 2, Eq. 1-2), trained with gensim.

The textual view of the paper starts from skip-gram vectors of the annotation words: a word's vector should
predict the words around it (Eq. 1), trained with negative sampling (Eq. 2):

.. math::

    \log P(w_j \mid w_i) \approx \log \sigma(O_{w_j}^\top I_{w_i})
        + \sum_{k=1}^{m} \mathbb{E}_{w_k \sim P_n(w)} \log \sigma(-O_{w_k}^\top I_{w_i}).

**How sentences are formed.** An image's tags are a set: their order carries no meaning, so one tag list
written once would make "neighbours" out of whatever order the annotator (or the file) used. Each training
image's tag list is therefore written ``repeats`` times, each copy in an independent random order drawn from
``numpy.random.default_rng(seed)``; with the skip-gram window (5) at least as long as the typical list, every
pair of tags of an image becomes a (centre, context) pair with the same expected weight. Images with no tag
give no sentence; an image with a single tag still counts towards that tag's frequency but gives no pair.
Only the TRAINING split's tags may be passed here: test annotations must not shape the vectors.
Skip-gram makes two tags close when they predict the same context tags (second-order co-occurrence): tags
that always appear together in groups of three or more end close; two tags that only ever appear with each
other share no context and need not.

**Determinism.** Training uses one worker thread (``workers=1``; more threads make the result depend on
thread scheduling) and ``seed``. gensim seeds the initial vectors from ``numpy.random.default_rng(seed)``
(gensim >= 4) and, in :meth:`Word2Vec.seeded_vector`, from ``hashfxn(word + str(seed))``; the default
``hashfxn`` is Python's ``hash``, which is salted per process unless ``PYTHONHASHSEED`` is set. We pass
:func:`stable_hash` (CRC-32) instead, so the vectors are bit-identical across processes whatever
``PYTHONHASHSEED`` is (tested in a subprocess with two different salts).

**Storage.** :func:`save_word_vectors` writes a plain ``.npz`` (vectors, counts, words as a unicode array,
the config as JSON) that loads with ``allow_pickle=False``: no code runs when a file is read, unlike gensim's
pickle-based ``KeyedVectors.save``. :meth:`WordVectors.to_keyed_vectors` gives gensim's KeyedVectors for
``most_similar`` and friends.

References:
  T. Mikolov, I. Sutskever, K. Chen, G. Corrado and J. Dean, "Distributed representations of words and
  phrases and their compositionality", NIPS 2013.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import zlib
from collections.abc import Sequence

import ml_collections
import numpy as np

from dcca_jax._io import atomic_save_npz

__all__ = [
    "skipgram_config",
    "stable_hash",
    "tag_sentences",
    "word2vec",
    "WordVectors",
    "train_skipgram",
    "save_word_vectors",
    "load_word_vectors",
]

_FORMAT = "dcca_jax.word_vectors.v1"


def skipgram_config() -> ml_collections.ConfigDict:
    """Skip-gram hyperparameters (paper: skip-gram, window 5, negative sampling).

    Fields: vector_size, window, negative (negatives per positive pair), ns_exponent (noise distribution
    exponent, 0.75 as in word2vec), epochs, min_count (tags seen fewer times get no vector), repeats
    (shuffled copies of each image's tag list, see the module docstring), sample (frequent-word
    down-sampling threshold; 0 turns it off, which suits small tag corpora), alpha / min_alpha (linear
    learning-rate schedule), seed, workers (1 for determinism).
    """
    c = ml_collections.ConfigDict()
    c.vector_size = 100
    c.window = 5
    c.negative = 5
    c.ns_exponent = 0.75
    c.epochs = 20
    c.min_count = 1
    c.repeats = 5
    c.sample = 0.0
    c.alpha = 0.025
    c.min_alpha = 1e-4
    c.seed = 0
    c.workers = 1
    return c


def stable_hash(text: str) -> int:
    """CRC-32 of the UTF-8 bytes: a process-independent replacement for ``hash`` in gensim's seeding."""
    return zlib.crc32(text.encode("utf-8"))


def tag_sentences(tag_lists: Sequence[Sequence[str]], *, repeats: int, seed: int) -> list[list[str]]:
    """Skip-gram sentences from per-image tag sets: each list repeated ``repeats`` times, shuffled each time.

    Args:
      tag_lists: one list of tags per (training) image; duplicates inside a list are kept once.
      repeats: number of independently shuffled copies of each list (>= 1).
      seed: seed of ``numpy.random.default_rng``.

    Returns:
      ``repeats * m`` sentences, pass by pass (all images in order, then the next pass), where m is the
      number of images with at least one tag.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}.")
    rng = np.random.default_rng(seed)
    lists = [list(dict.fromkeys(tags)) for tags in tag_lists]
    lists = [tags for tags in lists if tags]
    out: list[list[str]] = []
    for _ in range(repeats):
        for tags in lists:
            out.append([tags[i] for i in rng.permutation(len(tags))])
    return out


@dataclasses.dataclass(frozen=True)
class WordVectors:
    """Trained word vectors: ``vectors[i]`` belongs to ``words[i]``; ``counts[i]`` is its training frequency.

    Attributes:
      words: tuple of V words (gensim's order: descending frequency).
      vectors: (V, dim) float32.
      counts: (V,) int64 occurrences of each word in the training tag lists (one per image).
      config: the skip-gram config as a plain dict (empty when unknown).
    """

    words: tuple[str, ...]
    vectors: np.ndarray
    counts: np.ndarray
    config: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.words) or self.counts.shape != (len(self.words),):
            raise ValueError(
                f"WordVectors needs vectors (V, dim) and counts (V,) for V={len(self.words)} words; "
                f"got {self.vectors.shape} and {self.counts.shape}."
            )
        if len(set(self.words)) != len(self.words):
            raise ValueError("WordVectors words must be unique.")
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

    @property
    def index(self) -> dict[str, int]:
        return self._index  # type: ignore[attr-defined]

    def __contains__(self, word: str) -> bool:
        return word in self._index  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.words)

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self._index[word]]  # type: ignore[attr-defined]

    def cosine(self, a: str, b: str) -> float:
        va, vb = self[a], self[b]
        return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))

    def to_keyed_vectors(self):
        """gensim ``KeyedVectors`` with the same words, vectors and counts."""
        from gensim.models import KeyedVectors

        kv = KeyedVectors(self.vectors.shape[1], count=len(self.words), dtype=self.vectors.dtype)
        kv.add_vectors(list(self.words), self.vectors)
        for w, c in zip(self.words, self.counts):
            kv.set_vecattr(w, "count", int(c))
        return kv


def word2vec(sentences: Sequence[Sequence[str]], *, vector_size: int, window: int, min_count: int = 1,
             negative: int = 5, ns_exponent: float = 0.75, sample: float = 0.0, alpha: float = 0.025,
             min_alpha: float = 1e-4, epochs: int, seed: int, workers: int = 1):
    """gensim's skip-gram with negative sampling (Eq. 1-2) on ``sentences``, reproducibly: the one Word2Vec wrapper.

    ``sg=1, hs=0``, gensim's ``seed``, and :func:`stable_hash` as ``hashfxn`` (module docstring,
    *Determinism*), so the vectors do not depend on ``PYTHONHASHSEED``; ``workers=1`` (the default) makes
    them independent of thread scheduling too. Used by :func:`train_skipgram` and by the CCA-KNN baseline
    (:func:`dcca_jax.baselines.cca_knn.train_tag_word2vec`).

    Returns:
      The trained ``gensim.models.Word2Vec``.
    """
    from gensim.models import Word2Vec  # heavy import, needed only here

    if workers != 1:
        logging.warning("skip-gram with workers=%d is not deterministic; use workers=1 to reproduce runs.", workers)
    with _quiet_gensim():
        return Word2Vec(
            sentences=sentences, vector_size=vector_size, window=window, min_count=min_count, sg=1, hs=0,
            negative=negative, ns_exponent=ns_exponent, sample=sample, alpha=alpha, min_alpha=min_alpha,
            epochs=epochs, seed=seed, workers=workers, hashfxn=stable_hash,
        )


@contextlib.contextmanager
def _quiet_gensim():
    """gensim logs INFO lines on every vocabulary build and training pass: WARNING and up only, then restore."""
    logger = logging.getLogger("gensim")
    old = logger.level
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def train_skipgram(train_tags: Sequence[Sequence[str]], *, config: ml_collections.ConfigDict | None = None) -> WordVectors:
    """Train skip-gram vectors on the training split's tag lists (Eq. 1-2 with negative sampling).

    Args:
      train_tags: one tag list per TRAINING image (strings).
      config: see :func:`skipgram_config`; missing fields take the defaults.

    Returns:
      WordVectors for every tag seen at least ``config.min_count`` times.

    Raises:
      ValueError: when no image has a tag, or no tag reaches ``min_count``.
    """
    cfg = skipgram_config()
    if config is not None:
        cfg.update(config)
    for row, tags in enumerate(train_tags):
        if isinstance(tags, str | bytes):
            raise ValueError(f"train_tags[{row}] is a single string {tags!r}; pass a list of tags per image.")
    sentences = tag_sentences(train_tags, repeats=cfg.repeats, seed=cfg.seed)
    if not sentences:
        raise ValueError("train_skipgram got no tags at all: every training tag list is empty.")
    counts: dict[str, int] = {}
    for tags in train_tags:
        for t in dict.fromkeys(tags):
            counts[t] = counts.get(t, 0) + 1
    if max(counts.values()) < cfg.min_count:
        raise ValueError(
            f"no tag occurs min_count={cfg.min_count} times in the {len(train_tags)} training lists; lower min_count."
        )
    model = word2vec(
        sentences,
        vector_size=cfg.vector_size,
        window=cfg.window,
        min_count=cfg.min_count * cfg.repeats,  # every image's tags appear `repeats` times in the corpus
        negative=cfg.negative,
        ns_exponent=cfg.ns_exponent,
        sample=cfg.sample,
        alpha=cfg.alpha,
        min_alpha=cfg.min_alpha,
        epochs=cfg.epochs,
        seed=cfg.seed,
        workers=cfg.workers,
    )
    words = tuple(model.wv.index_to_key)
    logging.info("skip-gram: %d words, %d sentences, %d epochs", len(words), len(sentences), cfg.epochs)
    return WordVectors(
        words=words,
        vectors=np.array(model.wv.vectors, np.float32),
        counts=np.array([counts[w] for w in words], np.int64),
        config=cfg.to_dict(),
    )


def save_word_vectors(path: str | os.PathLike, wv: WordVectors) -> pathlib.Path:
    """Write WordVectors to ``path`` (an ``.npz``; written atomically). Returns the path."""
    return atomic_save_npz(
        path,
        format=np.array(_FORMAT),
        words=np.array(wv.words, dtype=np.str_),
        vectors=wv.vectors,
        counts=wv.counts,
        config=np.array(json.dumps(wv.config, sort_keys=True)),
    )


def load_word_vectors(path: str | os.PathLike) -> WordVectors:
    """Read WordVectors written by :func:`save_word_vectors` (no pickle: nothing in the file is executed)."""
    path = pathlib.Path(path)
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} is not a dcca_jax word-vector file (an .npz written by save_word_vectors).")
        with z:
            if "format" not in z or str(z["format"]) != _FORMAT:
                raise ValueError(f"{path} is not a dcca_jax word-vector file (expected format {_FORMAT}).")
            return WordVectors(
                words=tuple(str(w) for w in z["words"]),
                vectors=np.asarray(z["vectors"]),
                counts=np.asarray(z["counts"]),
                config=json.loads(str(z["config"])),
            )
    except (OSError, KeyError) as e:
        raise ValueError(f"cannot read word vectors from {path}: {e}") from e

