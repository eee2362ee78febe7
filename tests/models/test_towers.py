"""Towers (Eq. 3): exact parameter counts, a numpy forward oracle, residual-over-CCA initialisation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcca_jax.models.cca import fit_linear_cca, project
from dcca_jax.models.towers import (
    ResidualCCATower,
    Tower,
    count_params,
    init_from_cca,
    make_tower,
    tower_forward_flops,
    tower_param_count,
)


def _init(tower, d, seed=0):
    return tower.init(jax.random.key(seed), jnp.zeros((2, d), jnp.float32))


def test_mnist_tower_parameter_count_matches_hand_count():
    # 392-1024-1024-50 (Andrew et al. 2013's MNIST towers): weights plus biases, counted by hand.
    hand = (392 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 50 + 50)
    assert hand == 1_503_282
    variables = _init(make_tower(hidden=(1024, 1024), out_dim=50), 392)
    assert count_params(variables["params"]) == hand
    assert tower_param_count(392, (1024, 1024), 50) == hand


@pytest.mark.parametrize(
    "kw, extra",
    [
        (dict(batch_norm=True), 2 * (7 + 5)),  # BN scale and shift per hidden unit
        (dict(residual_cca=True), 9 * 3 + 3),  # the CCA linear map d x o plus its bias
        (dict(dropout=0.5), 0),
    ],
)
def test_parameter_counts_of_options(kw, extra):
    base = (9 * 7 + 7) + (7 * 5 + 5) + (5 * 3 + 3)
    variables = _init(make_tower(hidden=(7, 5), out_dim=3, **kw), 9)
    assert count_params(variables["params"]) == base + extra
    assert tower_param_count(9, (7, 5), 3, batch_norm=kw.get("batch_norm", False),
                             residual_cca=kw.get("residual_cca", False)) == base + extra
    if kw.get("batch_norm"):
        # running mean and variance are state, not parameters
        assert count_params(variables["batch_stats"]) == 2 * (7 + 5)


@pytest.mark.parametrize(
    "activation, fn",
    [
        ("sigmoid", lambda z: 1.0 / (1.0 + np.exp(-z))),
        ("tanh", np.tanh),
        ("relu", lambda z: np.maximum(z, 0.0)),
    ],
)
def test_forward_matches_numpy_mlp(activation, fn):
    tower = make_tower(hidden=(6, 4), out_dim=3, activation=activation)
    variables = _init(tower, 5, seed=1)
    x = np.random.default_rng(0).standard_normal((11, 5)).astype(np.float32)
    p = jax.tree_util.tree_map(np.asarray, variables["params"])["mlp"]
    h = fn(x @ p["dense_0"]["kernel"] + p["dense_0"]["bias"])
    h = fn(h @ p["dense_1"]["kernel"] + p["dense_1"]["bias"])
    want = h @ p["output"]["kernel"] + p["output"]["bias"]  # linear output layer
    got = tower.apply(variables, x)
    assert got.shape == (11, 3)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_tower_jits_and_float64_params():
    tower = make_tower(hidden=(4,), out_dim=2, param_dtype=jnp.float64)
    variables = tower.init(jax.random.key(0), jnp.zeros((2, 3)))
    assert all(v.dtype == jnp.float64 for v in jax.tree_util.tree_leaves(variables))
    x = jnp.ones((5, 3), jnp.float64)
    np.testing.assert_array_equal(jax.jit(tower.apply)(variables, x), tower.apply(variables, x))


def test_residual_tower_starts_at_the_linear_cca_map():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((300, 2))
    x_v = z @ rng.standard_normal((2, 6)) + 0.5 * rng.standard_normal((300, 6))
    x_s = z @ rng.standard_normal((2, 5)) + 0.5 * rng.standard_normal((300, 5))
    lin = fit_linear_cca(x_v, x_s, n_components=2)
    tower = ResidualCCATower(hidden=(8,), out_dim=4, activation="sigmoid", param_dtype=jnp.float64)
    params = tower.init(jax.random.key(0), x_v[:2])["params"]
    # the residual MLP's output layer starts at zero
    assert not np.any(np.asarray(params["mlp"]["output"]["kernel"]))
    params = init_from_cca(params, proj=lin.proj_v, mean=lin.mean_v)
    out = np.asarray(tower.apply({"params": params}, x_v))
    z_v, _ = project(lin, x_v=x_v)
    np.testing.assert_allclose(out[:, :2], np.asarray(z_v), rtol=1e-10, atol=1e-10)
    # the canonical variates have unit variance on the training data (P^T S_vv P = I)
    np.testing.assert_allclose(out[:, :2].var(0, ddof=1), 1.0, rtol=1e-8)


def test_init_from_cca_rejects_wrong_shapes():
    tower = ResidualCCATower(hidden=(3,), out_dim=2)
    params = tower.init(jax.random.key(0), jnp.zeros((2, 4)))["params"]
    with pytest.raises(ValueError, match=r"shape \(d=4, k<=2\)"):
        init_from_cca(params, proj=np.zeros((4, 3)), mean=np.zeros(4))
    plain = Tower(hidden=(3,), out_dim=2).init(jax.random.key(0), jnp.zeros((2, 4)))["params"]
    with pytest.raises(ValueError, match="ResidualCCATower"):
        init_from_cca(plain, proj=np.zeros((4, 2)), mean=np.zeros(4))


def test_dropout_only_in_training_and_batch_norm_updates_statistics():
    tower = make_tower(hidden=(64,), out_dim=2, dropout=0.5, batch_norm=True)
    x = np.random.default_rng(0).standard_normal((32, 3)).astype(np.float32)
    variables = _init(tower, 3)
    eval_out = tower.apply(variables, x)
    np.testing.assert_array_equal(eval_out, tower.apply(variables, x))
    train_out, upd = tower.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)},
                                 mutable=["batch_stats"])
    assert not np.allclose(np.asarray(train_out), np.asarray(eval_out))
    mean = np.asarray(upd["batch_stats"]["mlp"]["bn_0"]["mean"])
    k = np.asarray(variables["params"]["mlp"]["dense_0"]["kernel"])
    b = np.asarray(variables["params"]["mlp"]["dense_0"]["bias"])
    # momentum 0.9 from a zero start: 0.1 * the batch mean of the pre-activations
    np.testing.assert_allclose(mean, 0.1 * (x @ k + b).mean(0), rtol=1e-4, atol=1e-6)


def test_bad_sizes_and_activation_raise():
    with pytest.raises(ValueError, match="activation must be one of"):
        make_tower(hidden=(3,), out_dim=2, activation="softsign")
    with pytest.raises(ValueError, match="out_dim"):
        make_tower(hidden=(3,), out_dim=0)
    with pytest.raises(ValueError, match="dropout"):
        make_tower(hidden=(3,), out_dim=2, dropout=1.0)


def test_forward_flops_hand_count():
    assert tower_forward_flops(392, (1024, 1024), 50) == 2 * (392 * 1024 + 1024 * 1024 + 1024 * 50)
    assert tower_forward_flops(4, (), 2, residual_cca=True) == 2 * 8 + 2 * 8


@pytest.mark.parametrize("residual_cca", [False, True])
def test_bfloat16_compute_keeps_float32_params_and_output(residual_cca):
    # Mixed precision: bf16 matrix products, float32 parameters and outputs, close to the float32 tower.
    x = jax.random.normal(jax.random.key(3), (64, 20), jnp.float32)
    f32 = make_tower(hidden=(32, 32), out_dim=5, activation="relu", residual_cca=residual_cca)
    bf16 = make_tower(hidden=(32, 32), out_dim=5, activation="relu", residual_cca=residual_cca,
                      compute_dtype=jnp.bfloat16)
    variables = bf16.init(jax.random.key(0), x[:2])
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
    if residual_cca:  # a non-zero residual branch, so the MLP's bf16 products take part
        variables = jax.tree_util.tree_map(lambda p: p + 0.1, variables)
    want = f32.apply(variables, x)
    got = bf16.apply(variables, x)
    assert got.dtype == jnp.float32 and want.dtype == jnp.float32
    rel = float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
    assert 1e-5 < rel < 2e-2  # bf16 rounding happened, and only that
    # gradients reach the float32 parameters in float32
    g = jax.grad(lambda v: jnp.sum(bf16.apply(v, x) ** 2))(variables)
    assert all(p.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(p))) for p in jax.tree_util.tree_leaves(g))


def test_deep_cca_bfloat16_compute_dtype_trains_close_to_float32():
    from dcca_jax import DeepCCA
    from dcca_jax.data.synthetic import correlated_views
    from dcca_jax.models.dcca import dcca_config

    x_v, x_s = correlated_views(600, 12, 10, latent=4, seed=0)
    fits = {}
    for cd in (None, "bfloat16"):
        cfg = dcca_config("paper")
        cfg.towers.update(visual_hidden=(32,), semantic_hidden=(32,), out_dim=4, activation="relu")
        cfg.update(batch_size=200, epochs=3, validation_fraction=0.0, compute_dtype=cd, blas_threads=None)
        fits[cd] = DeepCCA(cfg).fit(np.asarray(x_v, np.float32), np.asarray(x_s, np.float32))
    m = fits["bfloat16"]
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(m.params))
    h_v, h_s = m.tower_outputs(np.asarray(x_v[:50], np.float32), np.asarray(x_s[:50], np.float32))
    assert h_v.dtype == jnp.float32 and h_s.dtype == jnp.float32
    c16, c32 = float(jnp.sum(m.correlations)), float(jnp.sum(fits[None].correlations))
    assert abs(c16 - c32) < 0.05 * c32
    with pytest.raises(ValueError, match="compute_dtype"):
        DeepCCA(compute_dtype="int8").fit(np.asarray(x_v, np.float32), np.asarray(x_s, np.float32))
