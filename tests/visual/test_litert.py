"""The LiteRT engine: the patched flatbuffer, features against the TFLite reference and the JAX port, engine
choice, and the engine in the feature cache."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from dcca_jax.visual import extract
from dcca_jax.visual import images
from dcca_jax.visual import litert
from tests.conftest import shared_path

MODEL = ("models", "mobilenet_v2_1.0_224_quant", "mobilenet_v2_1.0_224_quant.tflite")
pytestmark = pytest.mark.shared_data


def _model():
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (pip install -e .[test])")
    return shared_path(*MODEL)


def _photos(n=20):
    """``n`` Corel5k test photos spread over the list, and their decoded 224x224 crops."""
    _, paths = images.read_list_file(shared_path("data", "corel5k", "corel5k_test_list.txt"))
    paths = paths[::23][:n]
    batch = images.load_batch(paths)
    assert not batch.failed
    return paths, batch.images


def _config(model, engine):
    cfg = extract.backbone_config()
    cfg.mobilenet_v2.tflite_path = str(model)
    cfg.engine = engine
    return cfg


def _cosine(a, b):
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_feature_model_exposes_avgpool_and_drops_the_head():
    import tflite

    original = _model().read_bytes()
    patched, dropped = litert.feature_model(original)
    assert len(patched) == len(original)
    g0 = tflite.Model.GetRootAsModel(original, 0).Subgraphs(0)
    g1 = tflite.Model.GetRootAsModel(patched, 0).Subgraphs(0)
    names = [g0.Tensors(i).Name().decode() for i in range(g0.TensorsLength())]
    assert names[g0.Outputs(0)] == "MobilenetV2/Predictions/Softmax"
    assert names[g1.Outputs(0)] == litert.AVGPOOL and g1.OutputsLength() == 1
    # The last kept operator writes AvgPool; the dropped ones (logits conv, squeeze, softmax) came after it.
    assert dropped == 3 and g1.OperatorsLength() == g0.OperatorsLength() - 3
    assert names[g1.Operators(g1.OperatorsLength() - 1).Outputs(0)] == litert.AVGPOOL
    with pytest.raises(ValueError, match="no tensor named 'nope'"):
        litert.feature_model(original, tensor="nope")


def test_features_bit_identical_to_the_tflite_reference():
    """The backend against the plain interpreter reading AvgPool from the unmodified file (all tensors kept)."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    model = _model()
    _, u8 = _photos(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # preserve_all_tensors is "for debugging": it is the oracle
        ref = Interpreter(model_path=str(model), experimental_preserve_all_tensors=True, num_threads=1)
    ref.allocate_tensors()
    det = {d["name"]: d for d in ref.get_tensor_details()}[litert.AVGPOOL]
    want = []
    for im in u8:
        ref.set_tensor(ref.get_input_details()[0]["index"], im[None])
        ref.invoke()
        want.append(ref.get_tensor(det["index"]).reshape(-1).copy())
    want = np.stack(want)
    net = litert.LiteRTFeatures(model, num_threads=2)
    got = np.stack([net.raw(im) for im in u8])
    assert got.dtype == np.uint8 and got.shape == (8, 1280)
    np.testing.assert_array_equal(got, want)
    scale, zero = det["quantization"]
    np.testing.assert_allclose(net(u8), (want.astype(np.float64) - zero) * scale, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"shape \(n, 224, 224, 3\)"):
        net(u8[:, :100])
    with pytest.raises(ValueError, match="uint8"):
        net(u8.astype(np.float32))


def test_extract_features_on_litert_matches_the_backend(tmp_path):
    model = _model()
    paths, u8 = _photos(6)
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"not a jpeg" * 10)
    paths = paths[:3] + [str(bad)] + paths[3:]
    bb = extract.build_backbone(_config(model, "litert"))
    assert bb.engine == "litert" and bb.input_uint8 and bb.fingerprint["engine"] == "litert"
    res = extract.extract_features(paths, backbone=bb, batch_size=4, decode_workers=3)
    assert res.ok.tolist() == [True] * 3 + [False] + [True] * 3
    assert [f["index"] for f in res.failed] == [3] and np.isnan(res.features[3]).all()
    net = litert.LiteRTFeatures(model)
    np.testing.assert_array_equal(res.features[res.ok], net(u8))


