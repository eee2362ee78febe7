"""Fixtures shared by tests/test_distributed.py and the subprocesses it starts.

The subprocesses need XLA_FLAGS (several CPU devices) or jax.distributed set up before JAX starts, which
the pytest process (JAX already imported) cannot do. Run as

    python tests/_scale_worker.py multidevice OUT.npz
    python tests/_scale_worker.py multiprocess OUT.npz PORT PROCESS_ID NUM_PROCESSES

Both write their sharded results to OUT.npz; the test computes the single-device reference itself.
"""
from __future__ import annotations

import os
import sys

LR = 0.1
N_ROWS = 96  # divisible by 8 devices and by 2 processes x 2 devices
D_V, D_S, O = 10, 7, 4


def data():
    import numpy as np

    rng = np.random.default_rng(0)
    x_v = rng.standard_normal((N_ROWS, D_V))
    x_s = np.tanh(x_v[:, :5] @ rng.standard_normal((5, D_S))) + 0.5 * rng.standard_normal((N_ROWS, D_S))
    return x_v, x_s


def mlp_init(key, sizes):
    import jax
    import jax.numpy as jnp

    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        key, k = jax.random.split(key)
        layers.append({"w": jax.random.normal(k, (a, b)) / jnp.sqrt(a), "b": 0.1 * jnp.ones(b)})
    return layers


def mlp(layers, x):
    import jax.numpy as jnp

    for i, p in enumerate(layers):
        x = x @ p["w"] + p["b"]
        if i < len(layers) - 1:
            x = jnp.tanh(x)
    return x


def two_tower_params():
    import jax

    return {"v": mlp_init(jax.random.key(0), [D_V, 16, O]), "s": mlp_init(jax.random.key(1), [D_S, 16, O])}


def loss_fn(params, batch, rng, policy="float64"):
    """Two-tower DCCA loss with dropout on the inputs (so the RNG path is exercised too)."""
    import jax

    from dcca_jax.distributed import apply_with_policy
    from dcca_jax.objectives import cca_loss

    keep = jax.random.bernoulli(rng, 0.9, batch["x_v"].shape)
    h_v = apply_with_policy(mlp, params["v"], batch["x_v"] * keep / 0.9, policy)
    h_s = apply_with_policy(mlp, params["s"], batch["x_s"], policy)
    loss = cca_loss(h_v, h_s, objective="trace_norm", ridge_v=1e-3, ridge_s=1e-3)
    return loss, {"h_v_mean": h_v.mean()}


def init_state():
    import optax
    from flax.training import train_state

    return train_state.TrainState.create(apply_fn=None, params=two_tower_params(), tx=optax.sgd(LR))


def dcca_setup(policy=None):
    """DeepCCA's own towers and train step (batch norm and dropout on, so both see the global batch)."""
    import jax
    import jax.numpy as jnp

    from dcca_jax.models import dcca
    from dcca_jax.distributed import with_precision
    from dcca_jax.models.towers import make_tower

    cfg = dcca.dcca_config("paper")
    cfg.towers.update(visual_hidden=(16,), semantic_hidden=(16,), out_dim=O, batch_norm=True, dropout=0.1)
    cfg.learning_rate = 1e-2
    # float64 parameters without a policy, so the sharded/unsharded comparison is at float64 round-off.
    kw = dict(hidden=(16,), out_dim=O, batch_norm=True, dropout=0.1, activation="sigmoid")
    tv = make_tower(**kw, param_dtype=jnp.float64 if policy is None else jnp.float32)
    ts = make_tower(**kw, param_dtype=jnp.float64 if policy is None else jnp.float32)
    if policy is not None:
        tv, ts = with_precision(tv, policy), with_precision(ts, policy)
    x_v, x_s = data()
    var_v = tv.init(jax.random.key(0), x_v[:2])
    var_s = ts.init(jax.random.key(1), x_s[:2])
    state = dcca.DCCATrainState.create(
        apply_fn=None, params={"visual": var_v["params"], "semantic": var_s["params"]},
        tx=dcca.make_optimizer(cfg), batch_stats={"visual": var_v["batch_stats"], "semantic": var_s["batch_stats"]},
    )
    return tv, ts, cfg, state


