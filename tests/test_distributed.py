"""Data parallelism, sharded extraction, mixed precision and multi-process runs against one device.

The 8-device and 2-process checks run in subprocesses (tests/_scale_worker.py): XLA_FLAGS and
jax.distributed must be set before JAX starts, and this process has imported JAX already. The
single-device references are computed here, in this process.
"""
from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

from tests import _scale_worker as W
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcca_jax.models import dcca
from dcca_jax import distributed as dist
from dcca_jax.objectives import view_covariances
from dcca_jax.models.streaming import stats_from_arrays

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = pathlib.Path(__file__).resolve().parent / "_scale_worker.py"
SUBPROCESS_TIMEOUT = 300


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("JAX_PLATFORMS", None)
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra)
    return env


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    # Compilation dominates these small tests; XLA's optimisation passes do not change what is tested.
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="module")
def single_device_reference():
    """Two SGD steps of the two-tower DCCA loss on one device (the oracle for the sharded runs)."""
    x_v, x_s = W.data()
    batch = {"x_v": jnp.asarray(x_v), "x_s": jnp.asarray(x_s)}
    step = jax.jit(dist.make_train_step(W.loss_fn))
    rng = jax.random.key(7)
    state0 = W.init_state()
    state1, m1 = step(state0, batch, rng)
    state2, m2 = step(state1, batch, rng)
    p0, p1 = _flat(state0.params), _flat(state1.params)
    # Plain SGD: the first update is -LR times the gradient.
    return dict(
        params0=p0, params1=p1, params2=_flat(state2.params), grads=(p0 - p1) / W.LR,
        loss=float(m1["loss"]), loss2=float(m2["loss"]), grad_norm=float(m1["grad_norm"]),
    )


@pytest.fixture(scope="module")
def single_device_dcca():
    """Two steps of dcca_jax.models.dcca's own train step on one device."""
    tv, ts, cfg, state = W.dcca_setup()
    step = dcca.make_train_step(tv, ts, cfg)
    x_v, x_s = W.data()
    rng = jax.random.key(7)
    s1, m1 = step(state, (jnp.asarray(x_v), jnp.asarray(x_s)), rng)
    s2, m2 = step(s1, (jnp.asarray(x_v), jnp.asarray(x_s)), rng)
    return dict(
        loss=np.asarray([m1["loss"], m2["loss"]]), grad_norm=np.asarray([m1["grad_norm"], m2["grad_norm"]]),
        params2=_flat(s2.params), stats2=_flat(s2.batch_stats),
    )


