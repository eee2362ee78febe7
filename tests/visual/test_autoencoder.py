"""Auto-encoder: beats PCA on a nonlinear manifold, metrics, resume determinism, save/load, failure modes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcca_jax.visual import autoencoder as ae


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    # These tests compile several small training loops; XLA's full optimisation costs more than it saves.
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


def _manifold(n, seed, d=24):
    """A 2-d square embedded nonlinearly in d dims: x = sin(t W + b) + small noise."""
    r = np.random.default_rng(seed)
    t = r.uniform(-1, 1, (n, 2))
    w = np.random.default_rng(42).standard_normal((2, d)) * 2.0
    b = np.random.default_rng(43).uniform(0, 2 * np.pi, d)
    return np.sin(t @ w + b) + 0.01 * r.standard_normal((n, d))


def _svd_pca(x_train, x_eval, k):
    """Independent oracle: PCA reconstruction from numpy's SVD of the centred training rows."""
    mu = x_train.mean(0)
    _, _, vt = np.linalg.svd(x_train - mu, full_matrices=False)
    return mu + (x_eval - mu) @ vt[:k].T @ vt[:k]


def _small_config(**kw):
    c = ae.autoencoder_config()
    c.hidden_sizes = (64,)
    c.code_dim = 2
    c.activation = "tanh"
    c.batch_size = 64
    c.learning_rate = 3e-3
    c.max_epochs = 60
    c.patience = 20
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_beats_pca_on_nonlinear_manifold():
    x_train, x_test = _manifold(2000, 1), _manifold(500, 2)
    model = ae.fit_autoencoder(x_train, config=_small_config())
    got = ae.reconstruction_metrics(x_test, model.reconstruct(x_test), mean=x_train.mean(0))
    # numpy-SVD oracle: the best linear 2-d code
    pca = ae.reconstruction_metrics(x_test, _svd_pca(x_train, x_test, 2), mean=x_train.mean(0))
    assert pca["variance_retained"] < 0.75  # the data really is nonlinear
    assert got["mse"] < 0.25 * pca["mse"], (got, pca)
    assert got["variance_retained"] > 0.95
    assert model.encode(x_test).shape == (500, 2)


def test_pca_oracle_and_metrics_by_hand():
    x = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    np.testing.assert_allclose(ae.pca_reconstruction(x, x, n_components=1), x, atol=1e-12)  # rank-1 data
    y, z = _manifold(50, 9, d=6), _manifold(7, 10, d=6)
    np.testing.assert_allclose(ae.pca_reconstruction(y, z, n_components=3), _svd_pca(y, z, 3), atol=1e-10)
    m = ae.reconstruction_metrics(np.array([[1.0, 0.0], [3.0, 2.0]]), np.array([[1.0, 1.0], [2.0, 2.0]]),
                                  mean=np.array([2.0, 1.0]))
    # SSE = 0 + 1 + 1 + 0 = 2; SST = 1 + 1 + 1 + 1 = 4
    assert m["sse"] == 2.0 and m["sst"] == 4.0 and m["mse"] == 0.5 and m["variance_retained"] == 0.5
    with pytest.raises(ValueError, match="shapes do not match"):
        ae.reconstruction_metrics(np.zeros((2, 2)), np.zeros((2, 3)), mean=np.zeros(2))


def test_param_count_and_jit():
    model = ae.AutoEncoder(input_dim=1280, hidden_sizes=(1024,), code_dim=300)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1280)))
    n = sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
    assert n == (1280 * 1024 + 1024) + (1024 * 300 + 300) + (300 * 1024 + 1024) + (1024 * 1280 + 1280)
    with pytest.raises(ValueError, match="unknown activation"):
        ae.AutoEncoder(input_dim=3, activation="swish2").init(jax.random.key(0), jnp.zeros((1, 3)))


def test_checkpoint_resume_is_exact_and_save_load(tmp_path):
    x = _manifold(300, 3, d=8)
    cfg6 = _small_config(max_epochs=6, checkpoint_every=2, patience=100, hidden_sizes=(16,))
    full = ae.fit_autoencoder(x, config=cfg6)
    cfg4 = _small_config(max_epochs=4, checkpoint_every=2, patience=100, hidden_sizes=(16,))
    ae.fit_autoencoder(x, config=cfg4, workdir=str(tmp_path / "run"))  # "interrupted" after epoch 4
    resumed = ae.fit_autoencoder(x, config=cfg6, workdir=str(tmp_path / "run"))
    assert [h["epoch"] for h in resumed.history] == list(range(1, 7))
    for a, b in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6

    resumed.save(tmp_path / "model")
    back = ae.TrainedAutoEncoder.load(tmp_path / "model")
    np.testing.assert_array_equal(np.asarray(back.encode(x)), np.asarray(resumed.encode(x)))
    assert back.best_epoch == resumed.best_epoch and back.config.hidden_sizes == (16,)


def test_early_stopping_keeps_best_epoch():
    x = _manifold(300, 4, d=8)
    model = ae.fit_autoencoder(x, config=_small_config(max_epochs=400, patience=3, hidden_sizes=(16,)))
    vals = [h["val_loss"] for h in model.history]
    assert len(vals) < 400  # it stopped early
    assert model.best_epoch == int(np.argmin(vals)) + 1
    assert len(vals) - model.best_epoch >= 3


def test_bad_inputs_raise():
    x = _manifold(100, 5, d=8)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        ae.fit_autoencoder(bad, config=_small_config())
    with pytest.raises(FloatingPointError, match="learning_rate"):
        ae.fit_autoencoder(x, config=_small_config(learning_rate=1e30, max_epochs=3, hidden_sizes=(16,)))


