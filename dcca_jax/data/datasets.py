"""Dataset loaders: Corel5k, a generic image folder with tags.tsv, NUS-WIDE, precomputed features.

Every loader takes paths (no data ships with the package) and returns the same :class:`Dataset`: the tag
vocabulary (column order of the label matrices) and a train and a test :class:`Split` holding, per image, its
id, its tag list, its row of the 0/1 label matrix and either its image path or a precomputed feature row.
Invariant: ``split.labels[i, j] == (dataset.vocabulary[j] in split.tags[i])``; tags outside the vocabulary
are dropped (and counted in ``dataset.info``).

Expected layouts (BUILD.md says where each dataset comes from):

Corel5k (:func:`load_corel5k`; the TagProp release's files)::

    root/corel5k_train_list.txt    4500 lines "1000/1003" (image = root/<line>.jpeg)
    root/corel5k_test_list.txt     499 lines
    root/corel5k_words.txt         260 words, one per line, in column order
    root/corel5k_train_annot.mat   variable annot1, (4500, 260) 0/1, rows in list order
    root/corel5k_test_annot.mat    variable annot2, (499, 260)
    root/<folder>/<id>.jpeg

Image folder (:func:`load_image_folder`; your own photos, and the built-in synthetic set)::

    root/tags.tsv          "<file name>\\t<tag> <tag> ...", UTF-8; '#' lines and blank lines ignored; a
                           name with an empty tag field is an untagged image (tags_file= elsewhere)
    root/train_list.txt    optional: one file name per line (with test_list.txt: the split)
    root/test_list.txt     optional; without both lists the split is a seeded random one
    root/vocabulary.txt    optional: the tag vocabulary, one per line; default the sorted training tags
    root/<file name>       the images: names resolve beside the tags file, or in its images/ subfolder
                           when more of them are there, or under image_root=

NUS-WIDE (:func:`load_nus_wide`; the official release from lms.comp.nus.edu.sg)::

    root/ImageList/TrainImagelist.txt   161,789 lines "actor\\0001_2124494179.jpg" (a leading
    root/ImageList/TestImagelist.txt    107,859 lines  "C:\\ImageData\\Flickr\\" is stripped)
    root/NUS_WID_Tags/TagList1k.txt     the 1,000 tags, one per line
    root/NUS_WID_Tags/Train_Tags1k.dat  one line per training image: 1,000 whitespace-separated 0/1
    root/NUS_WID_Tags/Test_Tags1k.dat
    root/ImageList/Imagelist.txt        (tag_set="all_tags") all 269,648 images, in the order of
    root/NUS_WID_Tags/All_Tags.txt      "<flickr id>  tag tag ..." lines (raw Flickr tags)
    root/NUS_WID_Tags/Final_Tag_List.txt  optional vocabulary for "all_tags" (5,018 tags)
    root/Concepts81.txt                 the 81 concepts (or root/ConceptsList/Concepts81.txt)
    root/Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt   one 0/1 per line per training image
    root/Groundtruth/TrainTestLabels/Labels_<concept>_Test.txt
    root/Flickr/<concept folder>/<file>.jpg            optional images (or image_root=...)

Precomputed features (:func:`load_features`; e.g. Corel30k, or any dataset already run through a CNN)::

    root/train_features.npy   (n_train, d) float (or .npz: one array; or .csv: optional header row)
    root/test_features.npy    (n_test, d)
    root/train_labels.npy     (n_train, V) 0/1  (or .npz, .csv; .txt: whitespace 0/1 rows; .mat: one variable)
    root/test_labels.npy      (n_test, V)
    root/vocabulary.txt       V words, one per line
    root/train_ids.txt        optional ids, one per line (default "train/<row>")
    root/test_ids.txt         optional

Problems in the files raise ValueError naming the file and line (malformed line, duplicate name, a list
entry that is not in tags.tsv, a matrix with the wrong number of rows or a value other than 0/1, features
that are not finite in float32 or are constant); the image folder can skip bad tags.tsv lines instead
(``bad_lines="skip"``, ``encoding_errors="skip"``: logged and listed in ``info["skipped_lines"]``). Images
missing from disk are logged with the path tried and raise one error, unless ``missing="skip"``: then they
are left out and listed in ``dataset.info["missing_images"]``, up to ``max_missing_fraction`` of the images.
Image files present on disk but not named in tags.tsv are ignored and counted in ``info["unlisted_files"]``.
Whether an image file decodes is not checked here: the visual stage reads every image
(:func:`dcca_jax.visual.images.open_image`) and lists the ones it cannot.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import zipfile
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from dcca_jax.training import validation_split

__all__ = [
    "IMAGE_EXTENSIONS",
    "Split",
    "Dataset",
    "labels_from_tags",
    "tags_from_labels",
    "train_validation_split",
    "load_corel5k",
    "load_image_folder",
    "load_nus_wide",
    "load_features",
    "read_tags_tsv",
    "TagsFile",
    "LOADERS",
    "load_dataset",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a dataset.

    Attributes:
      name: "train", "test", "val", ...
      ids: n unique image ids (file names relative to the dataset root where there are files).
      tags: n tag tuples (in vocabulary order; tags outside the vocabulary removed).
      labels: (n, V) uint8 0/1 matrix over ``Dataset.vocabulary``.
      image_paths: n absolute paths, or None for feature-only datasets.
      features: (n, d) precomputed features, or None.
      extra: further per-image arrays with n rows (e.g. NUS-WIDE's 81-concept ground truth).
    """

    name: str
    ids: tuple[str, ...]
    tags: tuple[tuple[str, ...], ...]
    labels: np.ndarray
    image_paths: tuple[pathlib.Path, ...] | None = None
    features: np.ndarray | None = None
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        n = len(self.ids)
        if len(self.tags) != n or self.labels.shape[0] != n:
            raise ValueError(f"Split {self.name!r}: {n} ids, {len(self.tags)} tag lists, labels {self.labels.shape}.")
        if self.image_paths is not None and len(self.image_paths) != n:
            raise ValueError(f"Split {self.name!r}: {n} ids but {len(self.image_paths)} image paths.")
        if self.features is not None and self.features.shape[0] != n:
            raise ValueError(f"Split {self.name!r}: {n} ids but features of shape {self.features.shape}.")
        for k, v in self.extra.items():
            if v.shape[0] != n:
                raise ValueError(f"Split {self.name!r}: {n} ids but extra[{k!r}] of shape {v.shape}.")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: Sequence[int] | np.ndarray, name: str | None = None) -> "Split":
        """The rows ``index`` (in that order) as a new Split."""
        index = np.asarray(index, dtype=np.int64)
        return Split(
            name=self.name if name is None else name,
            ids=tuple(self.ids[i] for i in index),
            tags=tuple(self.tags[i] for i in index),
            labels=self.labels[index],
            image_paths=None if self.image_paths is None else tuple(self.image_paths[i] for i in index),
            features=None if self.features is None else self.features[index],
            extra={k: v[index] for k, v in self.extra.items()},
        )


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset: vocabulary, train and test splits, and a record of what the loader skipped or dropped.

    Attributes:
      name: e.g. "corel5k".
      vocabulary: V tags, the column order of every ``labels`` matrix.
      train, test: the splits.
      root: the directory it was read from.
      info: counts and lists of skipped/dropped items (see each loader).
    """

    name: str
    vocabulary: tuple[str, ...]
    train: Split
    test: Split
    root: pathlib.Path | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        v = len(self.vocabulary)
        for s in (self.train, self.test):
            if s.labels.shape[1] != v:
                raise ValueError(f"{self.name}: split {s.name!r} labels {s.labels.shape} but {v} vocabulary words.")

    @property
    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "test": self.test}


def labels_from_tags(tags: Sequence[Sequence[str]], vocabulary: Sequence[str]) -> tuple[np.ndarray, collections.Counter]:
    """0/1 label matrix (n, V) from tag lists; tags outside the vocabulary are counted, not placed."""
    index = {w: j for j, w in enumerate(vocabulary)}
    m = np.zeros((len(tags), len(vocabulary)), np.uint8)
    dropped: collections.Counter = collections.Counter()
    for i, ts in enumerate(tags):
        for t in ts:
            j = index.get(t)
            if j is None:
                dropped[t] += 1
            else:
                m[i, j] = 1
    return m, dropped


def tags_from_labels(labels: np.ndarray, vocabulary: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """Tag tuples (vocabulary order) from a 0/1 label matrix."""
    return tuple(tuple(vocabulary[j] for j in np.flatnonzero(row)) for row in np.asarray(labels))


def _canonical_tags(tags: Sequence[Sequence[str]], vocabulary: Sequence[str]) -> tuple[np.ndarray, tuple, collections.Counter]:
    labels, dropped = labels_from_tags(tags, vocabulary)
    return labels, tags_from_labels(labels, vocabulary), dropped


def train_validation_split(split: Split, *, fraction: float, seed: int) -> tuple[Split, Split]:
    """Seeded random split of a training Split into (train, val): choose hyperparameters on val, never test.

    Args:
      split: the training split.
      fraction: share of rows for validation, 0 < fraction < 1.
      seed: seed of ``numpy.random.default_rng``.

    Returns:
      (train part, validation part), each keeping the original row order.
    """
    tr, val = validation_split(len(split), n_val=int(round(fraction * len(split))), seed=seed)
    return split.subset(tr, name=split.name), split.subset(val, name="val")


# ---------------------------------------------------------------------------------------------------------
# Reading helpers: every error names the file and the line.


def _read_lines(path: pathlib.Path, *, errors: str = "strict",
                skipped: list[str] | None = None) -> list[tuple[int, str]]:
    """(1-based line number, text without the newline) of every line; UTF-8 (a BOM is ignored).

    ``errors``: "strict" (a line that is not UTF-8 raises, naming it), "replace" (U+FFFD) or "skip" (the line
    is left out, logged, and described in ``skipped``).
    """
    if not path.is_file():
        raise ValueError(f"missing file {path}: see the layout in the dcca_jax.data.datasets docstring / BUILD.md.")
    out = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            raw = raw.rstrip(b"\r\n")
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                where = f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})"
                if errors == "strict":
                    raise ValueError(
                        f"{where}; re-save the file as UTF-8, or pass encoding_errors='replace' (U+FFFD) or 'skip' "
                        "(pipeline: --config.data.options.encoding_errors)."
                    ) from None
                if errors == "skip":
                    logging.warning("%s; line skipped", where)
                    if skipped is not None:
                        skipped.append(f"{where}; skipped")
                    continue
                text = raw.decode("utf-8", errors="replace")
            out.append((lineno, text))
    return out


def _read_word_list(path: pathlib.Path) -> tuple[str, ...]:
    words, seen = [], {}
    for lineno, line in _read_lines(path):
        w = line.strip()
        if not w:
            continue
        if w in seen:
            raise ValueError(f"{path}:{lineno}: duplicate word {w!r} (first on line {seen[w]}).")
        seen[w] = lineno
        words.append(w)
    if not words:
        raise ValueError(f"{path}: no words.")
    return tuple(words)


def _read_name_list(path: pathlib.Path) -> list[tuple[int, str]]:
    """Non-blank, non-comment lines of a list file; duplicates are an error."""
    out, seen = [], {}
    for lineno, line in _read_lines(path):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in seen:
            raise ValueError(f"{path}:{lineno}: duplicate entry {name!r} (first on line {seen[name]}).")
        seen[name] = lineno
        out.append((lineno, name))
    return out


def _read_binary_rows(path: pathlib.Path, n_cols: int | None) -> np.ndarray:
    """A whitespace-separated 0/1 matrix (one row per line); blank lines only allowed at the end."""
    rows = []
    lines = _read_lines(path)
    while lines and not lines[-1][1].strip():
        lines.pop()
    for lineno, line in lines:
        fields = line.split()
        if n_cols is not None and len(fields) != n_cols:
            raise ValueError(f"{path}:{lineno}: expected {n_cols} values, found {len(fields)}.")
        if any(f not in ("0", "1") for f in fields):
            bad = next(f for f in fields if f not in ("0", "1"))
            raise ValueError(f"{path}:{lineno}: value {bad!r} is not 0 or 1.")
        rows.append([f == "1" for f in fields])
    if not rows:
        raise ValueError(f"{path}: empty matrix.")
    return np.array(rows, np.uint8)


def _check_binary(m: np.ndarray, path: pathlib.Path) -> np.ndarray:
    m = np.asarray(m)
    if m.ndim != 2:
        raise ValueError(f"{path}: label matrix must be 2-D (n, V); got shape {m.shape}.")
    bad = np.argwhere((m != 0) & (m != 1))
    if len(bad):
        r, c = bad[0]
        raise ValueError(f"{path}: row {r} column {c} holds {m[r, c].item()!r}; labels must be 0/1.")
    return m.astype(np.uint8)


def _resolve_images(
    root: pathlib.Path, names: Sequence[str], where: Sequence[str], missing: str, *,
    max_missing_fraction: float = 1.0, option_hint: str = "",
) -> tuple[list[int], list[pathlib.Path], list[str]]:
    """Keep the names whose file exists under ``root``; ``where[i]`` says which file/line named names[i].

    Missing files are logged with the path tried (the first 10, then a count). ``missing="error"`` raises one
    error listing them; ``"skip"`` leaves them out, unless more than ``max_missing_fraction`` of the names are
    missing (then the error says so: the image root is probably wrong).
    """
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip'; got {missing!r}.")
    keep, paths, gone, lines = [], [], [], []
    for i, name in enumerate(names):
        p = root / name
        if p.is_file():
            keep.append(i)
            paths.append(p)
        else:
            gone.append(name)
            lines.append(f"{where[i]}: image {name!r} not found at {p}")
    if not gone:
        return keep, paths, gone
    listing = "; ".join(lines[:10]) + (f"; and {len(lines) - 10} more" if len(lines) > 10 else "")
    for line in lines[:10]:
        logging.warning("%s", line)
    if len(lines) > 10:
        logging.warning("... and %d more images not found under %s", len(lines) - 10, root)
    if missing == "error":
        raise ValueError(f"{len(gone)} of {len(names)} images not found: {listing}. Fix the list, add the files, "
                         f"point image_root at the image folder, or pass missing='skip'.{option_hint}")
    if len(gone) > max_missing_fraction * len(names):
        raise ValueError(
            f"{len(gone)} of {len(names)} images ({len(gone) / len(names):.0%}) are missing under {root}, more than "
            f"max_missing_fraction={max_missing_fraction} (pipeline: --config.data.options.max_missing_fraction): "
            f"{listing}. Is the image root right? Set image_root (--config.data.options.image_root)."
        )
    return keep, paths, gone


# ---------------------------------------------------------------------------------------------------------
# Corel5k


def load_corel5k(
    root: PathLike,
    *,
    prefix: str = "corel5k",
    extension: str = ".jpeg",
    check_images: bool = True,
    missing: str = "error",
) -> Dataset:
    """Corel5k in the TagProp release layout (see the module docstring): 4500 train / 499 test, 260 words.

    Args:
      root: the directory with the list files, ``.mat`` annotations, words file and image folders.
      prefix: file-name prefix ("corel5k"); other datasets of the same release use the same layout.
      extension: image file extension appended to each list line.
      check_images: verify that every image file exists (and fill ``image_paths``).
      missing: "error" (default) or "skip" for images not on disk.

    Returns:
      Dataset "corel5k"; ``info`` has "missing_images" and "untagged" (training images with no word: 7).
    """
    import scipy.io

    root = pathlib.Path(root)
    words = _read_word_list(root / f"{prefix}_words.txt")
    info: dict[str, Any] = {"missing_images": [], "untagged": {}}
    splits = {}
    for name, var in (("train", "annot1"), ("test", "annot2")):
        list_path = root / f"{prefix}_{name}_list.txt"
        mat_path = root / f"{prefix}_{name}_annot.mat"
        entries = _read_name_list(list_path)
        if not mat_path.is_file():
            raise ValueError(f"missing file {mat_path}: Corel5k needs {prefix}_{name}_annot.mat (variable {var}).")
        mat = scipy.io.loadmat(mat_path)
        if var not in mat:
            found = [k for k in mat if not k.startswith("__")]
            raise ValueError(f"{mat_path}: no variable {var!r} (found {found}).")
        labels = _check_binary(mat[var], mat_path)
        if labels.shape != (len(entries), len(words)):
            raise ValueError(
                f"{mat_path}: {var} has shape {labels.shape}, but {list_path} has {len(entries)} entries and "
                f"{prefix}_words.txt {len(words)} words."
            )
        ids = [e[1] for e in entries]
        paths = None
        if check_images:
            where = [f"{list_path}:{lineno}" for lineno, _ in entries]
            keep, paths, gone = _resolve_images(root, [i + extension for i in ids], where, missing)
            info["missing_images"] += gone
            ids = [ids[i] for i in keep]
            labels = labels[keep]
        tags = tags_from_labels(labels, words)
        info["untagged"][name] = int(np.sum(labels.sum(axis=1) == 0))
        splits[name] = Split(name, tuple(ids), tags, labels, None if paths is None else tuple(paths))
    return Dataset("corel5k", words, splits["train"], splits["test"], root, info)


# ---------------------------------------------------------------------------------------------------------
# Generic image folder with tags.tsv


def _check_relative_name(name: str, where: str) -> str:
    p = pathlib.PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"{where}: file name {name!r} must be relative to the dataset folder, without '..'.")
    return str(p)


class TagsFile(NamedTuple):
    """A parsed tags.tsv (:func:`read_tags_tsv`).

    Attributes:
      tags: file name -> tags (duplicates inside a line kept once, in order).
      line_of: file name -> 1-based line number.
      n_replaced: lines decoded with U+FFFD (``encoding_errors="replace"``).
      skipped: one message per line left out (``"<file>:<line>: <why>"``).
    """

    tags: dict[str, tuple[str, ...]]
    line_of: dict[str, int]
    n_replaced: int
    skipped: list[str]


_ENCODING_ERRORS = ("strict", "replace", "skip")


def read_tags_tsv(
    path: PathLike, *, encoding_errors: str = "strict", lowercase: bool = False, bad_lines: str = "error"
) -> TagsFile:
    """Parse a tags.tsv: ``<file name>\\t<tag> <tag> ...`` per line ('#' lines and blank lines ignored).

    What each problem does (every message names the file and the line):

    - a line that is not UTF-8: ``encoding_errors`` "strict" raises, "replace" decodes it with U+FFFD
      (counted), "skip" leaves the line out with a logged warning;
    - a line without exactly one TAB, or whose file name is absolute or contains '..': ``bad_lines="error"``
      raises, ``"skip"`` leaves it out with a logged warning;
    - a file name listed twice: ``"error"`` raises, ``"skip"`` keeps the first line and logs the second;
    - an empty tag field is not a problem: the image is untagged (see ``load_image_folder``'s
      ``drop_untagged_train``).

    Args:
      path: the file.
      encoding_errors: "strict", "replace" or "skip" (above).
      lowercase: fold tags to lower case.
      bad_lines: "error" or "skip" (above).

    Returns:
      A :class:`TagsFile`.
    """
    path = pathlib.Path(path)
    if encoding_errors not in _ENCODING_ERRORS:
        raise ValueError(f"encoding_errors must be one of {_ENCODING_ERRORS}; got {encoding_errors!r}.")
    if bad_lines not in ("error", "skip"):
        raise ValueError(f"bad_lines must be 'error' or 'skip'; got {bad_lines!r}.")
    tags: dict[str, tuple[str, ...]] = {}
    line_of: dict[str, int] = {}
    n_replaced = 0
    skipped: list[str] = []

    def bad(message: str) -> None:
        if bad_lines == "error":
            raise ValueError(message + " (pass bad_lines='skip' to skip such lines; pipeline: "
                             "--config.data.options.bad_lines=skip).")
        logging.warning("%s; line skipped", message)
        skipped.append(message + "; skipped")

    for lineno, line in _read_lines(path, errors=encoding_errors, skipped=skipped):
        if "\ufffd" in line and encoding_errors == "replace":
            n_replaced += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            bad(f"{path}:{lineno}: expected '<file name><TAB><space-separated tags>', found {len(fields) - 1} tabs "
                f"in {line[:80]!r}")
            continue
        try:
            name = _check_relative_name(fields[0].strip(), f"{path}:{lineno}")
        except ValueError as e:
            bad(str(e).rstrip("."))
            continue
        if name in line_of:
            bad(f"{path}:{lineno}: duplicate file name {name!r} (first on line {line_of[name]}"
                + (")" if bad_lines == "error" else ", which is kept)"))
            continue
        ts = fields[1].split()
        if lowercase:
            ts = [t.lower() for t in ts]
        tags[name] = tuple(dict.fromkeys(ts))
        line_of[name] = lineno
    if not tags:
        extra = f" ({len(skipped)} line(s) skipped: {skipped[:3]})" if skipped else ""
        raise ValueError(f"{path}: no images listed{extra}.")
    return TagsFile(tags, line_of, n_replaced, skipped)


def _choose_image_root(tags_dir: pathlib.Path, names: Sequence[str]) -> tuple[pathlib.Path, list[pathlib.Path]]:
    """The folder the names resolve in: the tags file's folder, or its ``images/`` subfolder when more of
    the names exist there (a tags.tsv beside an ``images/`` folder that names bare files)."""
    candidates = [tags_dir] + [tags_dir / d for d in ("images", "Images") if (tags_dir / d).is_dir()]
    if len(candidates) == 1:
        return tags_dir, candidates
    found = [sum((c / n).is_file() for n in names) for c in candidates]
    best = candidates[int(np.argmax(found))]  # ties go to the tags file's folder
    if best != tags_dir:
        logging.info("image folder: %d of %d names found under %s (%d beside the tags file); reading images from "
                     "there (set image_root to choose)", max(found), len(names), best, found[0])
    return best, candidates


def load_image_folder(
    root: PathLike,
    *,
    tags_file: PathLike = "tags.tsv",
    image_root: PathLike | None = None,
    train_list: PathLike | None = None,
    test_list: PathLike | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    vocabulary: Sequence[str] | None = None,
    vocabulary_file: PathLike | None = None,
    missing: str = "error",
    max_missing_fraction: float = 0.5,
    encoding_errors: str = "strict",
    bad_lines: str = "error",
    drop_untagged_train: bool = False,
    lowercase: bool = False,
    name: str | None = None,
) -> Dataset:
    """A folder of images with a ``tags.tsv`` (see the module docstring): the format for your own photos.

    File names in the tags file resolve relative to the tags file's folder; when that folder has an
    ``images/`` subfolder holding more of the names, there (logged). ``image_root`` overrides both. The split
    comes from ``train_list``/``test_list`` (default ``train_list.txt`` and ``test_list.txt`` beside the tags
    file when both exist), else from a seeded random permutation with ``test_fraction`` of the images in
    test. The vocabulary is ``vocabulary``, else ``vocabulary_file`` (default ``vocabulary.txt`` beside the
    tags file when present), else the sorted distinct TRAINING tags (test tags never seen in training cannot
    be learned; they are dropped and counted).

    Untagged images (an empty tag field) are valid: the model can recommend tags for them, so the test split
    keeps them. They cannot teach anything, so ``drop_untagged_train=True`` (the image-folder config's
    choice) leaves them out of the training split, logged and listed in ``info["untagged_dropped"]``; the
    default keeps them (Corel5k's convention; the synthetic set's annotation noise makes a few).

    Args:
      root: the folder.
      tags_file: the tags file, relative to root (or absolute).
      image_root: the folder the file names are relative to (relative to root, or absolute); default ("" or
        None) above.
      train_list, test_list: optional list files (one file name per line).
      test_fraction, seed: the random split when no lists are given.
      vocabulary, vocabulary_file: see above.
      missing: "error" (one error listing the missing files) or "skip" for images listed but not on disk;
        either way each missing file is logged with the path tried (the first 10, then a count).
      max_missing_fraction: with ``missing="skip"``, stop with an error when more than this share of the
        listed images is missing (a wrong image root, not a few lost files).
      encoding_errors, bad_lines: what non-UTF-8 lines, lines without a TAB and duplicate names do
        (:func:`read_tags_tsv`).
      drop_untagged_train: leave untagged images out of the training split (above).
      lowercase: fold tags to lower case.
      name: dataset name (default: the folder name).

    Returns:
      Dataset; ``info`` has "image_root", "missing_images", "skipped_lines" (one message per tags-file line
      left out), "unlisted_files" (count of image files not in tags.tsv), "unsplit_images" (in tags.tsv but in
      neither list), "dropped_tags" (per split: tag -> count outside the vocabulary), "untagged" (per split),
      "untagged_dropped", "replaced_lines".
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist.")
    if not 0.0 <= max_missing_fraction <= 1.0:
        raise ValueError(f"max_missing_fraction must be in [0, 1]; got {max_missing_fraction}.")
    tags_path = root / tags_file
    tags_dir = tags_path.parent
    parsed = read_tags_tsv(tags_path, encoding_errors=encoding_errors, lowercase=lowercase, bad_lines=bad_lines)
    tags, line_of = parsed.tags, parsed.line_of
    info: dict[str, Any] = {"missing_images": [], "replaced_lines": parsed.n_replaced,
                            "skipped_lines": parsed.skipped}
    if image_root not in (None, ""):
        img_root, tried = root / image_root, [root / image_root]
        if not img_root.is_dir():
            raise ValueError(f"image_root {img_root} is not a folder (pipeline: --config.data.options.image_root).")
    else:
        img_root, tried = _choose_image_root(tags_dir, list(tags))
    info["image_root"] = str(img_root)

    listed = set(tags)
    on_disk = [
        str(p.relative_to(img_root).as_posix())
        for p in img_root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    ]
    info["unlisted_files"] = sum(1 for f in on_disk if f not in listed)

    if (train_list is None and test_list is None and (tags_dir / "train_list.txt").is_file()
            and (tags_dir / "test_list.txt").is_file()):
        train_list, test_list = tags_dir / "train_list.txt", tags_dir / "test_list.txt"
    if (train_list is None) != (test_list is None):
        raise ValueError("give both train_list and test_list, or neither (random split).")
    names: dict[str, list[str]] = {}
    where: dict[str, list[str]] = {}
    if train_list is not None:
        seen_in: dict[str, str] = {}
        for split, lp in (("train", pathlib.Path(train_list)), ("test", pathlib.Path(test_list))):
            names[split], where[split] = [], []
            for lineno, entry in _read_name_list(lp):
                entry = _check_relative_name(entry, f"{lp}:{lineno}")
                if entry not in tags:
                    raise ValueError(f"{lp}:{lineno}: {entry!r} is not listed in {tags_path}.")
                if entry in seen_in:
                    raise ValueError(f"{lp}:{lineno}: {entry!r} is already in {seen_in[entry]}.")
                seen_in[entry] = f"{lp}:{lineno}"
                names[split].append(entry)
                where[split].append(f"{tags_path}:{line_of[entry]}")
        info["unsplit_images"] = len(tags) - len(seen_in)
    else:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}.")
        all_names = list(tags)
        perm = np.random.default_rng(seed).permutation(len(all_names))
        n_test = int(round(test_fraction * len(all_names)))
        if not 0 < n_test < len(all_names):
            raise ValueError(f"test_fraction={test_fraction} of {len(all_names)} images leaves an empty split.")
        test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        for split, idx in (("train", train_idx), ("test", test_idx)):
            names[split] = [all_names[i] for i in idx]
            where[split] = [f"{tags_path}:{line_of[n]}" for n in names[split]]
        info["unsplit_images"] = 0

    tried_hint = "" if len(tried) == 1 else f" (looked in {', '.join(str(t) for t in tried)})"
    both = names["train"] + names["test"]
    keep, found, gone = _resolve_images(img_root, both, where["train"] + where["test"], missing,
                                        max_missing_fraction=max_missing_fraction, option_hint=tried_hint)
    info["missing_images"] = gone
    kept = set(keep)
    n_train = len(names["train"])
    path_of = {both[i]: p for i, p in zip(keep, found)}
    for split, offset in (("train", 0), ("test", n_train)):
        names[split] = [n for k, n in enumerate(names[split]) if k + offset in kept]
        if not names[split]:
            raise ValueError(f"{tags_path}: the {split} split has no image on disk under {img_root}{tried_hint}.")
    info["untagged_dropped"] = []
    if drop_untagged_train:
        info["untagged_dropped"] = [n for n in names["train"] if not tags[n]]
        if info["untagged_dropped"]:
            logging.warning("%s: %d untagged training image(s) left out of training (they stay usable as test "
                            "images), e.g. line %d", tags_path, len(info["untagged_dropped"]),
                            line_of[info["untagged_dropped"][0]])
            names["train"] = [n for n in names["train"] if tags[n]]
            if not names["train"]:
                raise ValueError(f"{tags_path}: no training image has a tag.")

    if vocabulary is None:
        if vocabulary_file is None and (tags_dir / "vocabulary.txt").is_file():
            vocabulary_file = tags_dir / "vocabulary.txt"
        if vocabulary_file is not None:
            vocabulary = _read_word_list(pathlib.Path(vocabulary_file))
            if lowercase:
                vocabulary = tuple(dict.fromkeys(w.lower() for w in vocabulary))
        else:
            vocabulary = sorted({t for n in names["train"] for t in tags[n]})
            if not vocabulary:
                raise ValueError(f"{tags_path}: no training image has a tag.")
    vocabulary = tuple(vocabulary)
    info["dropped_tags"], info["untagged"] = {}, {}
    splits = {}
    for split in ("train", "test"):
        labels, canon, dropped = _canonical_tags([tags[n] for n in names[split]], vocabulary)
        info["dropped_tags"][split] = dict(dropped)
        info["untagged"][split] = int(np.sum(labels.sum(axis=1) == 0))
        splits[split] = Split(split, tuple(names[split]), canon, labels, tuple(path_of[n] for n in names[split]))
    return Dataset(name or root.name, vocabulary, splits["train"], splits["test"], root, info)