def test_eight_devices_equal_one_device(tmp_path, single_device_reference, single_device_dcca):
    out = tmp_path / "md.npz"
    proc = subprocess.run(
        [sys.executable, str(WORKER), "multidevice", str(out)],
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    z = np.load(out)
    ref = single_device_reference
    assert int(z["n_devices"]) == 8
    # Objective and gradients of the global batch: the same numbers as one device (float64 round-off).
    np.testing.assert_allclose(float(z["loss"]), ref["loss"], rtol=1e-12)
    np.testing.assert_allclose(float(z["grad_norm"]), ref["grad_norm"], rtol=1e-11)
    np.testing.assert_allclose(float(np.linalg.norm(ref["grads"])), ref["grad_norm"], rtol=1e-11)
    np.testing.assert_allclose((ref["params0"] - z["params1"]) / W.LR, ref["grads"], atol=1e-12)
    np.testing.assert_allclose(z["params1"], ref["params1"], atol=1e-13)
    np.testing.assert_allclose(float(z["loss2"]), ref["loss2"], rtol=1e-12)
    np.testing.assert_allclose(z["params2"], ref["params2"], atol=1e-12)
    # Replicated parameters; the partitioned step reduces d x d statistics, it never gathers the batch.
    assert str(z["param_sharding"]) == "P()"
    assert int(z["n_all_gather"]) == 0 and int(z["n_all_reduce"]) >= 1
    # shard_map covariances with psum equal the single-device Eq. 4 covariances.
    assert float(z["cov_err"]) < 1e-13
    s_vv, s_ss, s_vs = view_covariances(*W.data(), ridge_v=1e-3, ridge_s=1e-3)
    np.testing.assert_allclose(z["cov"], np.concatenate([np.ravel(s_vv), np.ravel(s_ss), np.ravel(s_vs)]), atol=1e-13)
    # DeepCCA's own step (batch norm + dropout): global-batch statistics, same loss, gradients, params.
    ref_d = single_device_dcca
    np.testing.assert_allclose(z["dcca_loss"], ref_d["loss"], rtol=1e-12)
    np.testing.assert_allclose(z["dcca_grad_norm"], ref_d["grad_norm"], rtol=1e-10)
    # atol 1e-9: the biases before batch norm have a zero gradient in exact arithmetic; Adam turns their
    # round-off (1e-17, summed in a different order over 8 devices) into updates of lr * g / (|g| + eps).
    np.testing.assert_allclose(z["dcca_params2"], ref_d["params2"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(z["dcca_stats2"], ref_d["stats2"], atol=1e-12)
    # Sharded extraction (37 images: padded to 40 over 8 devices; and blocks of 2 per device) = unsharded.
    want = np.asarray(W.conv_net(W.conv_params(), jnp.asarray(W.images())))
    np.testing.assert_allclose(z["extracted"], want, atol=1e-12)
    np.testing.assert_allclose(z["extracted_blocks"], want, atol=1e-12)
    np.testing.assert_allclose(z["extracted_closure"], want, atol=1e-12)
    # dcca_jax.visual.extract's pipeline with the backbone sharded over 8 devices = unsharded, image by image.
    from dcca_jax.visual.extract import extract_features

    paths = W.write_images(tmp_path / "imgs")
    plain = extract_features(paths, backbone=W.tiny_backbone(), batch_size=8)
    assert plain.ok.all()
    np.testing.assert_allclose(z["pipeline"], plain.features, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path, single_device_reference):
    out = tmp_path / "mp"
    port = _free_port()
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "multiprocess", str(out), str(port), str(i), "2"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=SUBPROCESS_TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(l[-2000:] for l in logs)
    x_v, x_s = W.data()
    x = np.concatenate([x_v, x_s], axis=1)
    parts = [np.load(f"{out}.{i}.npz") for i in range(2)]
    assert parts[0]["rows"].tolist() == [0, 48] and parts[1]["rows"].tolist() == [48, 96]
    for z in parts:
        # Streaming statistics of each process's half, merged across processes = numpy on all rows.
        assert float(z["count"]) == W.N_ROWS
        np.testing.assert_allclose(z["mean"], x.mean(0), atol=1e-14)
        np.testing.assert_allclose(z["comoment"] / (W.N_ROWS - 1), np.cov(x, rowvar=False), atol=1e-13)
        # Data-parallel step over 2 processes x 2 devices = one device on the global batch.
        np.testing.assert_allclose(float(z["loss"]), single_device_reference["loss"], rtol=1e-12)
        np.testing.assert_allclose(float(z["grad_norm"]), single_device_reference["grad_norm"], rtol=1e-11)
        np.testing.assert_allclose(z["params1"], single_device_reference["params1"], atol=1e-13)
    # Each process extracted features of its own 20 images.
    want = np.asarray(W.conv_net(W.conv_params(), jnp.asarray(W.images(40))))
    np.testing.assert_allclose(np.concatenate([parts[0]["feats"], parts[1]["feats"]]), want, atol=1e-12)
    # The data-parallel fit returned the same DeepCCA on both processes; its final CCA (Eq. 8) is the CCA of the
    # kept towers' outputs on both processes' training rows, its best held-out correlation that of both
    # processes' held-out rows (each process held out the same seeded rows of its half).
    from dcca_jax.models.base import load_model
    from dcca_jax.training import validation_split

    np.testing.assert_array_equal(parts[0]["fit_correlations"], parts[1]["fit_correlations"])
    model = load_model(f"{out}.0.model")
    fit, val = validation_split(48, n_val=12, seed=0)
    fit, val = np.concatenate([fit, fit + 48]), np.concatenate([val, val + 48])
    h_v, h_s = (np.asarray(h) for h in model.tower_outputs(x_v[fit], x_s[fit]))
    np.testing.assert_allclose(parts[0]["fit_correlations"], _numpy_cca_correlations(h_v, h_s), rtol=1e-10)
    h_v, h_s = (np.asarray(h) for h in model.tower_outputs(x_v[val], x_s[val]))
    best = int(np.argmax(parts[0]["val_corr"]))
    assert np.sum(_numpy_cca_correlations(h_v, h_s)) == pytest.approx(parts[0]["val_corr"][best], rel=1e-10)


# ------------------------------------------------------------------------------- in-process checks
def test_shard_batch_apply_pads_and_blocks():
    mesh = dist.make_mesh()
    imgs = W.images(13)
    want = np.asarray(W.conv_net(W.conv_params(), jnp.asarray(imgs)))
    np.testing.assert_allclose(np.asarray(dist.shard_batch_apply(W.conv_net, W.conv_params(), imgs, mesh)), want, atol=1e-12)
    got = dist.shard_batch_apply(W.conv_net, W.conv_params(), imgs, mesh, per_device_batch=5)
    assert got.shape == (13, 5)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-12)
    with pytest.raises(ValueError, match="same rows"):
        dist.shard_batch_apply(W.conv_net, W.conv_params(), (imgs, imgs[:3]), mesh)


def test_make_mesh_shapes_and_errors():
    mesh = dist.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.shape["data"] == jax.device_count()
    with pytest.raises(ValueError, match="n_devices=99"):
        dist.make_mesh(99)
    with pytest.raises(ValueError, match="multiple of model_parallel=2"):
        dist.make_mesh(1, model_parallel=2)
    with pytest.raises(ValueError, match="no axis named 'batch'"):
        dist.shard_batch(np.zeros((4, 2)), mesh, axis_name="batch")


def test_process_slice_tiles_rows():
    for n, p in [(10, 3), (7, 4), (0, 2), (1000, 8)]:
        slices = [dist.process_slice(n, process_index=i, process_count=p) for i in range(p)]
        assert slices[0].start == 0 and slices[-1].stop == n
        assert all(a.stop == b.start for a, b in zip(slices[:-1], slices[1:]))
        assert max(s.stop - s.start for s in slices) - min(s.stop - s.start for s in slices) <= 1
    eq = [dist.process_slice(103, process_index=i, process_count=4, multiple_of=8) for i in range(4)]
    assert [(s.start, s.stop) for s in eq] == [(0, 24), (24, 48), (48, 72), (72, 96)]
    with pytest.raises(ValueError, match="process_index=4"):
        dist.process_slice(10, process_index=4, process_count=4)


def test_initialize_distributed_arguments():
    # A single process unless told otherwise (the environment is the main's business, test_cli_common.py).
    assert dist.initialize_distributed(cpu_collectives=None) is False
    assert dist.initialize_distributed(num_processes=1, cpu_collectives=None) is False
    with pytest.raises(ValueError, match="num_processes=None, process_id=None"):
        dist.initialize_distributed("localhost:1234", cpu_collectives=None)
    with pytest.raises(ValueError, match=r"process_id=2 must be in \[0, num_processes=2\)"):
        dist.initialize_distributed("localhost:1234", 2, 2, cpu_collectives=None)


def test_allreduce_stats_single_process_is_identity():
    x_v, x_s = W.data()
    st = stats_from_arrays(x_v, x_s, chunk_size=32)
    assert dist.allreduce_stats(st) is st
    np.testing.assert_allclose(st.comoment / (W.N_ROWS - 1), np.cov(np.c_[x_v, x_s], rowvar=False), atol=1e-13)


def test_bfloat16_policy_towers_in_bf16_objective_in_float32():
    x_v, x_s = W.data()
    batch = {"x_v": jnp.asarray(x_v, jnp.float32), "x_s": jnp.asarray(x_s, jnp.float32)}
    params = dist.cast_floating(W.two_tower_params(), jnp.float32)
    rng = jax.random.key(3)
    policy = dist.precision_policy("bfloat16")
    assert policy.compute_dtype == jnp.bfloat16 and policy.output_dtype == jnp.float32
    h = dist.apply_with_policy(W.mlp, params["v"], batch["x_v"], policy)
    assert h.dtype == jnp.float32
    # The tower really ran in bf16: its output is bf16-representable and differs from float32's.
    h32 = W.mlp(params["v"], batch["x_v"])
    assert np.array_equal(np.asarray(h), np.asarray(h.astype(jnp.bfloat16).astype(jnp.float32)))
    assert 1e-4 < float(jnp.max(jnp.abs(h - h32))) < 0.1
    lo = jax.value_and_grad(lambda p: W.loss_fn(p, batch, rng, policy)[0])
    hi = jax.value_and_grad(lambda p: W.loss_fn(p, batch, rng, "float64")[0])
    (l_lo, g_lo), (l_hi, g_hi) = jax.jit(lo)(params), jax.jit(hi)(dist.cast_floating(params, jnp.float64))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g_lo))
    assert abs(float(l_lo) - float(l_hi)) < 0.02 * abs(float(l_hi))
    cos = np.dot(_flat(g_lo), _flat(g_hi)) / np.linalg.norm(_flat(g_lo)) / np.linalg.norm(_flat(g_hi))
    assert cos > 0.98
    with pytest.raises(ValueError, match="unknown precision policy 'bf8'"):
        dist.precision_policy("bf8")


