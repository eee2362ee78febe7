"""dcca_jax._io: atomic writes, JSON-safe values, config keys, package versions."""
import hashlib
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dcca_jax import _io


def test_atomic_writes_round_trip_and_leave_no_temporary_files(tmp_path):
    d = tmp_path / "new" / "dir"  # parents are created
    _io.atomic_write_bytes(d / "a.bin", b"\x00\x01")
    _io.atomic_write_text(d / "b.txt", "h\u00e9\n")
    _io.atomic_write_json(d / "c.json", {"x": np.float32(1.5), "y": (1, 2)})
    _io.atomic_save_npy(d / "d.npy", np.arange(4.0))
    _io.atomic_save_npz(d / "e.npz", u=np.ones(2), v=np.array(["w"]))
    assert sorted(p.name for p in d.iterdir()) == ["a.bin", "b.txt", "c.json", "d.npy", "e.npz"]
    assert (d / "a.bin").read_bytes() == b"\x00\x01"
    assert (d / "b.txt").read_bytes() == "h\u00e9\n".encode()
    assert json.loads((d / "c.json").read_text()) == {"x": 1.5, "y": [1, 2]}
    np.testing.assert_array_equal(np.load(d / "d.npy"), np.arange(4.0))
    with np.load(d / "e.npz", allow_pickle=False) as z:
        assert z["v"][0] == "w" and z["u"].tolist() == [1.0, 1.0]
    assert (d / "b.txt").stat().st_mode & 0o777 == 0o644
    _io.atomic_write_text(d / "b.txt", "new")  # replacing an existing file
    assert (d / "b.txt").read_text() == "new" and len(list(d.iterdir())) == 5


class _Unconvertible:
    def __array__(self, *args, **kwargs):
        raise RuntimeError("cannot convert")


def test_a_writer_that_raises_leaves_the_old_file_and_no_half_file(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with _io.atomic_write(target, mode="w") as f:
            f.write("half of the new cont")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]
    # np.savez fails after writing its first member: nothing of it is visible
    with pytest.raises(RuntimeError, match="cannot convert"):
        _io.atomic_save_npz(tmp_path / "y.npz", a=np.ones(1000), b=_Unconvertible())
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w'"):
        with _io.atomic_write(target, mode="a"):
            pass


def test_jsonable_numpy_jax_nested_and_nan():
    cfg = ml_collections.ConfigDict({"a": 1, "b": (2, 3)})
    obj = {
        "f32": np.float32(0.5), "i64": np.int64(7), "bool": np.bool_(True),
        "jax": jnp.asarray(2.0), "arr": np.arange(4).reshape(2, 2), "jarr": jnp.ones(2, jnp.int32),
        1: {"nested": (np.float64(1.25), [np.int32(3)])}, "path": pathlib.Path("a/b"), "cfg": cfg,
        "nan": np.float64("nan"), "inf": float("inf"), "plain": "s",
    }
    out = _io.jsonable(obj)
    assert out["f32"] == 0.5 and type(out["f32"]) is float
    assert out["i64"] == 7 and type(out["i64"]) is int and out["bool"] is True
    assert out["jax"] == 2.0 and type(out["jax"]) is float
    assert out["arr"] == [[0, 1], [2, 3]] and out["jarr"] == [1, 1]
    assert out["1"] == {"nested": [1.25, [3]]}  # keys become strings, tuples lists
    assert out["path"] == "a/b" and out["cfg"] == {"a": 1, "b": [2, 3]} and out["plain"] == "s"
    assert math.isnan(out["nan"]) and out["inf"] == math.inf  # kept as numbers
    back = json.loads(json.dumps(out))
    assert math.isnan(back["nan"]) and back["1"] == {"nested": [1.25, [3]]}
    assert isinstance(jax.device_get(jnp.zeros(())), np.ndarray)  # sanity of the jax scalar case above


def test_config_key_is_a_content_hash_stable_across_dict_order():
    a = {"stage": "dcca", "cfg": {"lr": 0.1, "towers": {"out": 2, "hidden": (4, 4)}}, "n": np.int64(3)}
    b = {"n": 3, "cfg": {"towers": {"hidden": [4, 4], "out": 2}, "lr": 0.1}, "stage": "dcca"}
    assert _io.config_key(a) == _io.config_key(b)
    # the oracle: SHA-256 of the canonical JSON, first 16 hex digits (the pipeline's stage keys, unchanged)
    canonical = '{"cfg": {"lr": 0.1, "towers": {"hidden": [4, 4], "out": 2}}, "n": 3, "stage": "dcca"}'
    assert _io.config_key(a) == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert _io.config_key({**b, "n": 4}) != _io.config_key(b)


def test_package_versions_names_jax():
    v = _io.package_versions()
    assert v["jax"] == jax.__version__ and v["jax_backend"] == jax.default_backend()
    assert {"numpy", "flax", "optax", "python"} <= set(v)