# ---------------------------------------------------------------------------------------------------------
# NUS-WIDE


_NUS_PREFIX = "C:\\ImageData\\Flickr\\"


def _nus_image_name(line: str) -> str:
    name = line.strip()
    if name.lower().startswith(_NUS_PREFIX.lower()):
        name = name[len(_NUS_PREFIX):]
    return name.replace("\\", "/")


def _nus_all_tags(root: pathlib.Path) -> dict[str, tuple[str, ...]]:
    """image name -> raw Flickr tags, from All_Tags.txt aligned line by line with Imagelist.txt."""
    list_path = root / "ImageList" / "Imagelist.txt"
    tags_path = root / "NUS_WID_Tags" / "All_Tags.txt"
    images = [(lineno, line) for lineno, line in _read_lines(list_path) if line.strip()]
    rows = [(lineno, line) for lineno, line in _read_lines(tags_path) if line.strip()]
    if len(images) != len(rows):
        raise ValueError(f"{tags_path}: {len(rows)} tag lines, but {list_path} lists {len(images)} images.")
    out: dict[str, tuple[str, ...]] = {}
    for (_, image), (lineno, row) in zip(images, rows):
        name = _nus_image_name(image)
        fields = row.split()
        # File names are "<index>_<flickr id>.jpg"; the tag line starts with that Flickr id.
        stem = pathlib.PurePosixPath(name).stem
        if "_" in stem and stem.rsplit("_", 1)[1] != fields[0]:
            raise ValueError(
                f"{tags_path}:{lineno}: photo id {fields[0]!r} does not match image {name!r} on the same line of "
                f"{list_path}; the two files must be in the same order."
            )
        out[name] = tuple(dict.fromkeys(fields[1:]))
    return out