@pytest.mark.slow
def test_dcca_step_with_bfloat16_towers():
    tv, ts, cfg, state = W.dcca_setup("bfloat16")
    tv32, ts32, _, state32 = W.dcca_setup("float32")
    x_v, x_s = (jnp.asarray(a, jnp.float32) for a in W.data())
    rng = jax.random.key(7)
    s_lo, m_lo = dcca.make_train_step(tv, ts, cfg)(state, (x_v, x_s), rng)
    _, m_hi = dcca.make_train_step(tv32, ts32, cfg)(state32, (x_v, x_s), rng)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(s_lo.params))
    assert np.isfinite(float(m_lo["loss"])) and np.isfinite(float(m_lo["grad_norm"]))
    assert float(m_lo["loss"]) != float(m_hi["loss"])
    np.testing.assert_allclose(float(m_lo["loss"]), float(m_hi["loss"]), rtol=0.02)


def test_fit_dcca_data_parallel_starts_at_cca_and_improves(tmp_path):
    from dcca_jax.models.cca import fit_linear_cca
    from dcca_jax.objectives import correlation_objective

    x_v, x_s = W.data()
    x_v = np.concatenate([x_v, x_v * 0.5 + 0.1], axis=0)  # 192 rows: two global batches of 96
    x_s = np.concatenate([x_s, x_s], axis=0)
    cfg = dcca.dcca_config("paper")
    cfg.towers.update(visual_hidden=(8,), semantic_hidden=(8,), out_dim=3, residual_cca=True, cca_init_ridge=1e-3)
    cfg.update(batch_size=96, epochs=0, learning_rate=1e-2, dtype="float64", validation_fraction=0.0)
    mesh = dist.make_mesh()
    model0 = dist.fit_dcca_data_parallel(x_v, x_s, cfg, mesh)
    assert model0.history == []
    # Residual towers start exactly at the linear CCA fitted from streamed statistics (Eq. 8).
    from dcca_jax.models.towers import make_tower

    tv = make_tower(hidden=(8,), out_dim=3, residual_cca=True, param_dtype=jnp.float64)
    ts = make_tower(hidden=(8,), out_dim=3, residual_cca=True, param_dtype=jnp.float64)
    h_v = tv.apply({"params": model0.params["visual"]}, jnp.asarray(x_v))
    h_s = ts.apply({"params": model0.params["semantic"]}, jnp.asarray(x_s))
    lin = fit_linear_cca(x_v, x_s, n_components=3, ridge_v=1e-3, ridge_s=1e-3)
    np.testing.assert_allclose(np.asarray(h_v), np.asarray((x_v - lin.mean_v) @ lin.proj_v), atol=1e-10)
    cfg.epochs = 3
    metrics = tmp_path / "m.jsonl"
    model = dist.fit_dcca_data_parallel(x_v, x_s, cfg, mesh, metrics_path=metrics)
    assert [h["epoch"] for h in model.history] == [0, 1, 2] and model.best_step == 6
    assert len(metrics.read_text().splitlines()) == 3
    h_v = tv.apply({"params": model.params["visual"]}, jnp.asarray(x_v))
    h_s = ts.apply({"params": model.params["semantic"]}, jnp.asarray(x_s))
    before = float(np.sum(np.asarray(lin.correlations)))
    after = float(correlation_objective(h_v, h_s, ridge_v=cfg.ridge_v, ridge_s=cfg.ridge_s))
    assert after > before
    cfg.batch_size = 400
    with pytest.raises(ValueError, match="holds 192 rows, fewer than its share 400 of batch_size=400"):
        dist.fit_dcca_data_parallel(x_v, x_s, cfg, mesh)
    cfg.optimizer = "lbfgs"
    with pytest.raises(ValueError, match="optimizer='lbfgs'"):
        dist.fit_dcca_data_parallel(x_v, x_s, cfg, mesh)


