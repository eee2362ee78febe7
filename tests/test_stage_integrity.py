"""Stage integrity (issue 13 item 8): each stage's manifest is checked on reuse; a missing, truncated, bit-flipped
or undecodable file is named in a warning and its stage recomputed, to the same files where it is deterministic."""
import json
import shutil

import numpy as np
import pytest
from tests.conftest import absl_warnings, tiny_pipeline_config

from dcca_jax import _io, pipeline


@pytest.fixture(scope="module")
def settled(pipeline_run, tmp_path_factory):
    """A private copy of the shared run's workdir, its stages reused once there (the synthetic data stage's key
    names its folder, so the copy regenerates that one)."""
    workdir = tmp_path_factory.mktemp("integrity") / "w"
    shutil.copytree(pipeline_run[0], workdir)
    p = pipeline.Pipeline(tiny_pipeline_config(), workdir)
    p.stage_model("cca")
    return workdir


def _copy(settled, tmp_path):
    # The data stage's key names its folder, so each copy regenerates the (small) synthetic data; the later
    # stages' keys hold the data's fingerprint (ids and tags), not its folder, and stay valid.
    dst = tmp_path / "w"
    shutil.copytree(settled, dst)
    return dst


def _damage(path, how):
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":  # one byte in the last quarter: the array payload, not the header
        i = len(data) - max(1, len(data) // 4)
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif how == "delete":
        path.unlink()
    elif how == "json":
        path.write_text("{not json" + " " * max(0, len(data) - 9))  # same size: only the hash (or decoding) tells
    else:
        raise ValueError(how)


CASES = [  # (stage folder, file, damage, what the warning says, how to rerun the stage)
    ("autoencoder", "train.npy", "flip", "sha256", "stage_autoencoder"),
    ("model_cca", "model/arrays.npz", "truncate", "truncated", "stage_model"),
    ("cnn", "test.npy", "delete", "missing", "stage_cnn"),
    ("semantic", "reports.json", "json", "sha256", "stage_semantic"),
]


@pytest.mark.parametrize("stage,rel,how,said,method", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_a_damaged_stage_file_is_named_and_the_stage_recomputed(settled, tmp_path, stage, rel, how, said, method):
    workdir = _copy(settled, tmp_path)
    d = workdir / "stages" / stage
    original = {r: (d / r).read_bytes() for r in _io.listed_files(d, exclude=pipeline._UNLISTED) if r != "timing.json"}
    _damage(d / rel, how)
    p = pipeline.Pipeline(tiny_pipeline_config(), workdir)
    with absl_warnings() as seen:
        getattr(p, method)(*(("cca",) if method == "stage_model" else ()))
    assert stage in p.timings  # recomputed, not aborted
    assert any(f"stage {stage} in {d} is damaged" in m and str(d / rel) in m and said in m for m in seen), seen
    assert p._stage_problems(d) == []  # valid again, manifest rewritten
    for r, data in original.items():
        if r.endswith(".npy") or r == "model/arrays.npz" or r == "reports.json":
            assert (d / r).read_bytes() == data, r  # deterministic stages: the same files as before


def test_a_changed_recompute_removes_the_stages_computed_from_it(settled, tmp_path):
    # model_cca's info.json holds its fit time, so a recompute differs from the recorded files: the recommend
    # stage, whose key holds model_cca's key, is removed and recomputed from the new files.
    workdir = _copy(settled, tmp_path)
    assert (workdir / "stages" / "recommend" / "DONE").exists()
    _damage(workdir / "stages" / "model_cca" / "info.json", "delete")
    p = pipeline.Pipeline(tiny_pipeline_config(), workdir)
    with absl_warnings() as seen:
        p.stage_model("cca")
    assert "model_cca" in p.timings
    assert not (workdir / "stages" / "recommend").exists()
    assert any("stage recommend: computed from the old files of model_cca" in m for m in seen), seen
    assert (workdir / "stages" / "model_kcca" / "DONE").exists()  # not computed from model_cca: kept


def test_a_stage_without_manifest_is_reused_when_it_decodes_and_recomputed_when_it_does_not(settled, tmp_path):
    workdir = _copy(settled, tmp_path)
    ae, sem = workdir / "stages" / "autoencoder", workdir / "stages" / "semantic"
    (ae / pipeline.MANIFEST).unlink()
    (sem / pipeline.MANIFEST).unlink()
    _damage(sem / "reports.json", "json")
    p = pipeline.Pipeline(tiny_pipeline_config(), workdir)
    with absl_warnings() as seen:
        p.stage_autoencoder()
        p.stage_semantic()
    assert "autoencoder" not in p.timings and (ae / pipeline.MANIFEST).exists()  # accepted as before, manifest recorded
    assert "semantic" in p.timings
    assert any(f"{sem / 'reports.json'}: cannot be read (JSONDecodeError" in m for m in seen), seen
    json.loads((sem / "reports.json").read_text())
    # no manifest said what the old files were, so the models computed from them are recomputed too
    assert not (workdir / "stages" / "model_cca").exists()
    assert any("stage model_cca: computed from the old files of semantic" in m for m in seen), seen
    p.stage_model("cca")
    assert "model_cca" in p.timings


def test_an_unreadable_key_file_recomputes_the_stage(settled, tmp_path):
    workdir = _copy(settled, tmp_path)
    (workdir / "stages" / "model_cca" / "key.json").write_text("{")
    p = pipeline.Pipeline(tiny_pipeline_config(), workdir)
    with absl_warnings() as seen:
        p.stage_model("cca")
    assert "model_cca" in p.timings
    assert any("key.json cannot be read" in m for m in seen), seen


def test_manifest_helpers_name_each_problem(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(10.0))
    (tmp_path / "b.json").write_text('{"x": 1}')
    (tmp_path / "skip").mkdir()
    (tmp_path / "skip" / "c").write_text("c")
    m = _io.file_manifest(tmp_path, exclude=("skip",))
    assert sorted(m) == ["a.npy", "b.json"] and m["b.json"]["size"] == 8
    assert _io.manifest_problems(tmp_path, m) == []
    _damage(tmp_path / "a.npy", "flip")
    (tmp_path / "b.json").unlink()
    assert _io.manifest_problems(tmp_path, m) == [f"{tmp_path / 'a.npy'}: content differs from the recorded sha256 "
                                                  "(corrupt)", f"{tmp_path / 'b.json'}: missing"]
    np.savez(tmp_path / "z.npz", x=np.arange(1000.0))
    assert _io.decode_problem(tmp_path / "z.npz") is None
    _damage(tmp_path / "z.npz", "truncate")
    assert _io.decode_problem(tmp_path / "z.npz").startswith(f"{tmp_path / 'z.npz'}: cannot be read (")