def conv_params():
    import jax

    k1, k2 = jax.random.split(jax.random.key(5))
    return {"c1": jax.random.normal(k1, (3, 3, 3, 8)) * 0.2, "w": jax.random.normal(k2, (8, 5)) * 0.3}


def conv_net(params, x):
    """A small per-example CNN: uint8 images (n, 12, 12, 3) -> (n, 5) features."""
    import jax
    import jax.numpy as jnp

    x = x.astype(params["c1"].dtype) / 255.0 - 0.5
    y = jax.lax.conv_general_dilated(x, params["c1"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.nn.relu(y).mean(axis=(1, 2))
    return jnp.tanh(y @ params["w"])


def images(n=37):
    import numpy as np

    return np.random.default_rng(2).integers(0, 256, size=(n, 12, 12, 3), dtype=np.uint8)


def tiny_backbone():
    """dcca_jax.visual.extract.Backbone around conv_net (12 x 12 crops), for the extraction pipeline."""
    import functools

    import jax

    from dcca_jax.visual.extract import Backbone
    from dcca_jax.visual.images import Preprocess

    pre = Preprocess(size=12, crop_fraction=1.0, normalisation="mobilenet_v2")
    return Backbone("tiny", jax.jit(functools.partial(conv_net, conv_params())), pre, 5, {"backbone": "tiny"})


def write_images(folder, n=11):
    """n small RGB PNGs of different sizes (the extraction pipeline resizes and crops them)."""
    import pathlib

    import numpy as np
    from PIL import Image

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    paths = []
    for i in range(n):
        h, w = 14 + i, 20 - i // 2
        p = folder / f"img_{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _flat(tree):
    import jax
    import numpy as np

    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def run_multidevice(out):
    import functools

    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_disable_most_optimizations", True)  # halves compile time; same numbers to 1e-12
    from dcca_jax import distributed as dist
    from dcca_jax.objectives import view_covariances

    assert jax.device_count() == 8, jax.devices()
    mesh = dist.make_mesh()
    x_v, x_s = data()
    batch = {"x_v": x_v, "x_s": x_s}
    rng = jax.random.key(7)
    step = dist.shard_train_step(dist.make_train_step(loss_fn), mesh)
    # Compile once ahead of time, to both run the step and read its partitioned program.
    placed = (dist.replicate(init_state(), mesh), dist.shard_batch(batch, mesh), dist.replicate(rng, mesh))
    compiled = step.jitted.lower(*placed).compile()
    hlo = compiled.as_text()
    state, metrics = compiled(*placed)
    state2, metrics2 = compiled(state, placed[1], placed[2])
    cov = jax.shard_map(
        lambda a, b: dist.global_view_covariances(a, b, ridge_v=1e-3, ridge_s=1e-3),
        mesh=mesh, in_specs=(dist.P("data"), dist.P("data")), out_specs=dist.P(),
    )(dist.shard_batch(x_v, mesh), dist.shard_batch(x_s, mesh))
    extracted = dist.shard_batch_apply(conv_net, conv_params(), images(), mesh)
    extracted_blocks = dist.shard_batch_apply(conv_net, conv_params(), images(), mesh, per_device_batch=2)
    extracted_closure = dist.sharded_apply(functools.partial(conv_net, conv_params()), mesh)(images())
    from dcca_jax.visual.extract import extract_features

    paths = write_images(os.path.join(os.path.dirname(out), "imgs"))
    pipeline = extract_features(paths, backbone=dist.shard_backbone(tiny_backbone(), mesh), batch_size=8)
    tv, ts, cfg, dstate = dcca_setup()
    dstep = dist.data_parallel_dcca_step(tv, ts, cfg, mesh)
    dstate1, dmetrics1 = dstep(dstate, (x_v, x_s), rng)
    dstate2, dmetrics2 = dstep(dstate1, (x_v, x_s), rng)
    ref_cov = view_covariances(x_v, x_s, ridge_v=1e-3, ridge_s=1e-3)
    np.savez(
        out,
        loss=np.asarray(metrics["loss"]),
        grad_norm=np.asarray(metrics["grad_norm"]),
        loss2=np.asarray(metrics2["loss"]),
        params1=_flat(state.params),
        params2=_flat(state2.params),
        cov=np.concatenate([np.ravel(np.asarray(c)) for c in cov]),
        cov_err=max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(cov, ref_cov)),
        extracted=np.asarray(extracted),
        extracted_blocks=np.asarray(extracted_blocks),
        extracted_closure=np.asarray(extracted_closure),
        pipeline=pipeline.features,
        dcca_loss=np.asarray([dmetrics1["loss"], dmetrics2["loss"]]),
        dcca_grad_norm=np.asarray([dmetrics1["grad_norm"], dmetrics2["grad_norm"]]),
        dcca_params2=_flat(dstate2.params),
        dcca_stats2=_flat(dstate2.batch_stats),
        n_all_gather=hlo.count(" all-gather("),
        n_all_reduce=hlo.count(" all-reduce("),
        n_devices=len(jax.devices()),
        param_sharding=str(state.params["v"][0]["w"].sharding.spec),
    )


def run_multiprocess(out, port, process_id, num_processes):
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_disable_most_optimizations", True)
    from dcca_jax import distributed as dist
    from dcca_jax.models.streaming import stats_from_arrays

    assert dist.initialize_distributed(f"localhost:{port}", num_processes, process_id, initialization_timeout=60)
    assert jax.process_count() == num_processes and jax.device_count() == 2 * num_processes
    x_v, x_s = data()
    sl = dist.process_slice(N_ROWS)
    local_v, local_s = x_v[sl], x_s[sl]
    stats = dist.allreduce_stats(stats_from_arrays(local_v, local_s, chunk_size=16))
    mesh = dist.make_mesh()
    rng = jax.random.key(7)
    step = dist.shard_train_step(dist.make_train_step(loss_fn), mesh)
    state, metrics = step(init_state(), {"x_v": local_v, "x_s": local_s}, rng)
    imgs = images(40)[dist.process_slice(40)]
    feats = dist.shard_batch_apply(conv_net, conv_params(), imgs, mesh)
    results = dict(
        count=stats.count,
        mean=stats.mean,
        comoment=stats.comoment,
        loss=np.asarray(metrics["loss"]),
        grad_norm=np.asarray(metrics["grad_norm"]),
        params1=_flat(state.params),
        feats=np.asarray(feats),
        rows=np.asarray([sl.start, sl.stop]),
    )
    # The whole data-parallel fit: held-out part on every process, early stopping, final CCA over all rows.
    from dcca_jax.models import dcca

    cfg = dcca.dcca_config("paper")
    cfg.towers.update(visual_hidden=(8,), semantic_hidden=(8,), out_dim=3, residual_cca=True)
    cfg.update(batch_size=48, epochs=3, learning_rate=1e-2, dtype="float64", validation_fraction=0.25)
    model = dist.fit_dcca_data_parallel(local_v, local_s, cfg, mesh)
    model.save(f"{out}.{process_id}.model")
    results.update(fit_correlations=np.asarray(model.correlations), best_step=model.best_step,
                   val_corr=np.asarray([h["val_corr"] for h in model.history]))
    np.savez(f"{out}.{process_id}.npz", **results)
    jax.distributed.shutdown()


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "multidevice":
        run_multidevice(out)
    elif mode == "multiprocess":
        run_multiprocess(out, int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
