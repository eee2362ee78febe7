"""Dataset loaders: real Corel5k, and fixtures written here in the image-folder, NUS-WIDE and features layouts."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import scipy.io
from tests.conftest import shared_path
from PIL import Image

from dcca_jax.data import datasets as ds


def _img(path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)


@pytest.mark.shared_data
def test_corel5k_standard_split():
    root = shared_path("data", "corel5k")
    d = ds.load_corel5k(root)
    assert (len(d.train), len(d.test), len(d.vocabulary)) == (4500, 499, 260)
    assert d.vocabulary[:3] == ("city", "mountain", "sky")
    assert d.train.ids[1] == "1000/1003"
    assert d.train.image_paths[1] == root / "1000" / "1003.jpeg"
    # Published statistics of the standard annotations (shared/README.md): 3.38 and 3.52 words per image,
    # 1-5 words, 7 training images without a word.
    assert d.train.labels.sum(1).mean() == pytest.approx(3.38, abs=0.005)
    assert d.test.labels.sum(1).mean() == pytest.approx(3.52, abs=0.005)
    assert d.train.labels.sum(1).max() == 5 and d.info["untagged"] == {"train": 7, "test": 0}
    # Tags and labels agree against an independent read of the .mat file.
    annot = scipy.io.loadmat(root / "corel5k_test_annot.mat")["annot2"]
    i = 17
    assert set(d.test.tags[i]) == {d.vocabulary[j] for j in np.flatnonzero(annot[i])}
    assert not set(d.train.ids) & set(d.test.ids)


def test_corel5k_layout_errors(tmp_path):
    (tmp_path / "corel5k_words.txt").write_text("sky\nsea\n")
    (tmp_path / "corel5k_train_list.txt").write_text("1/1\n1/2\n")
    (tmp_path / "corel5k_test_list.txt").write_text("1/3\n")
    for n in ("1", "2", "3"):
        _img(tmp_path / "1" / f"{n}.jpeg")
    scipy.io.savemat(tmp_path / "corel5k_train_annot.mat", {"annot1": np.array([[1, 0], [1, 1]], np.uint16)})
    scipy.io.savemat(tmp_path / "corel5k_test_annot.mat", {"annot2": np.array([[0, 1]], np.uint16)})
    d = ds.load_corel5k(tmp_path)
    assert d.train.tags == (("sky",), ("sky", "sea")) and d.test.tags == (("sea",),)
    (tmp_path / "1" / "2.jpeg").unlink()
    with pytest.raises(ValueError, match=r"corel5k_train_list.txt:2: image '1/2.jpeg' not found"):
        ds.load_corel5k(tmp_path)
    d = ds.load_corel5k(tmp_path, missing="skip")
    assert d.train.ids == ("1/1",) and d.info["missing_images"] == ["1/2.jpeg"]
    (tmp_path / "corel5k_train_list.txt").write_text("1/1\n1/2\n1/1\n")
    with pytest.raises(ValueError, match=r"train_list.txt:3: duplicate entry '1/1' \(first on line 1\)"):
        ds.load_corel5k(tmp_path, check_images=False)
    (tmp_path / "corel5k_train_list.txt").write_text("1/1\n")
    with pytest.raises(ValueError, match=r"annot1 has shape \(2, 2\).*1 entries"):
        ds.load_corel5k(tmp_path)
    scipy.io.savemat(tmp_path / "corel5k_train_annot.mat", {"annot1": np.array([[2, 0]], np.uint16)})
    with pytest.raises(ValueError, match="row 0 column 0 holds 2"):
        ds.load_corel5k(tmp_path)


def _folder(tmp_path, tsv: str, files=("a.jpg", "b.jpg", "c.png", "sub/d.jpg", "e.jpg")):
    for f in files:
        _img(tmp_path / f)
    (tmp_path / "tags.tsv").write_text(tsv, encoding="utf-8")
    return tmp_path


_TSV = "# comment\na.jpg\tsky sea sky\nb.jpg\tsky\n\nc.png\tcaf\u00e9 tree\nsub/d.jpg\t\ne.jpg\ttree sea\n"


def test_image_folder_with_lists_and_vocabulary(tmp_path):
    root = _folder(tmp_path, _TSV, files=("a.jpg", "b.jpg", "c.png", "sub/d.jpg", "e.jpg", "stray.jpg"))
    (root / "train_list.txt").write_text("a.jpg\nc.png\nsub/d.jpg\n")
    (root / "test_list.txt").write_text("b.jpg\ne.jpg\n")
    d = ds.load_image_folder(root)
    # Vocabulary: sorted training tags; duplicates within a line kept once; test-only tags dropped and counted.
    assert d.vocabulary == ("caf\u00e9", "sea", "sky", "tree")
    assert d.train.ids == ("a.jpg", "c.png", "sub/d.jpg")
    assert d.train.tags == (("sea", "sky"), ("caf\u00e9", "tree"), ())
    np.testing.assert_array_equal(d.train.labels, [[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0]])
    assert d.test.tags == (("sky",), ("sea", "tree"))
    assert d.info["unlisted_files"] == 1 and d.info["untagged"]["train"] == 1
    (root / "vocabulary.txt").write_text("sky\nsea\n")
    d = ds.load_image_folder(root)
    assert d.vocabulary == ("sky", "sea")
    assert d.info["dropped_tags"]["train"] == {"caf\u00e9": 1, "tree": 1}
    assert d.info["dropped_tags"]["test"] == {"tree": 1}
    (root / "test_list.txt").write_text("b.jpg\nnope.jpg\n")
    with pytest.raises(ValueError, match=r"test_list.txt:2: 'nope.jpg' is not listed in .*tags.tsv"):
        ds.load_image_folder(root)
    (root / "test_list.txt").write_text("b.jpg\na.jpg\n")
    with pytest.raises(ValueError, match=r"test_list.txt:2: 'a.jpg' is already in .*train_list.txt:1"):
        ds.load_image_folder(root)


def test_image_folder_random_split_is_seeded(tmp_path):
    root = _folder(tmp_path, _TSV)
    a = ds.load_image_folder(root, test_fraction=0.4, seed=3)
    b = ds.load_image_folder(root, test_fraction=0.4, seed=3)
    assert a.train.ids == b.train.ids and len(a.test) == 2 and len(a.train) == 3
    assert sorted(a.train.ids + a.test.ids) == ["a.jpg", "b.jpg", "c.png", "e.jpg", "sub/d.jpg"]
    # The split is the documented permutation.
    perm = np.random.default_rng(3).permutation(5)
    names = ["a.jpg", "b.jpg", "c.png", "sub/d.jpg", "e.jpg"]
    assert a.test.ids == tuple(names[i] for i in sorted(perm[:2]))


@pytest.mark.parametrize(
    "tsv, message",
    [
        ("a.jpg\tsky\nb.jpg sky\n", r"tags.tsv:2: expected '<file name><TAB>"),
        ("a.jpg\tsky\tsea\n", r"tags.tsv:1: expected .* found 2 tabs"),
        ("a.jpg\tsky\nb.jpg\tsea\na.jpg\ttree\n", r"tags.tsv:3: duplicate file name 'a.jpg' \(first on line 1\)"),
        ("../x.jpg\tsky\n", r"tags.tsv:1: file name '../x.jpg' must be relative"),
        ("a.jpg\tsky\nzz.jpg\tsea\n", r"tags.tsv:2: image 'zz.jpg' not found"),
    ],
)
def test_image_folder_malformed(tmp_path, tsv, message):
    root = _folder(tmp_path, tsv)
    with pytest.raises(ValueError, match=message):
        ds.load_image_folder(root, test_fraction=0.5)


def test_image_folder_missing_skip_and_encoding(tmp_path):
    root = _folder(tmp_path, "a.jpg\tsky\nb.jpg\tsea\nzz.jpg\tsky\nc.png\tsky\n")
    d = ds.load_image_folder(root, test_fraction=0.5, missing="skip")
    assert d.info["missing_images"] == ["zz.jpg"] and len(d.train) + len(d.test) == 3
    (root / "tags.tsv").write_bytes(b"a.jpg\tsky\nb.jpg\tcaf\xe9\nc.png\tsea\n")
    with pytest.raises(ValueError, match=r"tags.tsv:2: not valid UTF-8"):
        ds.load_image_folder(root)
    d = ds.load_image_folder(root, encoding_errors="replace", test_fraction=0.34, seed=0)
    assert d.info["replaced_lines"] == 1
    assert "caf\ufffd" in set(d.train.tags[0] + d.train.tags[-1] + d.test.tags[0])


def _write_nus(root: pathlib.Path, with_images=True):
    concepts = ["animal", "sky", "water"]
    taglist = ["dog", "blue", "sea", "cat"]
    (root / "ImageList").mkdir(parents=True)
    (root / "NUS_WID_Tags").mkdir()
    (root / "Groundtruth" / "TrainTestLabels").mkdir(parents=True)
    (root / "Concepts81.txt").write_text("\n".join(concepts) + "\n")
    (root / "NUS_WID_Tags" / "TagList1k.txt").write_text("\n".join(taglist) + "\n")
    train = ["C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg", "C:\\ImageData\\Flickr\\sky\\0002_1.jpg",
             "C:\\ImageData\\Flickr\\sky\\0003_2.jpg"]
    test = ["water\\0001_7.jpg", "actor\\0002_8.jpg"]
    (root / "ImageList" / "TrainImagelist.txt").write_text("\r\n".join(train) + "\r\n")
    (root / "ImageList" / "TestImagelist.txt").write_text("\n".join(test) + "\n")
    # The official .dat files are tab-separated with a trailing tab.
    tr_tags = [[1, 0, 0, 1], [0, 1, 0, 0], [0, 1, 1, 0]]
    te_tags = [[0, 0, 1, 0], [0, 0, 0, 0]]
    for name, m in (("Train", tr_tags), ("Test", te_tags)):
        (root / "NUS_WID_Tags" / f"{name}_Tags1k.dat").write_text("".join("\t".join(map(str, r)) + "\t\n" for r in m))
    gt = {"Train": [[1, 0, 0], [0, 1, 0], [0, 1, 1]], "Test": [[0, 0, 1], [1, 0, 0]]}
    for name, m in gt.items():
        for j, c in enumerate(concepts):
            (root / "Groundtruth" / "TrainTestLabels" / f"Labels_{c}_{name}.txt").write_text(
                "".join(f"{r[j]}\n" for r in m)
            )
    # The "all_tags" files: Imagelist.txt (train then test here) and All_Tags.txt, "<flickr id> tags" per line.
    (root / "ImageList" / "Imagelist.txt").write_text("\n".join(train + test) + "\n")
    raw = ["dog cat puppy", "blue sky", "blue sea beach", "sea", ""]
    ids = [line.rsplit("_", 1)[1].split(".")[0] for line in train + test]
    (root / "NUS_WID_Tags" / "All_Tags.txt").write_text("".join(f"{i}      {t}\n" for i, t in zip(ids, raw)))
    if with_images:
        for line in train + test:
            _img(root / "Flickr" / line.replace("C:\\ImageData\\Flickr\\", "").replace("\\", "/"))
    return concepts, taglist


def test_nus_wide_fixture(tmp_path):
    concepts, taglist = _write_nus(tmp_path)
    d = ds.load_nus_wide(tmp_path)
    assert d.vocabulary == tuple(taglist)
    assert d.train.ids == ("actor/0001_2124494179.jpg", "sky/0002_1.jpg", "sky/0003_2.jpg")
    assert d.train.tags == (("dog", "cat"), ("blue",), ("blue", "sea"))
    assert d.test.tags == (("sea",), ())
    np.testing.assert_array_equal(d.test.extra["concepts81"], [[0, 0, 1], [1, 0, 0]])
    assert d.train.image_paths[0] == tmp_path / "Flickr" / "actor" / "0001_2124494179.jpg"
    assert d.info["untagged"]["test"] == 1
    a = ds.load_nus_wide(tmp_path, tag_set="all_tags")
    # No Final_Tag_List.txt: the vocabulary is the sorted training tags; "sea" also occurs in test.
    assert a.vocabulary == ("beach", "blue", "cat", "dog", "puppy", "sea", "sky")
    assert a.train.tags[0] == ("cat", "dog", "puppy") and a.test.tags == (("sea",), ())
    (tmp_path / "NUS_WID_Tags" / "Final_Tag_List.txt").write_text("sea\nsky\ndog\n")
    a = ds.load_nus_wide(tmp_path, tag_set="all_tags")
    assert a.vocabulary == ("sea", "sky", "dog") and a.info["dropped_tags"]["train"]["blue"] == 2
    c = ds.load_nus_wide(tmp_path, tag_set="concepts81")
    assert c.vocabulary == tuple(concepts) and c.train.tags[2] == ("sky", "water")


def test_nus_wide_errors(tmp_path):
    _write_nus(tmp_path, with_images=False)
    d = ds.load_nus_wide(tmp_path)
    assert d.train.image_paths is None
    tags_file = tmp_path / "NUS_WID_Tags" / "All_Tags.txt"
    lines = tags_file.read_text().splitlines()
    tags_file.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"All_Tags.txt:1: photo id '1' does not match image 'actor/0001_2124494179.jpg'"):
        ds.load_nus_wide(tmp_path, tag_set="all_tags")
    p = tmp_path / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Test.txt"
    p.write_text("0\n1\n1\n")
    with pytest.raises(ValueError, match=r"Labels_sky_Test.txt: 3 rows, but .*TestImagelist.txt lists 2"):
        ds.load_nus_wide(tmp_path)
    p.write_text("0\n2\n")
    with pytest.raises(ValueError, match=r"Labels_sky_Test.txt:2: value '2' is not 0 or 1"):
        ds.load_nus_wide(tmp_path)
    p.write_text("0\n1\n")
    (tmp_path / "NUS_WID_Tags" / "Test_Tags1k.dat").write_text("0 0 1\n0 0 0 0\n")
    with pytest.raises(ValueError, match=r"Test_Tags1k.dat:1: expected 4 values, found 3"):
        ds.load_nus_wide(tmp_path)
    (tmp_path / "NUS_WID_Tags" / "Test_Tags1k.dat").write_text("0 0 1 0\n0 0 0 0\n")
    _img(tmp_path / "imgs" / "water" / "0001_7.jpg")
    with pytest.raises(ValueError, match=r"TrainImagelist.txt:1: image 'actor/0001_2124494179.jpg' not found"):
        ds.load_nus_wide(tmp_path, image_root=tmp_path / "imgs")
    d = ds.load_nus_wide(tmp_path, image_root=tmp_path / "imgs", missing="skip")
    assert len(d.train) == 0 and d.test.ids == ("water/0001_7.jpg",) and len(d.info["missing_images"]) == 4


def test_features_loader(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train_features.npy", rng.normal(size=(4, 3)).astype(np.float32))
    np.save(tmp_path / "test_features.npy", rng.normal(size=(2, 3)).astype(np.float32))
    (tmp_path / "vocabulary.txt").write_text("a\nb\nc\n")
    np.save(tmp_path / "train_labels.npy", np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1]]))
    (tmp_path / "test_labels.txt").write_text("0 0 1\n1 0 0\n")
    (tmp_path / "test_ids.txt").write_text("x\ny\n")
    d = ds.load_features(tmp_path, name="corel30k")
    assert d.name == "corel30k" and d.train.features.shape == (4, 3) and d.test.ids == ("x", "y")
    assert d.train.tags[1] == ("b", "c") and d.test.tags == (("c",), ("a",))
    assert d.info["untagged"]["train"] == 1
    scipy.io.savemat(tmp_path / "test_labels.mat", {"L": np.array([[0, 0, 1], [1, 0, 0]])})
    (tmp_path / "test_labels.txt").unlink()
    np.testing.assert_array_equal(ds.load_features(tmp_path).test.labels, [[0, 0, 1], [1, 0, 0]])
    np.save(tmp_path / "train_labels.npy", np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"train_labels.npy: labels of shape \(3, 3\), expected \(4, 3\)"):
        ds.load_features(tmp_path)
    np.save(tmp_path / "train_labels.npy", np.zeros((4, 3)))
    bad = rng.normal(size=(4, 3))
    bad[2, 1] = np.nan
    np.save(tmp_path / "train_features.npy", bad)
    with pytest.raises(ValueError, match=r"train_features.npy: 1 row\(s\) hold NaN or inf in float32 .*rows \[2\]"):
        ds.load_features(tmp_path)


def _features_root(tmp_path, train, test, *, fmt="npy", header=False):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "vocabulary.txt").write_text("a\nb\n")
    for split, x in (("train", train), ("test", test)):
        labels = (np.arange(len(x))[:, None] % 2 == np.arange(2)).astype(np.uint8)
        for stem, arr in ((f"{split}_features", np.asarray(x)), (f"{split}_labels", labels)):
            for old in tmp_path.glob(stem + ".*"):
                old.unlink()
            if fmt == "npy":
                np.save(tmp_path / f"{stem}.npy", arr)
            elif fmt == "npz":
                np.savez(tmp_path / f"{stem}.npz", arr)
            else:
                head = ",".join(f"c{j}" for j in range(arr.shape[1])) + "\n" if header else ""
                rows = "".join(",".join(repr(float(v)) for v in r) + "\n" for r in arr)
                (tmp_path / f"{stem}.csv").write_text(head + rows)
    return tmp_path


@pytest.mark.parametrize("fmt, header", [("npz", False), ("csv", False), ("csv", True)])
def test_features_npz_and_csv_match_npy(tmp_path, fmt, header):
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(5, 3)), rng.normal(size=(3, 3))
    ref = ds.load_features(_features_root(tmp_path / "npy", train, test))
    got = ds.load_features(_features_root(tmp_path / fmt, train, test, fmt=fmt, header=header))
    np.testing.assert_array_equal(got.train.features, ref.train.features)
    np.testing.assert_array_equal(got.test.labels, ref.test.labels)
    assert got.train.features.dtype == np.float32


def test_features_errors_name_the_file_and_rows(tmp_path):
    rng = np.random.default_rng(2)
    train = rng.normal(size=(15, 3))
    train[[1, 3]] = 1e300  # finite in float64, inf in float32
    train[4:14, 0] = np.inf
    root = _features_root(tmp_path, train, rng.normal(size=(3, 3)))
    with pytest.raises(ValueError, match=r"train_features.npy: 12 row\(s\) hold NaN or inf in float32 .*"
                                         r"rows \[1, 3, 4, 5, 6, 7, 8, 9, 10, 11\] and 2 more"):
        ds.load_features(root)
    root = _features_root(tmp_path, np.zeros((4, 3)), rng.normal(size=(3, 3)))
    with pytest.raises(ValueError, match=r"train_features.npy: the feature matrix is all zero"):
        ds.load_features(root)
    root = _features_root(tmp_path, rng.normal(size=(4, 3)), np.full((3, 3), 7.0), fmt="csv")
    with pytest.raises(ValueError, match=r"test_features.csv: the feature matrix is constant"):
        ds.load_features(root)
    (root / "test_features.csv").write_text("x,y,z\n1,2,3\n4,five,6\n")
    with pytest.raises(ValueError, match=r"test_features.csv:3: 'five' is not a number"):
        ds.load_features(root)
    (root / "test_features.csv").unlink()
    np.savez(root / "test_features.npz", a=np.ones((3, 3)), b=np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"test_features.npz: holds arrays \['a', 'b'\]; pass feature_key"):
        ds.load_features(root)
    (root / "test_features.npz").write_bytes((root / "train_labels.csv").read_bytes()[:5])
    with pytest.raises(ValueError, match=r"test_features.npz: cannot read"):
        ds.load_features(root)


def test_split_subset_and_validation():
    labels = np.eye(5, dtype=np.uint8)
    s = ds.Split("train", tuple("abcde"), ds.tags_from_labels(labels, "vwxyz"), labels, features=np.arange(10.0).reshape(5, 2))
    tr, va = ds.train_validation_split(s, fraction=0.4, seed=0)
    assert len(tr) == 3 and len(va) == 2 and va.name == "val"
    assert sorted(tr.ids + va.ids) == list("abcde")
    i = s.ids.index(va.ids[0])
    np.testing.assert_array_equal(va.features[0], s.features[i])
    assert va.tags[0] == ("vwxyz"[i],)
    with pytest.raises(ValueError, match="empty part"):
        ds.train_validation_split(s, fraction=0.01, seed=0)


def test_load_dataset_dispatch(tmp_path):
    root = _folder(tmp_path, _TSV)
    d = ds.load_dataset("image_folder", root, test_fraction=0.4, seed=3)
    assert d.train.ids == ds.load_image_folder(root, test_fraction=0.4, seed=3).train.ids
    with pytest.raises(ValueError, match="unknown dataset kind 'coco'"):
        ds.load_dataset("coco", root)


def test_image_folder_tags_beside_images_folder_and_overrides(tmp_path):
    # tags.tsv beside images/ naming bare files: resolved in images/ (more names found there).
    for f in ("a.jpg", "b.jpg", "c.jpg"):
        _img(tmp_path / "images" / f)
    (tmp_path / "tags.tsv").write_text("a.jpg\tsky\nb.jpg\tsea\nc.jpg\tsky sea\n")
    d = ds.load_image_folder(tmp_path, test_fraction=0.34)
    assert d.info["image_root"] == str(tmp_path / "images")
    assert all(p.parent == tmp_path / "images" and p.is_file() for p in d.train.image_paths + d.test.image_paths)
    # Explicit tags_file and image_root (relative to root): names resolve under image_root.
    (tmp_path / "meta").mkdir()
    (tmp_path / "tags.tsv").rename(tmp_path / "meta" / "labels.tsv")
    (tmp_path / "images").rename(tmp_path / "pics")
    with pytest.raises(ValueError, match=r"3 of 3 images not found: .*labels.tsv:1: image 'a.jpg' not found at "
                                         r".*meta/a.jpg"):
        ds.load_image_folder(tmp_path, tags_file="meta/labels.tsv", test_fraction=0.34)
    d = ds.load_image_folder(tmp_path, tags_file="meta/labels.tsv", image_root="pics", test_fraction=0.34)
    assert sorted(p.name for p in d.train.image_paths + d.test.image_paths) == ["a.jpg", "b.jpg", "c.jpg"]
    with pytest.raises(ValueError, match=r"image_root .*nowhere is not a folder.*--config.data.options.image_root"):
        ds.load_image_folder(tmp_path, tags_file="meta/labels.tsv", image_root="nowhere")


def test_image_folder_missing_files_are_logged_and_bounded(tmp_path, caplog):
    names = [f"{i:02d}.png" for i in range(30)]
    for n in names[:18]:
        _img(tmp_path / n)
    (tmp_path / "tags.tsv").write_text("".join(f"{n}\tt{i % 3}\n" for i, n in enumerate(names)))
    with caplog.at_level("WARNING"):
        d = ds.load_image_folder(tmp_path, missing="skip", test_fraction=0.25)
    assert sorted(d.info["missing_images"]) == names[18:] and len(d.train) + len(d.test) == 18
    found = [r.getMessage() for r in caplog.records if "not found at" in r.getMessage()]
    assert len(found) == 10 and all(str(tmp_path) in m and "tags.tsv:" in m for m in found)
    assert any("and 2 more" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match=r"12 of 30 images \(40%\) are missing .* more than max_missing_fraction=0.3 "
                                         r"\(pipeline: --config.data.options.max_missing_fraction\)"):
        ds.load_image_folder(tmp_path, missing="skip", max_missing_fraction=0.3, test_fraction=0.25)


def test_image_folder_bad_lines_skipped_with_their_line(tmp_path, caplog):
    for f in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"):
        _img(tmp_path / f)
    (tmp_path / "tags.tsv").write_bytes(
        b"a.jpg\tsky\nb.jpg sky sea\nc.jpg\tsea\na.jpg\ttree\nd.jpg\tcaf\xe9\ne.jpg\t\nx\ty\tz\n")
    with pytest.raises(ValueError, match=r"tags.tsv:5: not valid UTF-8"):
        ds.load_image_folder(tmp_path, bad_lines="skip")
    with caplog.at_level("WARNING"):
        d = ds.load_image_folder(tmp_path, bad_lines="skip", encoding_errors="skip", drop_untagged_train=True,
                                 train_list=None, test_fraction=0.4, seed=1)
    assert len([r for r in caplog.records if "line skipped" in r.getMessage()]) == 4
    skipped = d.info["skipped_lines"]
    assert [m.split(": ", 1)[0].rsplit(":", 1)[1] for m in skipped] == ["5", "2", "4", "7"]
    assert "duplicate file name 'a.jpg' (first on line 1, which is kept)" in skipped[2]
    assert all(str(tmp_path / "tags.tsv") in m for m in skipped)
    every = d.train.ids + d.test.ids + tuple(d.info["untagged_dropped"])
    assert sorted(every) == ["a.jpg", "c.jpg", "e.jpg"]
    parsed = ds.read_tags_tsv(tmp_path / "tags.tsv", bad_lines="skip", encoding_errors="skip")
    assert parsed.tags == {"a.jpg": ("sky",), "c.jpg": ("sea",), "e.jpg": ()} and parsed.line_of["e.jpg"] == 6
    # The untagged image never trains; in test it stays (a photo to tag).
    assert all(t for t in d.train.tags)
