r"""Every size hyperparameter of the pipeline, resolved from the data after the split (pure; no I/O).

A size field holds ``"auto"`` or an integer. ``"auto"`` takes the field's *target* from ``config.sizes``
(:func:`targets_config`), capped by what the data allows; an integer is used as given and must fit, or the
run stops before any expensive stage with one :class:`SizeError` that lists every problem, each with its
``--config.`` flag, the value and the limit. Nothing is clamped silently: a resolved value that differs from
its target is listed in ``results.json`` (``sizes``) and ``tables.md``.

Notation: ``n_train`` training images (the label-transfer items), ``n_fit`` / ``n_val`` its fit and
validation parts, ``n_fit_tagged`` fit images with at least one tag, ``V`` vocabulary words, ``W`` words that
occur at least ``semantic.skipgram.min_count`` times in the fit part's tags (the words that get a skip-gram
vector), ``d`` the visual feature width (CNN, hand-crafted or precomputed), ``d_v`` the visual view of the
correlation models (``code_dim``, or ``d`` without the auto-encoder), ``d_s`` the semantic view (``n_clusters``
deep words; ``V`` for ``bag_of_words``; the skip-gram size for ``mean_vectors``), ``m`` the mean number of tags
per training image, ``T.x`` the target ``config.sizes.x``.

==================================  ==========================  ===================================  =========
flag (``--config.``)                 auto                        an explicit value must be             used when
==================================  ==========================  ===================================  =========
visual.autoencoder.code_dim          min(T.code_dim, limit)      1 .. min(d, n_fit - 1)               use_autoencoder
visual.autoencoder.batch_size        min(T.ae_batch, limit)      1 .. n_fit                           use_autoencoder
semantic.n_clusters                  min(T.deep_words, W - 1);   1 .. W                               deep_words
                                     W when W <= 2
cca.n_components                     min(T.components,           1 .. min(d_v, d_s)                   "cca" in models
                                     d_v, d_s, n_fit - 1)
kcca.n_landmarks                     min(T.landmarks, n_fit)     1 .. n_fit                           solver nystrom
kcca.n_components                    min(T.components,           1 .. n_fit - 1 (exact),              "kcca" in models
                                     d_v, d_s, limit)            n_landmarks (nystrom), n_features (rff)
dcca.batch_size                      min(T.dcca_batch, n_fit)    2 .. n_fit, or 0 (full batch)        "dcca" in models
dcca.towers.out_dim                  min(T.components,           1 .. min(batch, n_val) - 1           "dcca" in models
                                     d_v, d_s, limit)
recommend.k, <baseline>.transfer.k   min(T.neighbours, n_train)  1 .. n_train                         method knn
recommend.k1, <baseline>.transfer.k1 min(T.first_pass, n_train)  1 .. n_train                         method 2pknn
recommend.n_tags                     m rounded half up, 1 .. V   1 .. V                               always
<baseline>.transfer.n_tags           recommend.n_tags            1 .. V                               the baseline
jec.k                                min(T.jec_neighbours,       1 .. n_train                         "jec"
                                     n_train)
general_cca.pca_dims                 min(T.code_dim, limit)      0 (no PCA) .. min(d, n_fit - 1)      "general_cca"
general_cca.n_components             min(T.components, limit)    1 .. min(pca_dims or d, V)           "general_cca"
cca_knn.pca_dims                     min(T.code_dim, limit)      0 .. min(d, n_fit_tagged - 1)        "cca_knn"
cca_knn.word2vec_dim                 semantic.skipgram.          >= 1                                 "cca_knn"
                                     vector_size
cca_knn.n_components                 min(T.components, V, limit) 1 .. min(pca_dims or d, word2vec)    "cca_knn"
==================================  ==========================  ===================================  =========

Why these limits: PCA and the auto-encoder's PCA start have at most ``min(d, n - 1)`` axes with variance on
centred data; k-means needs ``K <= W`` points, and ``K = W`` would make each word its own deep word (the plain
bag of words), hence ``W - 1`` for ``auto``, except that one deep word would make the semantic view constant, so
two words stay two; CCA has at most ``min(d_v, d_s)`` directions and at most ``n - 1``
with non-zero training correlation; exact kernel CCA at most ``n - 1`` (the rank of a centred kernel); the
Nystrom solver draws its landmarks from the fit rows; DCCA's batch covariance of ``out_dim`` outputs is singular
unless the batch is larger than ``out_dim``, and its held-out correlation needs more validation pairs than
components; a kNN needs ``k`` training items; ``n`` recommended tags need ``n`` words. Every component count
shares the target ``T.components``, so the correlation models and the baselines are compared at one dimension;
the baselines' PCA shares the auto-encoder's ``T.code_dim`` for the same reason.

Fields that the chosen options do not use (``kcca.n_landmarks`` with the exact solver, ``recommend.k1`` with
``method="knn"``, a baseline that is not run, ...) resolve ``auto`` unchecked and unlisted, without the data
caps of their limits (``kcca.n_landmarks`` and the ``k1`` fields take their targets, so the stage keys of the
shipped configs stay what they were).

Tags per image: 5 is the paper's protocol (``recommend.n_tags = 5``). When the mean number of tags per training
image is below half of ``n_tags``, a warning is returned (and logged and recorded by the pipeline): per-image
AP is then capped near ``m / n_tags``. ``recommend.n_tags = "auto"`` recommends ``m`` rounded half up (at least
one) instead.

The targets of the shipped configs reproduce their previous explicit values on their own datasets (the
synthetic main job and Corel5k resolve to exactly the sizes they had), so their published tables do not move.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

__all__ = [
    "AUTO",
    "size_field",
    "targets_config",
    "use_auto",
    "SIZE_FIELDS",
    "DataShape",
    "Problem",
    "Resolution",
    "SizeError",
    "resolve",
]

AUTO = "auto"

# Every size field of the pipeline config, in resolution order (later rules read earlier results).
SIZE_FIELDS = (
    "visual.autoencoder.code_dim",
    "visual.autoencoder.batch_size",
    "semantic.n_clusters",
    "cca.n_components",
    "kcca.n_landmarks",
    "kcca.n_components",
    "dcca.batch_size",
    "dcca.towers.out_dim",
    "recommend.k",
    "recommend.k1",
    "recommend.n_tags",
    "jec.k",
    "general_cca.pca_dims",
    "general_cca.n_components",
    "general_cca.transfer.k",
    "general_cca.transfer.k1",
    "general_cca.transfer.n_tags",
    "cca_knn.pca_dims",
    "cca_knn.word2vec_dim",
    "cca_knn.n_components",
    "cca_knn.transfer.k",
    "cca_knn.transfer.k1",
    "cca_knn.transfer.n_tags",
)
# recommend.n_tags keeps the paper's 5 by default; "auto" is there to choose.
_NOT_AUTO_BY_DEFAULT = ("recommend.n_tags",)


def size_field(value: int | str = AUTO) -> ml_collections.FieldReference:
    """A config field that holds ``"auto"`` or an integer (so ``--config.x=50`` and ``--config.x=auto`` both parse)."""
    return ml_collections.FieldReference(value, field_type=object)


def targets_config() -> ml_collections.ConfigDict:
    """Targets of the ``"auto"`` sizes (the paper's Corel5k sizes; library defaults where the paper has none)."""
    c = ml_collections.ConfigDict()
    c.code_dim = 300  # auto-encoder code; the baselines' PCA
    c.deep_words = 100  # k-means clusters of skip-gram tag vectors
    c.components = 100  # CCA, KCCA, DCCA output, general CCA, CCA-KNN
    c.landmarks = 1000  # Nystrom KCCA
    c.neighbours = 10  # kNN label transfer
    c.first_pass = 3  # 2PKNN items per word
    c.jec_neighbours = 5  # JEC (Makadia et al.)
    c.dcca_batch = 1000
    c.ae_batch = 128
    return c


def _get(config: ml_collections.ConfigDict, flag: str) -> Any:
    node = config
    for part in flag.split("."):
        node = node[part]
    return node


def _set(config: ml_collections.ConfigDict, flag: str, value: Any) -> None:
    *parents, leaf = flag.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value


def _has(config: ml_collections.ConfigDict, flag: str) -> bool:
    node = config
    for part in flag.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
            return False
        node = node[part]
    return True


def use_auto(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Sets every size field present in ``config`` to ``"auto"`` (``recommend.n_tags`` keeps its value but
    accepts ``auto`` from the command line); adds ``config.sizes`` (targets) when missing. Returns ``config``."""
    for flag in SIZE_FIELDS:
        if _has(config, flag):
            value = _get(config, flag) if flag in _NOT_AUTO_BY_DEFAULT else AUTO
            _set(config, flag, size_field(value))
    if "sizes" not in config:
        config.sizes = targets_config()
    return config


@dataclasses.dataclass(frozen=True)
class DataShape:
    """What the size rules read from the data after the split (counts only, no arrays)."""

    n_train: int
    n_fit: int
    n_val: int
    n_test: int
    vocabulary: int
    visual_dim: int
    n_fit_tagged: int
    fit_word_counts: tuple[int, ...]  # occurrences of each vocabulary word in the fit part's tags
    tags_per_image: float  # mean over the training images
    tags_min: int
    tags_max: int
    single_tag_share: float  # training images with exactly one tag
    untagged: int  # training images without a tag

    @classmethod
    def from_labels(cls, train_labels: np.ndarray, *, fit_rows: Sequence[int], val_rows: Sequence[int],
                    n_test: int, visual_dim: int, train_rows: Sequence[int] | None = None) -> "DataShape":
        """The shape of a split from its ``(n, V)`` 0/1 training labels and the fit/validation row indices.

        Args:
          train_labels: ``(n, V)`` labels of the training split (all its rows).
          fit_rows, val_rows: rows of ``train_labels`` in the fit and validation parts.
          n_test: test images.
          visual_dim: width of the visual features.
          train_rows: the training rows kept (default all; images whose features failed are left out).
        """
        y = np.asarray(train_labels) > 0
        rows = np.arange(len(y)) if train_rows is None else np.asarray(train_rows, np.int64)
        per_image = y[rows].sum(1) if len(rows) else np.zeros(0, int)
        fit = y[np.asarray(fit_rows, np.int64)]
        return cls(
            n_train=int(len(rows)), n_fit=int(len(fit)), n_val=int(len(val_rows)), n_test=int(n_test),
            vocabulary=int(y.shape[1]), visual_dim=int(visual_dim), n_fit_tagged=int(fit.any(1).sum()),
            fit_word_counts=tuple(int(v) for v in fit.sum(0)),
            tags_per_image=float(per_image.mean()) if len(per_image) else 0.0,
            tags_min=int(per_image.min()) if len(per_image) else 0,
            tags_max=int(per_image.max()) if len(per_image) else 0,
            single_tag_share=float((per_image == 1).mean()) if len(per_image) else 0.0,
            untagged=int((per_image == 0).sum()),
        )

    def words_with_vectors(self, min_count: int) -> int:
        """W: vocabulary words that occur at least ``min_count`` times in the fit part (they get a skip-gram vector)."""
        return sum(c >= max(1, min_count) for c in self.fit_word_counts)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["fit_words"] = sum(c > 0 for c in out.pop("fit_word_counts"))
        return out


@dataclasses.dataclass(frozen=True)
class Problem:
    """An explicit (or impossible ``auto``) size that cannot fit the data."""

    flag: str
    value: Any
    limit: str  # what the value must be, with the numbers

    def __str__(self) -> str:
        return f"--config.{self.flag}={self.value}: {self.limit}"


class SizeError(ValueError):
    """Sizes that cannot fit the data; ``problems`` lists every one (the message has one line per problem)."""

    def __init__(self, problems: Sequence[Problem], shape: DataShape | None = None):
        self.problems = tuple(problems)
        self.shape = shape
        where = "" if shape is None else (f" (train {shape.n_train} = fit {shape.n_fit} + validation {shape.n_val}, "
                                          f"test {shape.n_test}, vocabulary {shape.vocabulary}, visual {shape.visual_dim}-d)")
        lines = [f"{len(self.problems)} size(s) do not fit the data{where}; change each flag or set it to auto:"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


@dataclasses.dataclass
class Resolution:
    """The outcome of :func:`resolve`.

    Attributes:
      config: a copy of the config with every size an integer.
      values: ``{flag: value}`` of every size the run uses.
      auto: the flags among ``values`` that were ``"auto"``.
      limits: ``{flag: (lower, upper, why)}`` for the flags in ``values`` (``upper`` None: no data limit).
      targets: the targets (``config.sizes``) used.
      problems: what cannot fit; empty when the run can go ahead.
      warnings: things that run but deserve a look (few tags per image).
      shape: the data shape the rules read.
    """

    config: ml_collections.ConfigDict
    values: dict[str, int]
    auto: tuple[str, ...]
    limits: dict[str, tuple[int, int | None, str]]
    targets: dict[str, int]
    problems: list[Problem]
    warnings: list[str]
    shape: DataShape

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_problems(self) -> None:
        if self.problems:
            raise SizeError(self.problems, self.shape)

    def to_dict(self) -> dict[str, Any]:
        """For ``results.json``: every used size with its origin and limit, the targets, the data, the warnings."""
        resolved = {}
        for flag, v in self.values.items():
            lo, hi, why = self.limits[flag]
            resolved[flag] = {"value": int(v), "auto": flag in self.auto, "min": lo, "max": hi, "limit": why}
        return {"resolved": resolved, "targets": dict(self.targets), "data": self.shape.to_dict(),
                "warnings": list(self.warnings), "problems": [str(p) for p in self.problems]}


def _as_size(value: Any) -> int | str | None:
    """``"auto"``, an int, or None when the value is neither (bools and floats are not sizes)."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v == AUTO:
            return AUTO
        return int(v) if v.lstrip("-").isdigit() else None
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    return None


class _Resolver:
    def __init__(self, config: ml_collections.ConfigDict, shape: DataShape):
        import copy

        self.requested = config
        self.config = copy.deepcopy(config)
        self.shape = shape
        targets = targets_config()
        if "sizes" in config:
            targets.update(dict(config.sizes))
        self.targets = {k: int(v) for k, v in targets.items()}
        self.values: dict[str, int] = {}
        self.auto: list[str] = []
        self.limits: dict[str, tuple[int, int | None, str]] = {}
        self.problems: list[Problem] = []

    def size(self, flag: str, *, used: bool, upper: int | None, why: str, auto: int | Callable[[], int],
             lower: int = 1, allowed: Sequence[int] = ()) -> int | None:
        """Resolves one field into the config and returns the value the later rules should read.

        For a value that does not fit, the later rules read the best value that would (the limit), so that every
        problem is found in one pass: limits only grow with the sizes they depend on. None: nothing fits.
        """
        if not _has(self.config, flag):
            return None
        raw = _get(self.requested, flag)
        value = _as_size(raw)
        target = int(auto() if callable(auto) else auto)
        fits = upper is None or upper >= lower
        capped = max(lower, target if upper is None else min(target, upper))
        if not used:  # resolved without checks, not reported
            v = value if isinstance(value, int) else max(lower, target)
            _set(self.config, flag, v)
            return v
        if value is None:
            self.problems.append(Problem(flag, raw, "must be an integer or auto"))
            return capped if fits else None
        if value == AUTO:
            if not fits:
                self.problems.append(Problem(flag, AUTO, f"no value fits: must be {lower} .. {why} = {upper}"))
                return None
            v = capped
            self.auto.append(flag)
        else:
            v = value
            if v not in allowed and (v < lower or (upper is not None and v > upper)):
                bound = f"at least {lower}" if upper is None else f"between {lower} and {why} = {upper}"
                extra = f" (or {', '.join(map(str, allowed))})" if allowed else ""
                self.problems.append(Problem(flag, v, f"must be {bound}{extra}"))
                return (max(v, lower) if upper is None else min(max(v, lower), upper)) if fits else None
        _set(self.config, flag, int(v))
        self.values[flag] = int(v)
        self.limits[flag] = (lower, upper, why)
        return int(v)


def resolve(config: ml_collections.ConfigDict, shape: DataShape) -> Resolution:
    """Resolves every size field of a pipeline config from the data (the rules of the module docstring).

    Args:
      config: the pipeline config; size fields hold ``"auto"`` or integers; ``config.sizes`` the targets.
      shape: the data after the split (:meth:`DataShape.from_labels`).

    Returns:
      A :class:`Resolution`; call ``raise_if_problems()`` to stop on sizes that cannot fit.
    """
    r = _Resolver(config, shape)
    t, c, s = r.targets, r.config, shape
    models = tuple(c.get("models", ()))
    baselines = tuple(c.get("baselines", ()))
    nf1 = s.n_fit - 1

    # Visual view.
    use_ae = bool(c.visual.get("use_autoencoder", True)) if "visual" in c else False
    code = r.size("visual.autoencoder.code_dim", used=use_ae, upper=min(s.visual_dim, nf1),
                  why=f"min(d = {s.visual_dim}, n_fit - 1 = {nf1})", auto=t["code_dim"])
    r.size("visual.autoencoder.batch_size", used=use_ae, upper=s.n_fit, why="n_fit", auto=t["ae_batch"])
    d_v = (code if use_ae else s.visual_dim) or s.visual_dim

    # Semantic view.
    sem = c.get("semantic", ml_collections.ConfigDict())
    rep = sem.get("representation", "deep_words")
    w = s.words_with_vectors(int(sem.skipgram.get("min_count", 1)) if "skipgram" in sem else 1)
    k_sem = r.size("semantic.n_clusters", used=rep == "deep_words", upper=w,
                   why=f"W (words seen at least semantic.skipgram.min_count times in the {s.n_fit} fit images)",
                   auto=lambda: min(t["deep_words"], w - 1 if w > 2 else w))
    if rep == "deep_words":
        d_s = k_sem or 1
    elif rep == "bag_of_words":
        d_s = s.vocabulary
    else:
        d_s = int(sem.skipgram.vector_size)

    def components(limit: int) -> int:
        return min(t["components"], d_v, d_s, limit)

    # Correlation models.
    r.size("cca.n_components", used="cca" in models, upper=min(d_v, d_s),
           why=f"min(d_v = {d_v}, d_s = {d_s})", auto=lambda: components(nf1))
    if "kcca" in c:
        solver = c.kcca.get("solver", "exact")
        lm = r.size("kcca.n_landmarks", used="kcca" in models and solver == "nystrom", upper=s.n_fit,
                    why="n_fit", auto=t["landmarks"])
        if solver == "exact":
            kl, kwhy = nf1, "n_fit - 1 (exact solver: the rank of a centred kernel)"
        elif solver == "nystrom":
            kl, kwhy = (lm or 1), "kcca.n_landmarks"
        else:
            kl, kwhy = int(c.kcca.get("n_features", 1)), "kcca.n_features"
        r.size("kcca.n_components", used="kcca" in models, upper=kl, why=kwhy, auto=lambda: components(kl))
    if "dcca" in c:
        bs = r.size("dcca.batch_size", used="dcca" in models, upper=s.n_fit, why="n_fit", auto=t["dcca_batch"],
                    lower=2, allowed=(0,))
        batch = s.n_fit if not bs else bs
        ol = min(batch, s.n_val) - 1
        r.size("dcca.towers.out_dim", used="dcca" in models, upper=ol,
               why=f"min(dcca.batch_size = {batch}, n_val = {s.n_val}) - 1", auto=lambda: components(ol))

    # Label transfer, the tags per image, JEC.
    any_method = bool(models)
    rec = c.get("recommend", ml_collections.ConfigDict())
    r.size("recommend.k", used=any_method and rec.get("method", "knn") == "knn", upper=s.n_train, why="n_train",
           auto=t["neighbours"])
    r.size("recommend.k1", used=any_method and rec.get("method", "knn") == "2pknn", upper=s.n_train,
           why="n_train", auto=t["first_pass"])
    n_tags = r.size("recommend.n_tags", used=True, upper=s.vocabulary, why="V (vocabulary words)",
                    auto=lambda: max(1, int(np.floor(s.tags_per_image + 0.5))))
    r.size("jec.k", used="jec" in baselines, upper=s.n_train, why="n_train", auto=t["jec_neighbours"])

    # Baselines on the CNN features.
    for name, n_rows, rows_why in (("general_cca", s.n_fit, "n_fit"), ("cca_knn", s.n_fit_tagged, "n_fit_tagged")):
        if name not in c:
            continue
        used = name in baselines
        p = r.size(f"{name}.pca_dims", used=used, upper=min(s.visual_dim, n_rows - 1), lower=0,
                   why=f"min(d = {s.visual_dim}, {rows_why} - 1 = {n_rows - 1})", auto=t["code_dim"])
        p = p or s.visual_dim
        if name == "general_cca":
            kl, kwhy = min(p, s.vocabulary), f"min(pca_dims or d = {p}, V = {s.vocabulary})"
        else:
            wd = r.size("cca_knn.word2vec_dim", used=used, upper=None, why="",
                        auto=lambda: int(c.semantic.skipgram.vector_size))
            wd = wd or 1
            kl, kwhy = min(p, wd), f"min(pca_dims or d = {p}, word2vec_dim = {wd})"
        # CCA-KNN's mean tag vectors span at most V dimensions, whatever the word-vector size.
        r.size(f"{name}.n_components", used=used, upper=kl, why=kwhy,
               auto=lambda: min(t["components"], kl, s.vocabulary))
        tr = c[name].get("transfer", ml_collections.ConfigDict())
        r.size(f"{name}.transfer.k", used=used and tr.get("method", "knn") == "knn", upper=s.n_train,
               why="n_train", auto=t["neighbours"])
        r.size(f"{name}.transfer.k1", used=used and tr.get("method", "knn") == "2pknn", upper=s.n_train,
               why="n_train", auto=t["first_pass"])
        r.size(f"{name}.transfer.n_tags", used=used, upper=s.vocabulary, why="V (vocabulary words)",
               auto=lambda: n_tags or 1)

    warnings = []
    if n_tags and s.tags_per_image < n_tags / 2:
        warnings.append(
            f"the training images have {s.tags_per_image:.2f} tags on average (single-tag share "
            f"{s.single_tag_share:.0%}), far below recommend.n_tags = {n_tags}: per-image AP cannot exceed about "
            f"{min(1.0, s.tags_per_image / n_tags):.2f}. Keep 5 for the paper's protocol, or set "
            "--config.recommend.n_tags=auto (the rounded mean).")
    return Resolution(config=c, values=r.values, auto=tuple(r.auto), limits=r.limits, targets=r.targets,
                      problems=r.problems, warnings=warnings, shape=s)
