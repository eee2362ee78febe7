"""DCCA objectives (Eq. 4-7): values against scipy, gradients against finite differences and Eq. 7."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.test_util import check_grads

from dcca_jax import objectives as obj


def _pair(rng, n=60, o_v=5, o_s=4, noise=0.7):
    z = rng.standard_normal((n, 3))
    h_v = z @ rng.standard_normal((3, o_v)) + noise * rng.standard_normal((n, o_v))
    h_s = np.tanh(z @ rng.standard_normal((3, o_s))) + noise * rng.standard_normal((n, o_s))
    return h_v, h_s


def _scipy_correlations(h_v, h_s, r_v, r_s):
    # Independent route: generalised symmetric eigenproblem S_vs S_ss^-1 S_sv p = rho^2 S_vv p.
    c = np.cov(h_v, h_s, rowvar=False)
    o_v = h_v.shape[1]
    s_vv = c[:o_v, :o_v] + r_v * np.eye(o_v)
    s_ss = c[o_v:, o_v:] + r_s * np.eye(h_s.shape[1])
    s_vs = c[:o_v, o_v:]
    m = s_vs @ np.linalg.solve(s_ss, s_vs.T)
    rho2 = scipy.linalg.eigh(m, s_vv, eigvals_only=True)[::-1]
    return np.sqrt(np.clip(rho2[: min(h_v.shape[1], h_s.shape[1])], 0, None))


@pytest.mark.parametrize("whitening", obj.WHITENINGS)
def test_canonical_correlations_match_scipy(whitening):
    h_v, h_s = _pair(np.random.default_rng(0))
    rho = obj.canonical_correlations(h_v, h_s, ridge_v=1e-3, ridge_s=2e-3, whitening=whitening)
    np.testing.assert_allclose(rho, _scipy_correlations(h_v, h_s, 1e-3, 2e-3), rtol=1e-9, atol=1e-10)
    assert np.all(np.diff(rho) <= 1e-12) and rho.max() <= 1 and rho.min() >= 0


def test_identical_views_give_correlation_one():
    h = np.random.default_rng(1).standard_normal((50, 4))
    np.testing.assert_allclose(obj.canonical_correlations(h, h, ridge_v=0.0, ridge_s=0.0), np.ones(4), atol=1e-10)
    assert float(obj.correlation_objective(h, h, objective="trace_norm", ridge_v=0.0, ridge_s=0.0)) == pytest.approx(4.0)


def test_objective_values_by_formula():
    h_v, h_s = _pair(np.random.default_rng(2))
    rho = _scipy_correlations(h_v, h_s, 1e-4, 1e-4)
    f = functools.partial(obj.correlation_objective, h_v, h_s, ridge_v=1e-4, ridge_s=1e-4)
    assert float(f(objective="trace_norm")) == pytest.approx(rho.sum(), rel=1e-10)
    assert float(f(objective="top_k", k=2)) == pytest.approx(rho[:2].sum(), rel=1e-10)
    assert float(f(objective="frobenius")) == pytest.approx(np.sqrt((rho**2).sum()), rel=1e-10)
    assert float(f(objective="sum_squares")) == pytest.approx((rho**2).sum(), rel=1e-10)
    assert float(f(objective="eq6")) == pytest.approx(-0.5 * ((1 - rho) ** 2).sum(), rel=1e-10)
    assert float(obj.cca_loss(h_v, h_s, objective="eq6")) == pytest.approx(0.5 * ((1 - rho) ** 2).sum(), rel=1e-9)


def test_whitenings_agree_and_float32_close_to_float64():
    h_v, h_s = _pair(np.random.default_rng(3))
    v64 = obj.correlation_objective(h_v, h_s, whitening="symmetric")
    assert float(obj.correlation_objective(h_v, h_s, whitening="cholesky")) == pytest.approx(float(v64), rel=1e-10)
    v32 = obj.correlation_objective(h_v.astype(np.float32), h_s.astype(np.float32))
    assert v32.dtype == np.float32
    assert float(v32) == pytest.approx(float(v64), rel=1e-4)


@pytest.mark.parametrize("objective", obj.OBJECTIVES)
@pytest.mark.parametrize("whitening", obj.WHITENINGS)
def test_check_grads_every_objective(objective, whitening):
    h_v, h_s = _pair(np.random.default_rng(4), n=30, o_v=4, o_s=3)
    f = functools.partial(obj.cca_loss, objective=objective, k=2, ridge_v=1e-3, ridge_s=1e-3, whitening=whitening)
    check_grads(f, (h_v, h_s), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_analytic_gradient_eq7_matches_autodiff():
    h_v, h_s = _pair(np.random.default_rng(5), n=80, o_v=6, o_s=4)
    g_auto = jax.grad(
        lambda a, b: obj.correlation_objective(a, b, objective="trace_norm", ridge_v=1e-3, ridge_s=1e-2), argnums=(0, 1)
    )(h_v, h_s)
    g_eq7 = obj.analytic_trace_norm_gradient(h_v, h_s, ridge_v=1e-3, ridge_s=1e-2)
    for a, b in zip(g_eq7, g_auto):
        rel = np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b))
        assert rel <= 1e-6, rel


def _degenerate_cases(rng):
    h_v, h_s = _pair(rng, n=40, o_v=6, o_s=5)
    dead = h_v.copy()
    dead[:, 2:4] = 0.0  # two dead units: a repeated (ridge) eigenvalue
    dup = h_s.copy()
    dup[:, 1] = dup[:, 0]  # duplicated columns
    small_v, small_s = h_v[:4], h_s[:4]  # batch of 4 < output dims 6 and 5
    const = h_v.copy()
    const[:, 0] = 3.0  # constant feature
    return {
        "dead_units": (dead, h_s),
        "duplicate_columns": (h_v, dup),
        "batch_smaller_than_dim": (small_v, small_s),
        "constant_feature": (const, h_s),
        "identical_views": (h_v, h_v),
    }


@pytest.mark.parametrize("case", ["dead_units", "duplicate_columns", "batch_smaller_than_dim", "constant_feature", "identical_views"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_finite_on_degenerate_input(case, dtype):
    h_v, h_s = _degenerate_cases(np.random.default_rng(6))[case]
    h_v, h_s = h_v.astype(dtype), h_s.astype(dtype)
    for objective in obj.OBJECTIVES:
        for whitening in obj.WHITENINGS:
            loss = functools.partial(
                obj.cca_loss, objective=objective, k=2, ridge_v=1e-3, ridge_s=1e-3, whitening=whitening
            )
            val, grads = jax.value_and_grad(loss, argnums=(0, 1))(h_v, h_s)
            assert np.isfinite(val), (case, objective, whitening)
            for g in grads:
                assert g.dtype == dtype
                assert np.all(np.isfinite(g)), (case, objective, whitening)


def test_check_grads_at_dead_units():
    # Check_grads at a degenerate point: two dead units give a repeated eigenvalue in S_vv.
    h_v, h_s = _degenerate_cases(np.random.default_rng(7))["dead_units"]
    f = functools.partial(obj.cca_loss, objective="sum_squares", ridge_v=1e-2, ridge_s=1e-2, whitening="symmetric")
    check_grads(f, (h_v, h_s), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_jit_and_shapes():
    h_v, h_s = _pair(np.random.default_rng(8))
    f = jax.jit(functools.partial(obj.cca_loss, objective="top_k", k=3))
    assert float(f(h_v, h_s)) == pytest.approx(float(obj.cca_loss(h_v, h_s, objective="top_k", k=3)), rel=1e-12)
    assert obj.correlation_matrix(h_v, h_s).shape == (5, 4)


@pytest.mark.parametrize(
    "kwargs, args, match",
    [
        ({}, (np.ones((5, 2)), np.ones((6, 2))), r"\(5, 2\) and \(6, 2\)"),
        ({}, (np.ones((1, 2)), np.ones((1, 2))), r"at least 2 samples"),
        ({}, (np.ones(5), np.ones((5, 2))), r"2-D array .* \(5,\)"),
        ({}, (np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), np.ones((3, 2))), r"h_v .* nan at row 1, column 0"),
        ({"objective": "top_k", "k": 5}, (np.ones((5, 3)), np.ones((5, 4))), r"k=5 .* min\(o_v, o_s\)=3"),
        ({"objective": "top_k"}, (np.ones((5, 3)), np.ones((5, 4))), r"needs k"),
        ({"objective": "nope"}, (np.ones((5, 3)), np.ones((5, 4))), r"objective must be one of"),
    ],
)
def test_bad_input(kwargs, args, match):
    with pytest.raises(ValueError, match=match):
        obj.cca_loss(*args, **kwargs)


def test_one_whitening_default_everywhere():
    import inspect

    from dcca_jax.models.dcca import DeepCCA

    fns = (obj.correlation_matrix, obj.canonical_correlations, obj.correlation_objective, obj.cca_loss)
    defaults = {inspect.signature(f).parameters["whitening"].default for f in fns}
    assert defaults == {obj.DEFAULT_WHITENING} == {DeepCCA.default_config().whitening} == {"cholesky"}
    # the default T is the Cholesky-whitened cross-covariance L_v^{-1} S_vs L_s^{-T} (numpy oracle)
    rng = np.random.default_rng(4)
    h_v, h_s = rng.standard_normal((40, 3)), rng.standard_normal((40, 2))
    c = np.cov(np.concatenate([h_v, h_s], axis=1).T) + 1e-4 * np.eye(5)
    l_v, l_s = np.linalg.cholesky(c[:3, :3]), np.linalg.cholesky(c[3:, 3:])
    want = np.linalg.solve(l_v, c[:3, 3:]) @ np.linalg.inv(l_s).T
    np.testing.assert_allclose(np.asarray(obj.correlation_matrix(h_v, h_s)), want, rtol=1e-5, atol=1e-6)