def test_pca_residual_starts_at_pca_and_never_ends_worse_on_validation():
    x_train, x_val = _manifold(1000, 6), _manifold(300, 7)
    cfg = _small_config(architecture="pca_residual", max_epochs=0)
    start = ae.fit_autoencoder(x_train, config=cfg, x_val=x_val)
    pca_val = _svd_pca(x_train, x_val, 2)
    np.testing.assert_allclose(np.asarray(start.reconstruct(x_val)), pca_val, atol=2e-5)
    trained = ae.fit_autoencoder(x_train, config=_small_config(architecture="pca_residual"), x_val=x_val)
    got = ae.reconstruction_metrics(x_val, np.asarray(trained.reconstruct(x_val)), mean=x_train.mean(0))
    pca = ae.reconstruction_metrics(x_val, pca_val, mean=x_train.mean(0))
    assert got["mse"] < 0.5 * pca["mse"], (got, pca)


def test_workdir_of_another_job_is_refused(tmp_path):
    x = _manifold(120, 8, d=8)
    cfg = _small_config(max_epochs=1, hidden_sizes=(16,))
    ae.fit_autoencoder(x, config=cfg, workdir=str(tmp_path))
    with pytest.raises(ValueError, match="different auto-encoder job"):
        ae.fit_autoencoder(x, config=_small_config(max_epochs=1, hidden_sizes=(16,), code_dim=3),
                           workdir=str(tmp_path))
    longer = ae.fit_autoencoder(x, config=_small_config(max_epochs=2, hidden_sizes=(16,)), workdir=str(tmp_path))
    assert [h["epoch"] for h in longer.history] == [1, 2]


def test_deterministic_for_a_seed():
    x = _manifold(300, 4, d=8)
    fits = [ae.fit_autoencoder(x, config=_small_config(max_epochs=3, hidden_sizes=(16,), seed=s)) for s in (0, 0, 1)]
    leaves = [jax.tree_util.tree_leaves(f.params) for f in fits]
    assert all(np.array_equal(a, b) for a, b in zip(leaves[0], leaves[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(leaves[0], leaves[2]))


def _to_legacy_workdir(workdir, config, n_train, n_val, d):
    """Rewrites a workdir into the layout written before dcca_jax.training: the fingerprint in job.json (the whole
    config), checkpoint metadata without one."""
    import json
    import shutil

    import orbax.checkpoint as ocp

    ckpts = (workdir / "checkpoints").resolve()
    mngr = ocp.CheckpointManager(ckpts)
    step = mngr.latest_step()
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                          meta=ocp.args.JsonRestore()))
    mngr.close()
    meta = {k: v for k, v in restored["meta"].items() if k != "fingerprint"}
    shutil.rmtree(ckpts)
    mngr = ocp.CheckpointManager(ckpts, options=ocp.CheckpointManagerOptions(max_to_keep=2))
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(restored["state"]),
                                            meta=ocp.args.JsonSave(meta)))
    mngr.wait_until_finished()
    mngr.close()
    job = {"config": json.loads(config.to_json()), "n_train": n_train, "n_val": n_val, "d": d}
    (workdir / "job.json").write_text(json.dumps(job))


def test_a_workdir_of_the_old_layout_resumes_exactly(tmp_path):
    x = _manifold(300, 3, d=8)
    cfg6 = _small_config(max_epochs=6, checkpoint_every=2, patience=100, hidden_sizes=(16,))
    full = ae.fit_autoencoder(x, config=cfg6)
    cfg4 = _small_config(max_epochs=4, checkpoint_every=2, patience=100, hidden_sizes=(16,))
    ae.fit_autoencoder(x, config=cfg4, workdir=str(tmp_path / "run"))
    _to_legacy_workdir(tmp_path / "run", cfg4, 270, 30, 8)
    resumed = ae.fit_autoencoder(x, config=cfg6, workdir=str(tmp_path / "run"))
    assert [h["epoch"] for h in resumed.history] == list(range(1, 7))
    for a, b in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)
    # the legacy fingerprint is still checked
    other = _small_config(max_epochs=4, checkpoint_every=2, patience=100, hidden_sizes=(16,))
    ae.fit_autoencoder(x, config=other, workdir=str(tmp_path / "old"))
    _to_legacy_workdir(tmp_path / "old", other, 270, 30, 8)
    with pytest.raises(ValueError, match=r"different auto-encoder job.*config\.code_dim: 2 in the checkpoint, 3 now"):
        ae.fit_autoencoder(x, config=_small_config(max_epochs=6, hidden_sizes=(16,), code_dim=3),
                           workdir=str(tmp_path / "old"))


def test_principal_axes_of_few_rows_match_the_svd():
    # 12 rows of 40 columns take the n x n Gram path; the axes are the SVD's right singular vectors up to sign.
    x = np.random.default_rng(3).normal(size=(12, 40)) * np.linspace(3, 0.1, 40)
    x -= x.mean(0)
    axes = ae.principal_axes(x, n_components=5)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    assert axes.shape == (5, 40)
    np.testing.assert_allclose(np.abs(np.sum(axes * vt[:5], axis=1)), 1.0, atol=1e-10)
    np.testing.assert_allclose(axes @ axes.T, np.eye(5), atol=1e-10)
    # A kept axis without variance (rank 11 after centring) falls back to the d x d scatter.
    full = ae.principal_axes(x, n_components=12)
    np.testing.assert_allclose(full[:11] @ full[:11].T, np.eye(11), atol=1e-8)