def test_engine_kept_apart_in_the_cache(tmp_path):
    model = _model()
    paths, _ = _photos(4)
    cache = tmp_path / "cache"
    lite = extract.build_backbone(_config(model, "litert"))
    first = extract.extract_features(paths, backbone=lite, batch_size=2, shard_size=2, cache_dir=cache)
    assert json.loads((cache / "index.json").read_text())["engine"] == "litert"
    (cache / "shard_00001.npy").unlink()  # a partial cache: shard 1 is recomputed, shard 0 read back
    again = extract.extract_features(paths, backbone=lite, batch_size=2, shard_size=2, cache_dir=cache)
    assert again.n_computed == 2
    np.testing.assert_array_equal(again.features, first.features)
    port = extract.build_backbone(_config(model, "jax"))
    assert port.engine == "jax" and port.fingerprint["engine"] == "jax"
    with pytest.raises(ValueError, match=r"different job \(differs in \[.*'engine'"):
        extract.extract_features(paths, backbone=port, batch_size=2, shard_size=2, cache_dir=cache)


def test_engine_choice(monkeypatch):
    model = _model()
    cfg = _config(model, "auto")
    assert extract.resolve_engine(cfg)[0] == "litert"  # a CPU (the tests run on one) with LiteRT installed
    cfg.mobilenet_v2.emulate_uint8 = False
    engine, why = extract.resolve_engine(cfg)
    assert engine == "jax" and "emulate_uint8=False" in why
    cfg = _config(model, "auto")
    assert extract.resolve_engine(cfg, dtype=np.float16)[0] == "jax"
    monkeypatch.setattr(extract.jax, "default_backend", lambda: "gpu")
    engine, why = extract.resolve_engine(cfg)
    assert engine == "jax" and "gpu" in why
    assert extract.resolve_engine(_config(model, "litert"))[0] == "litert"  # asked for: no device check
    cfg = _config(model, "litert")
    cfg.backbone = "alexnet"
    with pytest.raises(ValueError, match="only the mobilenet_v2 backbone"):
        extract.resolve_engine(cfg)
    with pytest.raises(ValueError, match="unknown engine 'tpu'"):
        extract.resolve_engine(_config(model, "tpu"))


def test_missing_package(monkeypatch):
    model = shared_path(*MODEL)
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import now fails as if not installed
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    assert not litert.available()
    with pytest.raises(ImportError, match="pip install ai-edge-litert"):
        extract.build_backbone(_config(model, "litert"))
    engine, why = extract.resolve_engine(_config(model, "auto"))
    assert engine == "jax" and "ai_edge_litert is not installed" in why


@pytest.mark.slow
def test_litert_against_the_jax_port():
    """Per-image cosine between the engines on 20 photos. Measured: against the uint8-emulating port min .9979,
    mean .9986; against the float port min .9894, mean .9962 (0.999 per image does not hold: the port's
    rounding differs from XNNPACK's fixed-point arithmetic by about one uint8 level here and there)."""
    import jax.numpy as jnp

    from dcca_jax.visual import mobilenet

    model = _model()
    _, u8 = _photos(20)
    got = litert.LiteRTFeatures(model)(u8).astype(np.float64)
    variables = mobilenet.load_tflite_params(model)
    x = jnp.asarray(images.normalise(u8, normalisation="mobilenet_v2"))
    cos = {e: _cosine(got, np.asarray(mobilenet.make_apply_fn(variables, emulate_uint8=e)(x)["features"],
                                      np.float64)) for e in (True, False)}
    assert cos[True].min() >= 0.997 and cos[True].mean() >= 0.998, np.sort(cos[True])[:5]
    assert cos[False].min() >= 0.985 and cos[False].mean() >= 0.995, np.sort(cos[False])[:5]