def load_nus_wide(
    root: PathLike,
    *,
    tag_set: str = "tags1k",
    image_root: PathLike | None = None,
    missing: str = "error",
) -> Dataset:
    """NUS-WIDE in its official release layout (see the module docstring): 161,789 train / 107,859 test.

    Args:
      root: the folder holding ImageList/, NUS_WID_Tags/, Groundtruth/ and Concepts81.txt.
      tag_set: "tags1k" (the 1,000 most frequent Flickr user tags, TagList1k.txt + {Train,Test}_Tags1k.dat:
        the usual tag-recommendation setting), "all_tags" (every image's raw Flickr tags from
        NUS_WID_Tags/All_Tags.txt, lines "<flickr id> tag tag ..." in ImageList/Imagelist.txt order, over the
        vocabulary NUS_WID_Tags/Final_Tag_List.txt (5,018 tags) when present, else the sorted training tags;
        tags outside it are dropped and counted in ``info["dropped_tags"]``) or "concepts81" (the 81 manually
        verified concepts of Groundtruth/ as the labels).
      image_root: the folder of the images (``<concept folder>/<file>.jpg``); default ``root/Flickr`` when
        it exists. Without images ``image_paths`` is None (use precomputed features).
      missing: "error" or "skip" for images in the lists but not under image_root.

    Returns:
      Dataset "nus-wide"; every split's ``extra["concepts81"]`` is the (n, 81) ground truth and
      ``info["concepts"]`` its column names.
    """
    root = pathlib.Path(root)
    if tag_set not in ("tags1k", "all_tags", "concepts81"):
        raise ValueError(f"tag_set must be 'tags1k', 'all_tags' or 'concepts81'; got {tag_set!r}.")
    concepts_path = root / "Concepts81.txt"
    if not concepts_path.is_file() and (root / "ConceptsList" / "Concepts81.txt").is_file():
        concepts_path = root / "ConceptsList" / "Concepts81.txt"
    concepts = _read_word_list(concepts_path)
    taglist = _read_word_list(root / "NUS_WID_Tags" / "TagList1k.txt") if tag_set == "tags1k" else None
    if image_root is None and (root / "Flickr").is_dir():
        image_root = root / "Flickr"
    info: dict[str, Any] = {"missing_images": [], "concepts": concepts, "untagged": {}, "dropped_tags": {}}
    raw_tags = _nus_all_tags(root) if tag_set == "all_tags" else None
    splits = {}
    for split, cap in (("train", "Train"), ("test", "Test")):
        list_path = root / "ImageList" / f"{cap}Imagelist.txt"
        lines = _read_lines(list_path)
        while lines and not lines[-1][1].strip():
            lines.pop()
        names, seen = [], {}
        for lineno, line in lines:
            if not line.strip():
                raise ValueError(f"{list_path}:{lineno}: blank line inside the image list (rows would shift).")
            n = _check_relative_name(_nus_image_name(line), f"{list_path}:{lineno}")
            if n in seen:
                raise ValueError(f"{list_path}:{lineno}: duplicate image {n!r} (first on line {seen[n]}).")
            seen[n] = lineno
            names.append(n)
        gt = np.zeros((len(names), len(concepts)), np.uint8)
        for j, c in enumerate(concepts):
            p = root / "Groundtruth" / "TrainTestLabels" / f"Labels_{c}_{cap}.txt"
            col = _read_binary_rows(p, 1)
            if col.shape[0] != len(names):
                raise ValueError(f"{p}: {col.shape[0]} rows, but {list_path} lists {len(names)} images.")
            gt[:, j] = col[:, 0]
        if tag_set == "all_tags":
            missing_names = [(lineno, n) for (lineno, _), n in zip(lines, names) if n not in raw_tags]
            if missing_names:
                lineno, n = missing_names[0]
                raise ValueError(f"{list_path}:{lineno}: {n!r} is not in ImageList/Imagelist.txt.")
            if split == "train":
                vocab_path = root / "NUS_WID_Tags" / "Final_Tag_List.txt"
                all_vocab = (_read_word_list(vocab_path) if vocab_path.is_file()
                             else tuple(sorted({t for n in names for t in raw_tags[n]})))
            labels, dropped = labels_from_tags([raw_tags[n] for n in names], all_vocab)
            info["dropped_tags"][split] = dict(dropped)
            vocab = all_vocab
        elif tag_set == "tags1k":
            p = root / "NUS_WID_Tags" / f"{cap}_Tags1k.dat"
            labels = _read_binary_rows(p, len(taglist))
            if labels.shape[0] != len(names):
                raise ValueError(f"{p}: {labels.shape[0]} rows, but {list_path} lists {len(names)} images.")
            vocab = taglist
        else:
            labels, vocab = gt, concepts
        paths = None
        if image_root is not None:
            where = [f"{list_path}:{lineno}" for lineno, _ in lines]
            keep, paths, gone = _resolve_images(pathlib.Path(image_root), names, where, missing)
            info["missing_images"] += gone
            names, labels, gt = [names[i] for i in keep], labels[keep], gt[keep]
        info["untagged"][split] = int(np.sum(labels.sum(axis=1) == 0))
        splits[split] = Split(
            split, tuple(names), tags_from_labels(labels, vocab), labels,
            None if paths is None else tuple(paths), extra={"concepts81": gt},
        )
    return Dataset("nus-wide", tuple(vocab), splits["train"], splits["test"], root, info)


