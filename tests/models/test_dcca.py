"""DeepCCA: held-out gain over linear CCA, finite gradients, resume == uninterrupted, errors, save/load."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcca_jax.models.base import load_model
from dcca_jax.models.cca import LinearCCA
from dcca_jax.data.synthetic import correlated_views
from dcca_jax.models.dcca import (DCCATrainState, DeepCCA, NonFiniteLossError, dcca_config, make_optimizer,
                                  make_train_chunk, make_train_step)
from dcca_jax.models.towers import make_tower


def _paper(**fields) -> dict:
    """A complete config dict: the paper preset (the library default these tests were written for) + fields."""
    cfg = dcca_config("paper")
    cfg.update(fields)
    return cfg.to_dict()


TINY = _paper(
    towers=dict(visual_hidden=(16,), semantic_hidden=(16,), out_dim=2, activation="tanh"),
    batch_size=250,
    learning_rate=2e-2,
    epochs=15,
    patience=0,
    log_every=1000,
)


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    # Compilation dominates these tiny runs; XLA's optimisations do not pay off here.
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="module")
def nonlinear_pair():
    # x_s depends on the square of the latents x_v is linear in: no linear correlation to find.
    x_v, x_s = correlated_views(1500, 6, 6, latent=2, noise=0.3, nonlinear=True, seed=0, dtype=np.float32)
    return (x_v[:1000], x_s[:1000]), (x_v[1000:], x_s[1000:])


@pytest.fixture(scope="module")
def trained(nonlinear_pair, tmp_path_factory):
    (x_v, x_s), _ = nonlinear_pair
    workdir = tmp_path_factory.mktemp("dcca")
    model = DeepCCA(TINY).fit(x_v, x_s, workdir=workdir)
    return model, workdir


def test_heldout_correlation_well_above_linear_cca(trained, nonlinear_pair):
    model, _ = trained
    (x_v, x_s), (t_v, t_s) = nonlinear_pair
    lin = LinearCCA(n_components=2, ridge_v=1e-4, ridge_s=1e-4).fit(x_v, x_s)
    lin_total = float(np.sum(lin.score(t_v, t_s)))
    deep_total = float(np.sum(model.score(t_v, t_s)))
    assert lin_total < 0.3  # the relation is quadratic: linear CCA finds next to nothing
    assert deep_total > lin_total + 1.0, (deep_total, lin_total)
    # Held-out components come from the CCA fitted on training outputs (Eq. 8), so each is at most
    # about its training correlation.
    assert np.all(np.asarray(model.score(t_v, t_s)) <= np.asarray(model.correlations) + 0.1)


def test_final_cca_is_linear_cca_of_the_tower_outputs(trained, nonlinear_pair):
    model, _ = trained
    (x_v, x_s), _ = nonlinear_pair
    # Oracle: numpy CCA on the towers' outputs for the training split (validation rows removed).
    tr = np.sort(np.random.default_rng(TINY.get("seed", 0)).permutation(1000)[100:])
    h_v, h_s = (np.asarray(h, np.float64) for h in model.tower_outputs(x_v[tr], x_s[tr]))

    def inv_sqrt(c):
        w, u = np.linalg.eigh(c)
        return (u / np.sqrt(w)) @ u.T

    hv, hs = h_v - h_v.mean(0), h_s - h_s.mean(0)
    n = len(hv)
    cvv = hv.T @ hv / (n - 1) + 1e-4 * np.eye(2)
    css = hs.T @ hs / (n - 1) + 1e-4 * np.eye(2)
    rho = np.linalg.svd(inv_sqrt(cvv) @ (hv.T @ hs / (n - 1)) @ inv_sqrt(css), compute_uv=False)
    np.testing.assert_allclose(np.asarray(model.correlations), rho, rtol=1e-4)
    z_v, z_s = model.transform(x_v[tr], x_s[tr])
    np.testing.assert_allclose(np.corrcoef(np.asarray(z_v).T, np.asarray(z_s).T)[[0, 1], [2, 3]], rho, rtol=1e-3)


def test_metrics_file_and_best_epoch(trained):
    model, workdir = trained
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(1, 15 * 3 + 1))  # 900 train rows // 250 = 3 per epoch
    assert len(epochs) == 15 and all(np.isfinite(r["val_corr"]) for r in epochs)
    # the kept parameters are those of the epoch with the best held-out correlation
    best = max(epochs, key=lambda r: r["val_corr"])
    assert model.best_step == best["step"]
    assert model.best_val_corr == pytest.approx(best["val_corr"])
    # train objective of an epoch = mean of its steps' objectives
    first = [r["objective"] for r in steps[:3]]
    assert epochs[0]["train_objective"] == pytest.approx(np.mean(first), rel=1e-6)


def test_resume_after_interrupt_equals_uninterrupted(nonlinear_pair, tmp_path):
    (x_v, x_s), (t_v, t_s) = nonlinear_pair
    cfg = dict(TINY, epochs=4, checkpoint_every=2, patience=2)
    full = DeepCCA(cfg).fit(x_v, x_s, workdir=tmp_path / "full")

    class Interrupt(Exception):
        pass

    def stop_at_7(step, metrics):
        if step == 7:  # mid-epoch 2; the last checkpoint is at step 6
            raise Interrupt

    with pytest.raises(Interrupt):
        DeepCCA(cfg).fit(x_v, x_s, workdir=tmp_path / "resumed", callback=stop_at_7)
    seen = []
    resumed = DeepCCA(cfg).fit(x_v, x_s, workdir=tmp_path / "resumed", callback=lambda s, m: seen.append(s))
    assert seen[0] == 7  # it resumed after the step-6 checkpoint instead of starting over
    for a, b in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(full.score(t_v, t_s)), np.asarray(resumed.score(t_v, t_s)))
    strip = lambda h: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in h]  # noqa: E731
    assert strip(full.history) == strip(resumed.history)


def test_checkpoints_at_epoch_ends_when_checkpoint_every_spans_epochs(nonlinear_pair, tmp_path):
    """checkpoint_every=4 with 3 steps per epoch: saves at the first epoch end after each multiple of 4 (step 6
    after 4, step 9 after 8), so epochs run whole; a resume still ends bit-identical to an uninterrupted run."""
    (x_v, x_s), (t_v, t_s) = nonlinear_pair
    cfg = dict(TINY, epochs=4, checkpoint_every=4, patience=0)
    assert x_v.shape[0] * (1 - DeepCCA(cfg).config.validation_fraction) // cfg["batch_size"] == 3
    full = DeepCCA(cfg).fit(x_v, x_s, workdir=tmp_path / "full")

    class Interrupt(Exception):
        pass

    def stop_at_8(step, metrics):
        if step == 8:
            raise Interrupt

    with pytest.raises(Interrupt):
        DeepCCA(cfg).fit(x_v, x_s, workdir=tmp_path / "resumed", callback=stop_at_8)
    seen = []
    resumed = DeepCCA(cfg).fit(x_v, x_s, workdir=tmp_path / "resumed", callback=lambda s, m: seen.append(s))
    assert seen[0] == 7  # the last checkpoint was the end of epoch 2 (step 6), not step 4 or 8
    for a, b in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(full.score(t_v, t_s)), np.asarray(resumed.score(t_v, t_s)))


def test_resume_with_a_different_config_is_refused(nonlinear_pair, tmp_path):
    (x_v, x_s), _ = nonlinear_pair
    DeepCCA(dict(TINY, epochs=1)).fit(x_v, x_s, workdir=tmp_path)
    with pytest.raises(ValueError, match="different config"):
        DeepCCA(dict(TINY, epochs=2, learning_rate=1e-3)).fit(x_v, x_s, workdir=tmp_path)


def test_gradients_finite_with_dead_units():
    cfg = DeepCCA.default_config()
    cfg.update(TINY)
    cfg.towers.activation = "relu"
    cfg.towers.out_dim = 3
    tower = make_tower(hidden=(8,), out_dim=3, activation="relu")
    rng = np.random.default_rng(0)
    x_v = rng.standard_normal((64, 5)).astype(np.float32)
    x_s = rng.standard_normal((64, 4)).astype(np.float32)
    p_v = tower.init(jax.random.key(0), x_v[:2])["params"]
    p_s = tower.init(jax.random.key(1), x_s[:2])["params"]
    # Dead ReLU units (huge negative bias), and two identical output columns per tower: repeated
    # (zero) eigenvalues in the output covariance, where eigh-based gradients turn into NaN.
    p_v["mlp"]["dense_0"]["bias"] = p_v["mlp"]["dense_0"]["bias"].at[:4].set(-1e3)
    p_s["mlp"]["dense_0"]["bias"] = p_s["mlp"]["dense_0"]["bias"].at[:4].set(-1e3)
    for p in (p_v, p_s):
        k = p["mlp"]["output"]["kernel"]
        p["mlp"]["output"]["kernel"] = k.at[:, 2].set(k[:, 1])
    cfg.towers.visual_hidden = cfg.towers.semantic_hidden = (8,)

    for objective in ("trace_norm", "eq6"):
        cfg.objective = objective
        step = make_train_step(tower, tower, cfg)
        # (copies: the train step donates its state's buffers)
        params = jax.tree_util.tree_map(jnp.array, {"visual": p_v, "semantic": p_s})
        state = DCCATrainState.create(apply_fn=None, params=params,
                                      tx=make_optimizer(cfg), batch_stats={})
        before = jax.tree_util.tree_map(np.array, state.params)
        state, metrics = step(state, (jnp.asarray(x_v), jnp.asarray(x_s)), jax.random.key(0))
        assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"])), objective
        after = jax.tree_util.tree_map(np.asarray, state.params)
        assert all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(after))
        # dead units get exactly zero gradient (ReLU derivative 0), and Adam moves a zero gradient by 0
        np.testing.assert_array_equal(after["visual"]["mlp"]["dense_0"]["kernel"][:, :4],
                                      before["visual"]["mlp"]["dense_0"]["kernel"][:, :4])
        assert not np.array_equal(after["visual"]["mlp"]["dense_0"]["kernel"][:, 4:],
                                  before["visual"]["mlp"]["dense_0"]["kernel"][:, 4:])


def test_scanned_chunk_equals_step_by_step(nonlinear_pair):
    # The training loop runs steps in a jitted lax.scan; the oracle is the per-step train_step on the
    # same batches (rows order[i*b:(i+1)*b]).
    (x_v, x_s), _ = nonlinear_pair
    cfg = DeepCCA.default_config()
    cfg.update(TINY)
    tower = make_tower(hidden=(16,), out_dim=2, activation="tanh")
    params = {"visual": tower.init(jax.random.key(0), x_v[:2])["params"],
              "semantic": tower.init(jax.random.key(1), x_s[:2])["params"]}

    def fresh():
        p = jax.tree_util.tree_map(jnp.array, params)
        return DCCATrainState.create(apply_fn=None, params=p, tx=make_optimizer(cfg), batch_stats={}).replace(
            step=jnp.zeros((), jnp.int32))

    order = jnp.asarray(np.random.default_rng(0).permutation(x_v.shape[0]))
    rng, bs = jax.random.key(3), 250
    step = make_train_step(tower, tower, cfg)
    state, losses = fresh(), []
    for i in range(1, 4):  # steps 1..3 of the epoch
        idx = order[i * bs:(i + 1) * bs]
        state, m = step(state, (jnp.asarray(x_v)[idx], jnp.asarray(x_s)[idx]), rng)
        losses.append(float(m["loss"]))
    chunk = make_train_chunk(tower, tower, cfg)
    scanned, metrics = chunk(fresh(), jnp.asarray(x_v), jnp.asarray(x_s), order, jnp.int32(1), rng,
                             length=3, batch_size=bs)
    np.testing.assert_allclose(np.asarray(metrics["loss"]), losses, rtol=1e-5)
    assert metrics["grad_norm"].shape == (3,)
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(scanned.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_batch_smaller_than_output_dim_refused(nonlinear_pair):
    (x_v, x_s), _ = nonlinear_pair
    cfg = dict(TINY, batch_size=8, towers=dict(TINY["towers"], out_dim=10))
    with pytest.raises(ValueError, match=r"batch_size=8 .* output dimension out_dim=10"):
        DeepCCA(cfg).fit(x_v, x_s)


def test_nonfinite_loss_raises_with_advice():
    rng = np.random.default_rng(0)
    # One input feature and a linear tower: the 3 outputs have a rank-1 covariance, singular
    # without a ridge, so the whitening is NaN from the first step.
    x_v = rng.standard_normal((200, 1)).astype(np.float32)
    x_s = rng.standard_normal((200, 3)).astype(np.float32)
    cfg = dict(TINY, ridge_v=0.0, ridge_s=0.0, towers=dict(TINY["towers"], visual_hidden=(), semantic_hidden=(),
                                                              out_dim=3, activation="identity"), batch_size=100)
    with pytest.raises(NonFiniteLossError, match=r"ridge_v/ridge_s .* learning_rate .*batch_size") as err:
        DeepCCA(cfg).fit(x_v, x_s)
    assert "step 1" in str(err.value)


def test_lbfgs_full_batch(nonlinear_pair):
    (x_v, x_s), (t_v, t_s) = nonlinear_pair
    cfg = dict(TINY, optimizer="lbfgs", batch_size=0, epochs=6)
    model = DeepCCA(cfg).fit(x_v, x_s)
    objs = [r["train_objective"] for r in model.history]
    assert objs[-1] > objs[0] + 0.3, objs  # line-searched steps increase the objective
    assert all(b >= a - 1e-6 for a, b in zip(objs, objs[1:]))  # monotone (zoom line search)
    with pytest.raises(ValueError, match="L-BFGS is full-batch"):
        DeepCCA(dict(cfg, batch_size=100)).fit(x_v, x_s)


def test_save_load_round_trip(trained, nonlinear_pair, tmp_path):
    model, _ = trained
    _, (t_v, t_s) = nonlinear_pair
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, DeepCCA)
    a, b = model.transform(t_v, t_s), loaded.transform(t_v, t_s)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
    only_s = loaded.transform(x_s=t_s)
    assert only_s[0] is None and np.array_equal(np.asarray(only_s[1]), np.asarray(b[1]))
    assert loaded.history == model.history


def test_residual_cca_towers_start_at_linear_cca(nonlinear_pair):
    # One step with learning rate ~0: the held-out correlation equals linear CCA's (the towers are
    # the CCA map at initialisation), an oracle independent of the deep part.
    x_v, x_s = correlated_views(1200, 6, 6, latent=2, noise=0.5, seed=3, dtype=np.float32)
    cfg = dict(TINY, epochs=1, learning_rate=1e-12, validation_fraction=0.0, batch_size=0,
               towers=dict(TINY["towers"], residual_cca=True, cca_init_ridge=1e-4))
    model = DeepCCA(cfg).fit(x_v[:1000], x_s[:1000])
    lin = LinearCCA(n_components=2, ridge_v=1e-4, ridge_s=1e-4).fit(x_v[:1000], x_s[:1000])
    np.testing.assert_allclose(np.asarray(model.correlations), np.asarray(lin.correlations), atol=1e-3)
    np.testing.assert_allclose(np.abs(np.asarray(model.score(x_v[1000:], x_s[1000:]))),
                               np.abs(np.asarray(lin.score(x_v[1000:], x_s[1000:]))), atol=2e-3)


def test_float64_training():
    x_v, x_s = correlated_views(400, 4, 4, latent=2, noise=0.5, seed=1)
    cfg = dict(TINY, dtype="float64", epochs=2, batch_size=100)
    model = DeepCCA(cfg).fit(x_v, x_s)
    assert all(p.dtype == jnp.float64 for p in jax.tree_util.tree_leaves(model.params))
    assert model.transform(x_v, x_s)[0].dtype == jnp.float64


def test_bad_config_values_raise(nonlinear_pair):
    (x_v, x_s), _ = nonlinear_pair
    with pytest.raises(ValueError, match="objective must be one of"):
        DeepCCA(dict(TINY, objective="cosine")).fit(x_v, x_s)
    with pytest.raises(ValueError, match="L-BFGS needs a deterministic"):
        DeepCCA(dict(TINY, optimizer="lbfgs", batch_size=0, towers=dict(TINY["towers"], dropout=0.2))).fit(x_v, x_s)


def test_config_object_from_default_config_is_accepted():
    cfg = DeepCCA.default_config()
    cfg.objective = "sum_squares"
    cfg.n_components = 3
    model = DeepCCA(cfg)
    assert model.config.objective == "sum_squares" and model.n_components == 3
    assert model.config.towers.out_dim == 50 and model.config.k is None


def test_fit_seconds_accumulate_over_resumes(nonlinear_pair, tmp_path):
    (x_v, x_s), _ = nonlinear_pair
    first = DeepCCA(dict(TINY, epochs=1)).fit(x_v, x_s, workdir=tmp_path)
    second = DeepCCA(dict(TINY, epochs=2)).fit(x_v, x_s, workdir=tmp_path)  # resumes after epoch 1
    assert [r["epoch"] for r in second.history] == [0, 1]
    assert second.history[0]["elapsed_s"] == first.history[0]["elapsed_s"]  # restored from the file
    assert second.fit_seconds >= second.history[-1]["elapsed_s"] > first.history[0]["elapsed_s"]


def _defaults_vs_linear(nonlinear: bool, seed: int) -> tuple[float, float]:
    """Held-out total correlation (50 components) of DeepCCA() with library defaults and of LinearCCA."""
    x_v, x_s = correlated_views(2000, 76, 64, nonlinear=nonlinear, seed=seed, dtype=np.float32)
    tr, te = slice(0, 1000), slice(1000, 2000)
    linear = LinearCCA(n_components=50).fit(x_v[tr], x_s[tr])
    deep = DeepCCA(seed=seed, log_every=10**9).fit(x_v[tr], x_s[tr])
    return float(jnp.sum(deep.score(x_v[te], x_s[te]))), float(jnp.sum(linear.score(x_v[te], x_s[te])))


def test_default_config_is_the_pipeline_setting_and_paper_is_a_preset():
    c = DeepCCA().config
    assert (c.towers.activation, c.towers.residual_cca, c.towers.dropout) == ("relu", True, 0.1)
    assert c.validation_fraction > 0 and c.patience > 0 and c.epochs >= 100 and c.batch_size == 128
    p = dcca_config("paper")
    assert (p.towers.activation, p.towers.residual_cca, p.towers.dropout, p.epochs) == ("sigmoid", False, 0.0, 10)
    assert p.towers.visual_hidden == (1024, 1024) and p.batch_size == 1000
    with pytest.raises(ValueError, match="preset"):
        dcca_config("sigmoid")


# Measured (held-out totals, DeepCCA() / LinearCCA): linear pairs 13.99/13.88, 13.82/13.97, 13.27/13.31;
# nonlinear pairs 0.40/0.08, -0.11/-0.26, 0.40/-0.20 (seeds 0-2). The paper preset: 13.82, 13.97, 13.26 and
# -0.01, 0.20, -0.22 (these pairs separate the settings little; the gap was on the real 76-d/64-d pair).
@pytest.mark.parametrize("nonlinear", [False, True])
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_defaults_do_not_lose_to_linear_cca_held_out(nonlinear, seed):
    deep, linear = _defaults_vs_linear(nonlinear, seed)
    assert deep >= linear - 0.3, (deep, linear)
