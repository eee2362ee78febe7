"""The tagger bundle and API against the pipeline that wrote it (tiny test config), and the two binaries."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dcca_jax import Tagger, _io, pipeline
from dcca_jax.data import datasets
from dcca_jax.tagging import bundle, metrics, outputs, recommend
from tests.conftest import ROOT, tiny_pipeline_config

EXPERIMENTS = ROOT / "experiments"


@pytest.fixture(scope="module")
def run(pipeline_run):
    workdir, results = pipeline_run  # the session's one run of the test config (tests/conftest.py)
    p = pipeline.Pipeline(tiny_pipeline_config(), workdir)
    data, rows = p.stage_data(), p.rows()
    test_paths = [os.fspath(data["test"].image_paths[i]) for i in rows["test"]]
    return {"workdir": workdir, "bundle": workdir / "tagger", "results": results, "pipeline": p,
            "test_paths": test_paths, "truth": p.views().labels["test"]}


@pytest.fixture(scope="module")
def photos(run, tmp_path_factory):
    """A folder of 6 readable test images (one in a subfolder), a corrupt JPEG and an empty PNG."""
    d = tmp_path_factory.mktemp("photos")
    (d / "sub").mkdir()
    for i, src in enumerate(run["test_paths"][:6]):
        shutil.copy(src, d / ("sub" if i == 5 else ".") / pathlib.Path(src).name)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    (d / "empty.png").write_bytes(b"")
    return d


def test_bundle_reproduces_the_pipelines_test_scores(run):
    saved = run["pipeline"].recommend_scores()
    prior = recommend.tag_prior(run["pipeline"].views().labels["train"])
    for name in ("cca", "kcca", "dcca"):
        tg = Tagger.load(run["bundle"], model=name)
        feats, ok, failed = tg.features(run["test_paths"])
        assert ok.all() and not failed
        scores = tg.tag_scores(tg.visual_codes(feats))
        # Same backbone, auto-encoder, projection and transfer: CCA and DCCA bit for bit; KCCA's jitted kernel
        # rows may differ in the last float32 bits.
        np.testing.assert_allclose(scores, saved[name], rtol=1e-5, atol=1e-5, err_msg=name)
        if name != "kcca":
            np.testing.assert_array_equal(scores, saved[name], err_msg=name)
        want = np.asarray(recommend.select_tags(saved[name], n=5, prior=prior, fill="prior").indices)
        got = tg.tag(run["test_paths"], n=5)
        vocab = {w: j for j, w in enumerate(tg.vocabulary)}
        np.testing.assert_array_equal([[vocab[t] for t, _ in row] for row in got], want, err_msg=name)
        for row, ref in zip(got, saved[name]):
            np.testing.assert_allclose([s for _, s in row], ref[[vocab[t] for t, _ in row]], rtol=1e-5, atol=1e-5)


def test_bundle_round_trip_and_default_model(run, tmp_path):
    manifest = bundle.read_manifest(run["bundle"])
    assert manifest["format"] == bundle.FORMAT and manifest["format_version"] == bundle.FORMAT_VERSION
    spec = json.loads((run["bundle"] / "tagger.json").read_text())
    f1 = {m: v["val_per_word_F1"] for m, v in spec["models"].items()}
    assert set(f1) == {"cca", "kcca", "dcca"} and spec["default_model"] == max(f1, key=f1.get)
    assert run["results"]["tagger"]["default_model"] == spec["default_model"]
    assert spec["backbone"] == {"name": "handcrafted"} and spec["vocabulary"] == list(run["pipeline"].stage_data()[
        "dataset"].vocabulary)
    tg = Tagger.load(run["bundle"])
    assert tg.model_name == spec["default_model"]
    model, _ = run["pipeline"].stage_model(tg.model_name)
    v = run["pipeline"].views()
    np.testing.assert_array_equal(tg.model.transform(v.v["test"], v.s["test"])[0],
                                  model.transform(v.v["test"], v.s["test"])[0])
    # Exporting again keeps an up-to-date bundle (same source key), byte for byte.
    before = (run["bundle"] / "manifest.json").read_bytes()
    bundle.export_bundle(run["pipeline"], run["bundle"])
    assert (run["bundle"] / "manifest.json").read_bytes() == before
    # An added index is saved and reloaded into a fresh tagger with the same search results.
    assert tg.index(run["test_paths"][:10])["added"] == 10
    hits = tg.search("sky", k=5, collection="added")
    tg.save_index(tmp_path / "idx")
    again = Tagger.load(run["bundle"])
    assert again.load_index(tmp_path / "idx") == 10
    assert again.search("sky", k=5, collection="added") == hits


def test_search_ranks_images_carrying_the_tag_first(run):
    tg = Tagger.load(run["bundle"])
    paths, truth = run["test_paths"], run["truth"]
    assert tg.index(paths)["added"] == len(paths)
    row = {p: i for i, p in enumerate(paths)}
    aps, n_rel = [], []
    for j, word in enumerate(tg.vocabulary):
        if truth[:, j].sum() == 0:
            continue
        hits = tg.search([word], k=len(paths), collection="added")
        rel = np.array([truth[row[p], j] for p, _ in hits])[None]
        scores = -np.arange(len(paths), dtype=float)[None]
        aps.append(float(metrics.average_precision(scores, rel)[0]))
        n_rel.append(int(truth[:, j].sum()))
    observed = float(np.mean(aps))
    expected = float(np.mean(metrics.random_ranking_ap(len(paths), np.array(n_rel))))
    # 500 random rankings of the same queries: their mAPs centre on the closed form, and the observed mAP lies
    # beyond all of them and more than 6 of their standard deviations above the expectation.
    rng = np.random.default_rng(0)
    present = truth[:, truth.sum(0) > 0].T  # (words, images)
    n_draws = 500
    rel = np.tile(present, (n_draws, 1))
    scores = rng.random(rel.shape)
    draws = np.asarray(metrics.average_precision(scores, rel)).reshape(n_draws, -1).mean(1)
    assert abs(draws.mean() - expected) < 0.01
    assert observed > draws.max() + 0.05 and observed > expected + 6 * draws.std(), (observed, expected, draws.max())


def test_search_reports_unknown_tags(run):
    tg = Tagger.load(run["bundle"])
    hits = tg.search("sky zzz-not-a-tag", k=3)
    assert hits.known == ["sky"] and hits.unknown == ["zzz-not-a-tag"] and len(hits) == 3
    assert hits == sorted(hits, key=lambda h: -h[1])
    with pytest.raises(ValueError, match="none of the query tags"):
        tg.search("zzz-not-a-tag", k=3)


def test_tag_arrays_match_tag_paths(run):
    from PIL import Image

    tg = Tagger.load(run["bundle"])
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in run["test_paths"][:3]]
    assert tg.tag(arrays, n=3) == tg.tag(run["test_paths"][:3], n=3)


def test_folder_with_unreadable_files_is_tagged_and_they_are_listed(run, photos, tmp_path):
    tg = Tagger.load(run["bundle"])
    res = tg.tag([photos / "broken.jpg", run["test_paths"][0]], n=5)
    assert res[0] is None and len(res[1]) == 5 and [f["index"] for f in res.failed] == [0]
    out = tmp_path / "tags.tsv"
    r = outputs.tag_images(run["bundle"], photos, out, n=4)
    assert r["n_tagged"] == 6 and sorted(f["path"] for f in r["failed"]) == ["broken.jpg", "empty.png"]
    # The TSV is the loaders' format: it reads back with the tags of the JSON, which holds the scores.
    tags = datasets.read_tags_tsv(out).tags
    doc = json.loads(out.with_suffix(".json").read_text())
    assert set(tags) == {e["path"] for e in doc["results"]} and "sub/" + pathlib.Path(
        run["test_paths"][5]).name in tags
    for e in doc["results"]:
        assert tags[e["path"]] == tuple(t["tag"] for t in e["tags"]) and len(e["tags"]) == 4
    assert [f["path"] for f in doc["failed"]] == ["broken.jpg", "empty.png"]
    page = out.with_suffix(".html").read_text()
    assert page.count("data:image/jpeg;base64,") == 6 and "broken.jpg" in page


def test_folder_jobs_resume_shard_by_shard(run, photos, tmp_path):
    tg = Tagger.load(run["bundle"])
    job = tmp_path / "job"
    first = list(tg.tag_folder(photos, job, n=3, shard_size=3))
    assert len(first) == 3 and sorted(p.name for p in job.glob("shard_*.json")) == [
        "shard_00000.json", "shard_00001.json", "shard_00002.json"]
    (job / "shard_00001.json").unlink()  # as if killed while the second shard ran
    marker = (job / "shard_00000.json").stat().st_mtime_ns
    assert list(tg.tag_folder(photos, job, n=3, shard_size=3)) == first
    assert (job / "shard_00000.json").stat().st_mtime_ns == marker  # done shards are not redone
    with pytest.raises(ValueError, match="different job"):
        list(tg.tag_folder(photos, job, n=4, shard_size=3))
    res = tg.index_folder(photos, tmp_path / "index", shard_size=4)
    assert res["indexed"] == 6 and len(res["failed"]) == 2
    again = Tagger.load(run["bundle"]).index_folder(photos, tmp_path / "index", shard_size=4)
    assert again["shards_done_before"] == 2 and again["indexed"] == 6


def _copy(run, tmp_path):
    dst = tmp_path / "tagger"
    shutil.copytree(run["bundle"], dst)
    return dst


def _rewrite_manifest(dst, rel):
    m = json.loads((dst / "manifest.json").read_text())
    m["files"][rel] = {"sha256": _io.file_sha256(dst / rel), "bytes": (dst / rel).stat().st_size}
    (dst / "manifest.json").write_text(json.dumps(m))


def test_corrupted_or_foreign_bundle_is_refused_naming_the_file(run, tmp_path):
    with pytest.raises(bundle.BundleError, match="not a dcca_jax tagger bundle"):
        Tagger.load(tmp_path)  # a folder without a manifest
    dst = _copy(run, tmp_path)
    name = Tagger.load(dst).model_name
    arrays = dst / "models" / name / "arrays.npz"
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(bytes(data))
    with pytest.raises(bundle.BundleError, match=f"models/{name}/arrays.npz does not match its sha256"):
        Tagger.load(dst)
    shutil.rmtree(dst)
    dst = _copy(run, tmp_path)
    (dst / "semantic" / "config.json").unlink()
    with pytest.raises(bundle.BundleError, match="semantic/config.json is missing"):
        Tagger.load(dst)
    shutil.rmtree(dst)
    dst = _copy(run, tmp_path)
    idx = dst / "index" / f"{name}.npz"
    z = dict(np.load(idx, allow_pickle=False))
    z["z_v"] = z["z_v"][:, :2]
    np.savez(idx, **z)
    _rewrite_manifest(dst, f"index/{name}.npz")
    with pytest.raises(bundle.BundleError, match=rf"index/{name}.npz: array 'z_v' has shape"):
        Tagger.load(dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["format_version"] = 99
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(bundle.BundleError, match="format version 99.*reads format version 1"):
        Tagger.load(dst)
    m["format"] = "someone.else"
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(bundle.BundleError, match="foreign"):
        Tagger.load(dst)


def test_binaries_write_tsv_json_html(run, photos, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(EXPERIMENTS.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "tags.tsv"
    r = subprocess.run([sys.executable, str(EXPERIMENTS / "tag_images.py"), f"--tagger={run['bundle']}",
                        f"--images={photos}", f"--out={out}", "--n=3"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "6 images tagged" in r.stdout and "unreadable: broken.jpg" in r.stdout
    assert out.with_suffix(".json").exists() and out.with_suffix(".html").exists()
    hits = tmp_path / "hits.tsv"
    r = subprocess.run([sys.executable, str(EXPERIMENTS / "search.py"), f"--tagger={run['bundle']}",
                        "--tags=sky water", f"--images={photos}", "--k=4", f"--out={hits}",
                        f"--index_dir={tmp_path / 'index'}"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line.split("\t") for line in hits.read_text().splitlines()]
    assert len(lines) == 4 and all((photos / p).exists() for p, _ in lines)
    scores = [float(s) for _, s in lines]
    assert scores == sorted(scores, reverse=True)
    assert hits.with_suffix(".html").read_text().count("data:image/jpeg;base64,") == 4


@pytest.mark.parametrize("recorded, want", [(None, "jax"), ("jax", "jax"), ("litert", "litert")])
def test_mobilenet_bundle_runs_on_the_engine_its_features_came_from(recorded, want):
    """A bundle records the cnn stage's engine; one without (made before LiteRT) keeps the JAX port."""
    from tests.conftest import shared_path

    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (pip install -e .[test])")
    weights = shared_path("models", "mobilenet_v2_1.0_224_quant", "mobilenet_v2_1.0_224_quant.tflite")
    spec = {"name": "mobilenet_v2", "weights": str(weights), "weights_sha256": _io.file_sha256(weights),
            "emulate_uint8": True, **({"engine": recorded} if recorded else {})}
    tagger = object.__new__(Tagger)  # only the backbone is wanted: no bundle on disk
    tagger.spec = {"backbone": spec, "preprocess": {"crop_fraction": 1.0}}
    tagger._weights, tagger._backbone = None, None
    assert tagger._get_backbone().engine == want