def _numpy_cca_correlations(h_v, h_s, ridge=1e-4):
    o = h_v.shape[1]
    c = np.cov(np.concatenate([h_v, h_s], axis=1).T) + ridge * np.eye(2 * o)
    w_v, w_s = (np.linalg.inv(np.linalg.cholesky(c[i:i + o, i:i + o])) for i in (0, o))
    return np.linalg.svd(w_v @ c[:o, o:] @ w_s.T, compute_uv=False)


def test_fit_dcca_data_parallel_early_stops_and_ends_with_the_final_cca(tmp_path):
    from dcca_jax.training import validation_split

    x_v, x_s = W.data()
    cfg = dcca.dcca_config("paper")
    cfg.towers.update(visual_hidden=(8,), semantic_hidden=(8,), out_dim=3, residual_cca=True, cca_init_ridge=1e-3)
    cfg.update(batch_size=48, epochs=10, patience=1, learning_rate=0.1, dtype="float64")
    # Held-out pairs whose pairing is broken: their correlation only fluctuates, so patience 1 stops early.
    rng = np.random.default_rng(3)
    v_v, v_s = rng.standard_normal((64, x_v.shape[1])), rng.standard_normal((64, x_s.shape[1]))
    mesh = dist.make_mesh()
    model = dist.fit_dcca_data_parallel(x_v, x_s, cfg, mesh, validation=(v_v, v_s), metrics_path=tmp_path / "m")
    assert isinstance(model, dcca.DeepCCA) and model.is_fitted
    vals = [h["val_corr"] for h in model.history]
    best = int(np.argmax(vals))
    # the kept parameters are those of the best held-out epoch; training stopped `patience` epochs later
    assert model.best_step == model.history[best]["step"] and model.best_val_corr == vals[best]
    assert len(vals) == best + 1 + cfg.patience < cfg.epochs
    h_v, h_s = (np.asarray(h) for h in model.tower_outputs(v_v, v_s))
    assert np.sum(_numpy_cca_correlations(h_v, h_s)) == pytest.approx(vals[best], rel=1e-8)
    # Eq. 8: the final CCA is the linear CCA of the kept towers' outputs on the training rows
    h_v, h_s = (np.asarray(h) for h in model.tower_outputs(x_v, x_s))
    np.testing.assert_allclose(np.asarray(model.correlations), _numpy_cca_correlations(h_v, h_s), rtol=1e-8)
    # without explicit validation rows, a seeded validation_fraction of the rows is held out, not trained on
    cfg.update(epochs=1, validation_fraction=0.25)
    split = dist.fit_dcca_data_parallel(x_v, x_s, cfg, mesh)
    fit, val = validation_split(len(x_v), n_val=round(0.25 * len(x_v)), seed=0)
    h_v, h_s = (np.asarray(h) for h in split.tower_outputs(x_v[fit], x_s[fit]))
    np.testing.assert_allclose(np.asarray(split.correlations), _numpy_cca_correlations(h_v, h_s), rtol=1e-8)
    h_v, h_s = (np.asarray(h) for h in split.tower_outputs(x_v[val], x_s[val]))
    assert np.sum(_numpy_cca_correlations(h_v, h_s)) == pytest.approx(split.history[0]["val_corr"], rel=1e-8)


def test_shard_backbone_refuses_the_litert_engine():
    """The LiteRT engine is a host interpreter, not a JAX function: sharding it over a mesh is refused by name."""
    import dataclasses

    lite = dataclasses.replace(W.tiny_backbone(), engine="litert", input_uint8=True)
    with pytest.raises(ValueError, match="only the JAX engine runs over a mesh.*'litert'"):
        dist.shard_backbone(lite, None)
