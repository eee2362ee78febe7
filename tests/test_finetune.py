"""Tests of dcca_jax.finetune: exact accumulation, layer-wise learning rates, BN calibration, resume."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dcca_jax import finetune
from dcca_jax.visual import mobilenet
from dcca_jax.visual.augment import DecodedImages
from dcca_jax.objectives import cca_loss

SIZE = 32


@functools.lru_cache(maxsize=1)
def _backbone():
    p = mobilenet.MobileNetV2().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3), jnp.float64))["params"]
    p = dict(p)
    p.pop("Logits")
    return p


def _tail(start):
    """Random parameters of layers LAYERS[start:] only (cheap: no full-network init)."""
    name = finetune.LAYERS[start]
    c_in = 320 if name == "Conv_1" else next(b[2] for b in mobilenet.BLOCKS if b[0] == name)
    seg = finetune.BackboneSegment(start, len(finetune.LAYERS), pool=True)
    return seg.init(jax.random.key(0), jnp.zeros((1, 2, 2, c_in), jnp.float64))["params"]


def _config(**kw):
    c = finetune.finetune_config()
    c.augment.size = SIZE
    c.trainable_from = "expanded_conv_16"
    c.out_dim = 3
    c.visual_hidden = (6,)
    c.semantic_hidden = (6,)
    c.micro_batch = 4
    c.accumulate = 3
    c.eval_batch = 8
    c.transfer.k1 = 1
    c.dtype = "float64"
    for k, v in kw.items():
        c[k] = v
    return c


def _params(c, key=1):
    """Random (non-zero residual) parameters for a config, and its functions."""
    fns = finetune.make_functions(c)
    start = finetune.layer_index(c.trainable_from)
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    head = fns.visual.head_module().init(k1, jnp.zeros((1, 1280)))["params"]
    sem = fns.semantic_tower.init(k2, jnp.zeros((1, 5)))["params"]
    # non-zero residual output layers, so the MLPs take part in the gradient
    jitter = lambda t, k: jax.tree_util.tree_map(lambda x: x + 0.05 * jax.random.normal(k, x.shape, x.dtype), t)
    visual = {"head": jitter(head, k3)}
    if start < len(finetune.LAYERS):
        visual["backbone"] = _tail(start)
    return fns, {"visual": visual, "semantic": jitter(sem, k2)}


def _data(n=12, key=2, shape=(SIZE, SIZE, 3)):
    kx, ky = jax.random.split(jax.random.key(key))
    x = jax.random.uniform(kx, (n, *shape), jnp.float64, -1.0, 1.0)
    y = (jax.random.uniform(ky, (n, 5)) < 0.4).astype(jnp.float64)
    return x, y.at[:, 0].set(1.0 - y[:, 1])


def test_layer_index():
    assert finetune.layer_index("Conv") == 0
    assert finetune.layer_index("expanded_conv_13") == 14
    assert finetune.layer_index("Conv_1") == 18
    assert finetune.layer_index("none") == len(finetune.LAYERS) == 19
    assert finetune.layer_index(5) == 5
    with pytest.raises(ValueError, match="expanded_conv_99"):
        finetune.layer_index("expanded_conv_99")


@pytest.mark.slow
def test_segments_compose_to_mobilenet_features():
    x, _ = _data(n=2)
    full = mobilenet.MobileNetV2().apply({"params": {**_backbone(), "Logits": {
        "kernel": jnp.zeros((1280, 1001)), "bias": jnp.zeros(1001)}}}, x)["features"]
    a = finetune.BackboneSegment(0, 14).apply({"params": finetune.slice_layers(_backbone(), 0, 14)}, x)
    feats = finetune.BackboneSegment(14, 19, pool=True).apply(
        {"params": finetune.slice_layers(_backbone(), 14, 19)}, a)
    np.testing.assert_allclose(feats, full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("trainable_from", ["Conv_1", "none"])
def test_exact_accumulation_equals_full_batch_gradient(trainable_from):
    c = _config(trainable_from=trainable_from)
    fns, params = _params(c)
    # stand-ins for the frozen prefix's outputs: (n, 2, 2, 320) before Conv_1, pooled 1280-d for a frozen CNN
    a, y = _data(shape=(2, 2, 320) if trainable_from != "none" else (1280,))
    micro = [a[i:i + 4] for i in range(0, 12, 4)]
    loss, grads, _ = finetune.accumulated_gradients(fns, params, {}, micro, y)

    def full_loss(p):  # the oracle: one big batch through the whole network
        h_v = fns.visual.apply({"params": p["visual"]}, a)
        h_s = fns.semantic_tower.apply({"params": p["semantic"]}, y)
        return cca_loss(h_v, h_s, objective=c.objective, ridge_v=c.ridge_v, ridge_s=c.ridge_s)

    want_loss, want = jax.jit(jax.value_and_grad(full_loss))(params)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    flat_g, flat_w = jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want)
    assert len(flat_g) == len(flat_w)
    for g, w in zip(flat_g, flat_w):
        np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-12)
    # the naive average of per-micro-batch gradients is a different (wrong) gradient
    def micro_loss(p, m, yy):
        return cca_loss(fns.visual.apply({"params": p["visual"]}, m), fns.semantic_tower.apply({"params": p["semantic"]}, yy),
                        objective=c.objective, ridge_v=c.ridge_v, ridge_s=c.ridge_s)

    micro_grad = jax.jit(jax.grad(micro_loss))
    naive = [micro_grad(params, m, y[i * 4:(i + 1) * 4]) for i, m in enumerate(micro)]
    naive_head = sum(g["visual"]["head"]["linear"]["kernel"] for g in naive) / 3
    assert np.abs(naive_head - want["visual"]["head"]["linear"]["kernel"]).max() > 1e-3


def test_layerwise_learning_rates_and_frozen_layers():
    c = _config(cnn_lr=1e-6, head_lr=1e-3, semantic_lr=1e-2)
    fns, params = _params(c)
    a, y = _data(shape=(2, 2, 160))
    tx = finetune.make_optimizer(c)
    state = finetune.FinetuneTrainState.create(apply_fn=None, params=params, tx=tx, batch_stats={})
    _, grads, _ = finetune.accumulated_gradients(fns, params, {}, [a[:6], a[6:]], y)
    new = fns.apply_updates(state, grads, {})
    # frozen layers are not parameters of the train state at all (no gradient, no optimiser state)
    assert set(new.params["visual"]["backbone"]) == {"expanded_conv_16", "Conv_1"}
    n_state = sum(x.size for x in jax.tree_util.tree_leaves(new.opt_state))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert n_state == 2 * n_params + 3  # Adam's m and v per trainable parameter, a step count per group
    # Adam's first step moves each parameter by lr * g / (|g| + eps): exactly its group's learning rate
    for group, lr in (("backbone", 1e-6), ("head", 1e-3)):
        for p0, p1, g in zip(jax.tree_util.tree_leaves(params["visual"][group]),
                             jax.tree_util.tree_leaves(new.params["visual"][group]),
                             jax.tree_util.tree_leaves(grads["visual"][group])):
            g = np.asarray(g)
            want = -lr * g / (np.abs(g) + 1e-8)
            np.testing.assert_allclose(np.asarray(p1) - np.asarray(p0), want, rtol=1e-6, atol=1e-15)
    for p0, p1, g in zip(jax.tree_util.tree_leaves(params["semantic"]), jax.tree_util.tree_leaves(new.params["semantic"]),
                         jax.tree_util.tree_leaves(grads["semantic"])):
        g = np.asarray(g)
        np.testing.assert_allclose(np.asarray(p1) - np.asarray(p0), -1e-2 * g / (np.abs(g) + 1e-8), rtol=1e-6,
                                   atol=1e-15)


def test_batch_norm_update_mode_starts_as_the_folded_network():
    c = _config(trainable_from="expanded_conv_15", batch_norm="update")
    start = finetune.layer_index(c.trainable_from)
    cnn = _tail(start)
    a, _ = _data(n=10, shape=(2, 2, 160))  # stand-in for the frozen prefix's outputs before block 15
    bn_p, bn_s = finetune.calibrate_batch_norm(c, cnn, [a[:6], a[6:]])
    # the statistics are those of the convolution outputs: oracle for the first (1x1 expand) convolution
    k = np.asarray(cnn["expanded_conv_15"]["expand"]["conv"]["kernel"][0, 0])
    b = np.asarray(cnn["expanded_conv_15"]["expand"]["conv"]["bias"])
    y = np.asarray(a).reshape(-1, k.shape[0]) @ k + b
    np.testing.assert_allclose(bn_s["expanded_conv_15"]["expand"]["bn"]["mean"], y.mean(0), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(bn_s["expanded_conv_15"]["expand"]["bn"]["var"], y.var(0), rtol=1e-6, atol=1e-10)
    folded = finetune.BackboneSegment(start, 19, pool=True).apply({"params": cnn}, a)
    with_bn = finetune.BackboneSegment(start, 19, pool=True, batch_norm=True).apply(
        {"params": finetune._merge(cnn, bn_p), "batch_stats": bn_s}, a)
    np.testing.assert_allclose(with_bn, folded, rtol=1e-9, atol=1e-9)
    # in training mode the batch statistics are used, and the running averages move
    _, upd = finetune.BackboneSegment(start, 19, pool=True, batch_norm=True).apply(
        {"params": finetune._merge(cnn, bn_p), "batch_stats": bn_s}, a[:3], train=True, mutable=["batch_stats"])
    moved = upd["batch_stats"]["expanded_conv_15"]["expand"]["bn"]["mean"]
    assert np.abs(np.asarray(moved) - bn_s["expanded_conv_15"]["expand"]["bn"]["mean"]).max() > 0


def _images(tmp_path, n):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i % 3, 28, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    labels = (rng.uniform(size=(n, 5)) < 0.4).astype(np.float64)
    labels[:, 0] = 1 - labels[:, 1]
    return DecodedImages(paths), labels


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tmp_path):
    images, labels = _images(tmp_path, 30)
    c = _config(epochs=2, checkpoint_every=1, patience=0, micro_batch=4, accumulate=3, cnn_lr=1e-3, head_lr=1e-2,
                semantic_lr=1e-2)
    kw = dict(backbone_params=_backbone(), images=images, labels=labels, fit_idx=np.arange(24),
              val_idx=np.arange(24, 30))
    full = finetune.fit_finetune(c, workdir=tmp_path / "a", **kw)
    c1 = _config(epochs=1, checkpoint_every=1, patience=0, micro_batch=4, accumulate=3, cnn_lr=1e-3, head_lr=1e-2,
                 semantic_lr=1e-2)
    finetune.fit_finetune(c1, workdir=tmp_path / "b", **kw)
    resumed = finetune.fit_finetune(c, workdir=tmp_path / "b", **kw)
    for p, q in zip(jax.tree_util.tree_leaves(full.model.params), jax.tree_util.tree_leaves(resumed.model.params)):
        np.testing.assert_array_equal(p, q)
    assert [h["val_f1"] for h in full.history] == [h["val_f1"] for h in resumed.history]
    # the whole trajectory is the same: every step's loss, before and after the interruption
    def step_losses(wd):
        recs = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in recs if r["kind"] == "step"]

    losses = step_losses(tmp_path / "a")
    assert len(losses) == 4 and losses == step_losses(tmp_path / "b")
    assert len(set(losses)) == 4  # training moved (the comparison is not vacuous)
    # a different config in the same workdir is refused
    with pytest.raises(ValueError, match="different config"):
        finetune.fit_finetune(_config(epochs=2, checkpoint_every=1, head_lr=0.5), workdir=tmp_path / "b", **kw)


def test_effective_batch_must_exceed_out_dim():
    with pytest.raises(ValueError, match="accumulate"):
        finetune._validate(_config(micro_batch=1, accumulate=2))
    with pytest.raises(ValueError, match="batch_norm"):
        finetune._validate(_config(batch_norm="frozen"))


@pytest.mark.slow
def test_non_finite_features_are_refused_naming_the_row():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((60, 1280))
    feats[5, 0] = np.inf
    labels = (rng.random((60, 5)) < 0.4).astype(np.float64)
    c = _config(trainable_from="none", epochs=1, patience=0, micro_batch=8, accumulate=2)
    with pytest.raises(ValueError, match="row 5"):
        finetune.fit_finetune(c, backbone_params=_backbone(), images=None, labels=labels, fit_idx=np.arange(48),
                              val_idx=np.arange(48, 60), features=feats)


def test_bfloat16_compute_dtype_gradients_close_to_float32():
    # Mixed precision of the CNN and towers: bf16 convolutions/products, float32 parameters, loss and gradients.
    c32 = _config(trainable_from="Conv_1", dtype="float32")
    c16 = _config(trainable_from="Conv_1", dtype="float32", compute_dtype="bfloat16")
    fns32, params = _params(c32)
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), params)
    fns16 = finetune.make_functions(c16)
    a, y = _data(shape=(2, 2, 320))
    a, y = a.astype(jnp.float32), y.astype(jnp.float32)
    micro = [a[i:i + 4] for i in range(0, 12, 4)]
    loss32, g32, _ = finetune.accumulated_gradients(fns32, params, {}, micro, y)
    loss16, g16, _ = finetune.accumulated_gradients(fns16, params, {}, micro, y)
    assert loss16.dtype == jnp.float32
    assert abs(float(loss16) - float(loss32)) < 0.02 * abs(float(loss32))
    for x, w in zip(jax.tree_util.tree_leaves(g16), jax.tree_util.tree_leaves(g32)):
        assert x.dtype == jnp.float32
    flat16 = jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(g16)])
    flat32 = jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(g32)])
    rel = float(jnp.linalg.norm(flat16 - flat32) / jnp.linalg.norm(flat32))
    assert 0 < rel < 0.1
    # the frozen prefix runs (and returns) in bf16; the pooled feature comes back in float32
    stem = finetune.make_functions(_config(trainable_from="Conv", dtype="float32", compute_dtype="bfloat16"))
    assert stem.prefix({}, a).dtype == jnp.bfloat16
    assert fns16.pooled_eval(params["visual"], {}, a).dtype == jnp.float32


def test_finetuned_backbone_swaps_in_the_trained_layers():
    import types

    pretrained = {"Conv": {"conv": {"kernel": np.ones((3, 3, 3, 32))}}, "Conv_1": {"conv": {"kernel": np.zeros(2)}},
                  "Logits": {"kernel": np.ones(2)}}
    trained = {"Conv_1": {"conv": {"kernel": np.full(2, 7.0)}}}
    model = types.SimpleNamespace(config=types.SimpleNamespace(batch_norm="folded"), batch_stats=None,
                                  params={"visual": {"backbone": trained, "head": {}}})
    out = finetune.finetuned_backbone(model, pretrained)
    assert set(out) == {"Conv", "Conv_1"}  # logits dropped
    np.testing.assert_array_equal(out["Conv_1"]["conv"]["kernel"], [7.0, 7.0])
    assert out["Conv"] is pretrained["Conv"]
    model.config.batch_norm, model.batch_stats = "update", {"Conv_1": {"bn": {"mean": np.zeros(2)}}}
    with pytest.raises(ValueError, match="batch_norm='update'"):
        finetune.finetuned_backbone(model, pretrained)