# ---------------------------------------------------------------------------------------------------------
# Precomputed features


def _load_array(path: pathlib.Path, key: str | None, *, what: str) -> np.ndarray:
    """A 2-D array from ``.npy``, ``.npz`` (the only array, or ``key``) or ``.csv`` (comma-separated, an
    optional header row); every error names the file."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
                if key is None:
                    if len(keys) != 1:
                        raise ValueError(f"{path}: holds arrays {keys}; pass {what}_key to choose one.")
                    key = keys[0]
                if key not in keys:
                    raise ValueError(f"{path}: no array {key!r} (found {keys}).")
                return z[key]
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"{path}: cannot read ({type(e).__name__}: {e}).") from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read ({type(e).__name__}: {e}); is the file complete?") from e
    if path.suffix == ".csv":
        return _read_csv(path)
    raise ValueError(f"{path}: unsupported extension {path.suffix!r} (use .npy, .npz or .csv).")


def _read_csv(path: pathlib.Path) -> np.ndarray:
    """Comma-separated numbers, one row per line; a first line that is not all numbers is a header."""
    rows, width = [], None
    for k, (lineno, line) in enumerate((ln, t) for ln, t in _read_lines(path) if t.strip()):
        fields = [f.strip() for f in line.split(",")]
        try:
            values = [float(f) for f in fields]
        except ValueError:
            if k == 0:
                continue  # a header row
            bad = next(f for f in fields if not _is_float(f))
            raise ValueError(f"{path}:{lineno}: {bad!r} is not a number.") from None
        if width is not None and len(values) != width:
            raise ValueError(f"{path}:{lineno}: {len(values)} values, but earlier rows have {width}.")
        width = len(values)
        rows.append(values)
    if not rows:
        raise ValueError(f"{path}: no rows of numbers.")
    return np.array(rows, np.float64)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_labels(path: pathlib.Path, label_key: str | None) -> np.ndarray:
    if path.suffix in (".npy", ".npz", ".csv"):
        return _check_binary(_load_array(path, label_key, what="label"), path)
    if path.suffix == ".mat":
        import scipy.io

        mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
        if label_key is None:
            if len(mat) != 1:
                raise ValueError(f"{path}: holds variables {sorted(mat)}; pass label_key to choose one.")
            label_key = next(iter(mat))
        if label_key not in mat:
            raise ValueError(f"{path}: no variable {label_key!r} (found {sorted(mat)}).")
        return _check_binary(mat[label_key], path)
    return _read_binary_rows(path, None)


def _check_features(feats: np.ndarray, path: pathlib.Path, dtype) -> np.ndarray:
    """Numeric (n, d), finite in the working dtype (1e300 overflows float32 to inf), and not constant."""
    feats = np.asarray(feats)
    if feats.ndim != 2 or not (np.issubdtype(feats.dtype, np.number) or feats.dtype == bool) or 0 in feats.shape:
        raise ValueError(f"{path}: features must be a numeric (n, d) array; got {feats.dtype} {feats.shape}.")
    with np.errstate(over="ignore", invalid="ignore"):
        work = feats.astype(dtype)
    bad = np.flatnonzero(~np.all(np.isfinite(work), axis=1))
    if len(bad):
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ValueError(
            f"{path}: {len(bad)} row(s) hold NaN or inf in {np.dtype(dtype).name} (values beyond "
            f"{float(np.finfo(dtype).max):.3g} overflow): rows {bad[:10].tolist()}{more} (0-based). Fix or drop them."
        )
    if np.all(work == work[:1]):
        what = "all zero" if not np.any(work) else "constant (every row identical)"
        raise ValueError(f"{path}: the feature matrix is {what}: it carries no information; check the export.")
    return work


def _find(root: pathlib.Path, stem: str, suffixes: Sequence[str]) -> pathlib.Path:
    for s in suffixes:
        if (root / f"{stem}{s}").is_file():
            return root / f"{stem}{s}"
    raise ValueError(f"missing file {root / stem}{{{','.join(suffixes)}}}: see the features layout in BUILD.md.")


def load_features(root: PathLike, *, name: str | None = None, label_key: str | None = None,
                  feature_key: str | None = None, dtype=np.float32) -> Dataset:
    """Precomputed features plus a 0/1 label matrix, for any dataset (e.g. Corel30k); layout in the module docstring.

    Features are read from ``.npy``, ``.npz`` or ``.csv`` (comma-separated, with or without a header row);
    labels from the same formats or ``.txt`` (whitespace 0/1 rows) or ``.mat``. Every error names the file:
    rows that are not finite in ``dtype`` (the first 10 and a count), a constant or all-zero matrix, wrong
    shapes, labels other than 0/1.

    Args:
      root: the folder with {train,test}_features.{npy,npz,csv}, {train,test}_labels.{npy,npz,csv,txt,mat},
        vocabulary.txt and optionally {train,test}_ids.txt.
      name: dataset name (default: the folder name).
      label_key: the variable/array to read from ``.mat``/``.npz`` label files holding several.
      feature_key: the array to read from ``.npz`` feature files holding several.
      dtype: the working dtype the features are checked in and returned as.

    Returns:
      Dataset with ``features`` filled and ``image_paths`` None.
    """
    root = pathlib.Path(root)
    vocab = _read_word_list(root / "vocabulary.txt")
    splits, info = {}, {"untagged": {}}
    dim = None
    for split in ("train", "test"):
        fpath = _find(root, f"{split}_features", (".npy", ".npz", ".csv"))
        feats = _check_features(_load_array(fpath, feature_key, what="feature"), fpath, dtype)
        if dim is not None and feats.shape[1] != dim:
            raise ValueError(f"{fpath}: {feats.shape[1]} feature columns, but the training features have {dim}.")
        dim = feats.shape[1]
        lpath = _find(root, f"{split}_labels", (".npy", ".npz", ".csv", ".mat", ".txt"))
        labels = _load_labels(lpath, label_key)
        if labels.shape != (feats.shape[0], len(vocab)):
            raise ValueError(
                f"{lpath}: labels of shape {labels.shape}, expected ({feats.shape[0]}, {len(vocab)}) from "
                f"{fpath.name} {feats.shape} and vocabulary.txt ({len(vocab)} words)."
            )
        ids_path = root / f"{split}_ids.txt"
        if ids_path.is_file():
            ids = [n for _, n in _read_name_list(ids_path)]
            if len(ids) != feats.shape[0]:
                raise ValueError(f"{ids_path}: {len(ids)} ids for {feats.shape[0]} feature rows.")
        else:
            ids = [f"{split}/{i}" for i in range(feats.shape[0])]
        info["untagged"][split] = int(np.sum(labels.sum(axis=1) == 0))
        splits[split] = Split(split, tuple(ids), tags_from_labels(labels, vocab), labels, None, feats)
    return Dataset(name or root.name, vocab, splits["train"], splits["test"], root, info)


LOADERS = {
    "corel5k": load_corel5k,
    "image_folder": load_image_folder,
    "nus_wide": load_nus_wide,
    "features": load_features,
}


def load_dataset(kind: str, root: PathLike, **kwargs: Any) -> Dataset:
    """Dispatch to a loader by name (for configs): kind is one of ``LOADERS`` ("corel5k", "image_folder",
    "nus_wide", "features"); keyword arguments go to that loader."""
    if kind not in LOADERS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(LOADERS)}.")
    return LOADERS[kind](root, **kwargs)
