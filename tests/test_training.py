"""dcca_jax.training: the non-finite guard, the metrics writer, restore-or-init checkpoints, early stopping, the split."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.conftest import absl_warnings

import dcca_jax
from dcca_jax import training
from dcca_jax.data import datasets
from experiments.studies import mnist_halves
from dcca_jax.models import dcca


# ------------------------------------------------------------------------------------------------- guard
def test_non_finite_guard_raises_one_error_type_with_advice(tmp_path):
    assert training.check_finite(np.float32(2.5), what="loss", step=1, epoch=0, advice="x") == 2.5
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(training.NonFiniteLossError,
                           match=r"non-finite DCCA loss \((nan|inf|-inf)\) at step 7 \(epoch 2\): raise the ridges"):
            training.check_finite(bad, what="DCCA loss", step=7, epoch=2, advice="raise the ridges.")
    with pytest.raises(FloatingPointError, match=f"last finite checkpoint in {tmp_path} is kept"):
        training.check_finite(math.nan, what="loss", step=1, epoch=0, advice="a.", workdir=tmp_path)
    # one exception type, importable from the top level and from the DCCA module as before
    assert dcca_jax.NonFiniteLossError is training.NonFiniteLossError is dcca.NonFiniteLossError


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_writer_writes_json_lines_and_keeps_epoch_history(tmp_path):
    path = tmp_path / "run" / training.METRICS_FILE
    w = training.MetricsWriter(path, name="test")
    w.write({"kind": "step", "step": 1, "loss": np.float32(0.5), "g": jnp.asarray(2.0, jnp.float32)})
    w.write({"kind": "epoch", "step": 1, "epoch": 0, "val": np.float64(0.25), "tags": ("a", "b")}, log=False)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [{"kind": "step", "step": 1, "loss": 0.5, "g": 2.0},
                       {"kind": "epoch", "step": 1, "epoch": 0, "val": 0.25, "tags": ["a", "b"]}]
    assert w.history == [records[1]]
    # a resumed run keeps what was logged up to its checkpoint and drops the rest (it is redone)
    for s in (2, 3):
        w.write({"kind": "epoch", "step": s, "epoch": s - 1}, log=False)
    resumed = training.MetricsWriter(path, resume_step=2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 1, 2]
    assert [r["step"] for r in resumed.history] == [1, 2]
    training.MetricsWriter(path)  # a fresh run (resume_step 0) starts an empty file
    assert path.read_text() == ""


def test_metrics_writer_without_a_path_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    w = training.MetricsWriter(None)
    w.write({"kind": "epoch", "step": 1, "x": 1.0})
    assert w.history == [{"kind": "epoch", "step": 1, "x": 1.0}]
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------------------- checkpoints
def _fp(lr=0.1, n=10):
    import ml_collections

    return training.fingerprint(ml_collections.ConfigDict({"lr": lr, "epochs": 3, "towers": {"out": 2}}),
                                resumable=("epochs",), n_train=n)


def test_fingerprint_leaves_out_resumable_fields_and_diff_names_fields():
    assert _fp() == {"config": {"lr": 0.1, "towers": {"out": 2}}, "n_train": 10}
    assert training.fingerprint_diff(_fp(), _fp(lr=0.2, n=11)) == {"config.lr": (0.1, 0.2), "n_train": (10, 11)}


def test_restore_or_init_resumes_and_refuses_another_fingerprint(tmp_path):
    tree = {"state": {"w": np.arange(3.0), "step": np.array(0, np.int32)}, "best": {"w": np.zeros(3)}}
    meta = {"best": None, "history": []}
    ckpt = training.Checkpoints(tmp_path, fingerprint=_fp(), keep=2, job="test job", resumable=("epochs",))
    got, got_meta, step = ckpt.restore_or_init(tree, meta)
    assert step is None and got is tree and got_meta is meta  # nothing to resume: the fresh state
    saved = {"state": {"w": np.array([1.0, 2.0, 3.0]), "step": np.array(4, np.int32)}, "best": {"w": np.array([5.0, 6, 7])}}
    ckpt.save(4, saved, {"best": 0.5, "history": [{"epoch": 0}]})
    ckpt.close()

    again = training.Checkpoints(tmp_path, fingerprint=_fp(), job="test job")
    got, got_meta, step = again.restore_or_init(tree, meta)
    again.close()
    assert step == 4 and got_meta == {"best": 0.5, "history": [{"epoch": 0}]}
    np.testing.assert_array_equal(got["state"]["w"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(got["best"]["w"], [5.0, 6.0, 7.0])
    assert int(got["state"]["step"]) == 4

    other = training.Checkpoints(tmp_path, fingerprint=_fp(lr=0.2), job="test job", resumable=("epochs",))
    with pytest.raises(ValueError, match=r"different test job \(different config.*config\.lr: 0\.1 in the checkpoint, "
                                         r"0\.2 now.*fresh workdir.*\('epochs',\) may change"):
        other.restore_or_init(tree, meta)
    other.close()


def test_restore_or_init_reads_a_legacy_fingerprint(tmp_path):
    import orbax.checkpoint as ocp

    tree = {"w": np.arange(2.0)}
    mngr = ocp.CheckpointManager((tmp_path / training.CHECKPOINT_DIR).resolve())
    mngr.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": np.array([3.0, 4.0])}),
                                         meta=ocp.args.JsonSave({"best": 1.0})))  # no fingerprint in the metadata
    mngr.wait_until_finished()
    mngr.close()
    kw = dict(tree_item="state", legacy_fingerprint=lambda wd: json.loads((wd / "job.json").read_text()))
    (tmp_path / "job.json").write_text(json.dumps(_fp()))
    ckpt = training.Checkpoints(tmp_path, fingerprint=_fp(), **kw)
    got, meta, step = ckpt.restore_or_init(tree, {})
    ckpt.close()
    assert step == 1 and meta == {"best": 1.0}
    np.testing.assert_array_equal(got["w"], [3.0, 4.0])
    ckpt = training.Checkpoints(tmp_path, fingerprint=_fp(n=12), **kw)
    with pytest.raises(ValueError, match=r"n_train: 10 in the checkpoint, 12 now"):
        ckpt.restore_or_init(tree, {})
    ckpt.close()


# ----------------------------------------------------------------------------------------- early stopping
def _run(stopper, values):
    seen, kept = [], None
    for i, v in enumerate(values):
        if stopper.stopped:
            break
        seen.append(v)
        if stopper.update(v, step=i):
            kept = i
    return seen, kept


def test_early_stopping_picks_the_best_epoch_of_a_hand_built_sequence():
    # max mode, patience 2: best 0.5 at index 4; 0.4 and 0.45 do not beat it, so 0.9 is never reached
    stopper = training.EarlyStopping(patience=2)
    seen, kept = _run(stopper, [0.1, 0.3, 0.2, 0.35, 0.5, 0.4, 0.45, 0.9])
    assert seen == [0.1, 0.3, 0.2, 0.35, 0.5, 0.4, 0.45] and kept == 4
    assert (stopper.best, stopper.best_step, stopper.bad_epochs, stopper.stopped) == (0.5, 4, 2, True)
    # min mode with a relative min_delta of 1%: 0.995 is not 1% below 1.0, 0.98 is; 0.975 is not 1% below 0.98
    stopper = training.EarlyStopping(patience=2, mode="min", min_delta=0.01)
    seen, kept = _run(stopper, [1.0, 0.995, 0.98, 0.975, 0.979, 0.5])
    assert kept == 2 and seen == [1.0, 0.995, 0.98, 0.975, 0.979] and stopper.best == 0.98
    # patience 0 never stops (the best step is still tracked)
    stopper = training.EarlyStopping(patience=0)
    seen, kept = _run(stopper, [3.0, 2.0, 1.0, 0.0])
    assert len(seen) == 4 and kept == 0 and not stopper.stopped
    # restored counters: a larger patience on resume lets a stopped run continue
    assert training.EarlyStopping(patience=2, best=1.0, bad_epochs=2, stopped=False).stopped
    assert not training.EarlyStopping(patience=3, best=1.0, bad_epochs=2, stopped=True).stopped
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        training.EarlyStopping(mode="up")


# --------------------------------------------------------------------------------------- validation split
def _old_split(n, n_val, seed):
    # the code the old copies ran (DeepCCA._split, datasets.train_validation_split, mnist.validation_split,
    # finetune_experiment.split_indices)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@pytest.mark.parametrize("n,n_val,seed", [(10, 3, 0), (4500, 500, 0), (97, 15, 7)])
def test_validation_split_is_seeded_disjoint_covering_and_equals_the_old_splits(n, n_val, seed):
    fit, val = training.validation_split(n, n_val=n_val, seed=seed)
    assert len(val) == n_val and len(fit) == n - n_val
    assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(n))  # disjoint and covering
    assert np.all(np.diff(fit) > 0) and np.all(np.diff(val) > 0)
    for a, b in zip((fit, val), _old_split(n, n_val, seed)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip((fit, val), training.validation_split(n, n_val=n_val, seed=seed)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(val, training.validation_split(n, n_val=n_val, seed=seed + 1)[1])
    # the modules that had their own copy now call this one
    for a, b in zip(mnist_halves.validation_split(n, n_val, seed=seed), (fit, val)):
        np.testing.assert_array_equal(a, b)


def test_dataset_split_and_deep_cca_hold_out_the_same_rows():
    labels = np.eye(10, dtype=np.uint8)
    s = datasets.Split("train", tuple("abcdefghij"), datasets.tags_from_labels(labels, "0123456789"), labels,
                       features=np.arange(10.0)[:, None])
    fit, val = datasets.train_validation_split(s, fraction=0.3, seed=5)
    want_fit, want_val = _old_split(10, 3, 5)
    np.testing.assert_array_equal(val.features[:, 0], want_val)
    np.testing.assert_array_equal(fit.features[:, 0], want_fit)
    with pytest.raises(ValueError, match="n_val=0 must be between 1 and n - 1 = 9"):
        training.validation_split(10, n_val=0, seed=0)
    with pytest.raises(ValueError, match="empty part"):
        training.validation_split(10, n_val=10, seed=0)


# ------------------------------------------------------------------------------- damaged checkpoints
def _damage(step_dir, how):
    """Truncates the largest file of the tree item (``how="truncate"``) or writes junk into the metadata JSON."""
    if how == "truncate":
        big = max((p for p in step_dir.rglob("*") if p.is_file() and "meta" not in p.parts), key=lambda p: p.stat().st_size)
        big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    else:
        (step_dir / "meta" / "metadata").write_text("{not json")


@pytest.mark.parametrize("how", ["truncate", "json"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, how):
    tree = {"w": np.zeros(64), "step": np.array(0, np.int32)}
    ckpt = training.Checkpoints(tmp_path, fingerprint=_fp(), keep=2, job="test job")
    for s in (1, 2, 3):
        ckpt.save(s, {"w": np.full(64, float(s)), "step": np.array(s, np.int32)}, {"at": s})
    ckpt.close()
    assert sorted(int(p.name) for p in (tmp_path / training.CHECKPOINT_DIR).iterdir() if p.name.isdigit()) == [2, 3]
    _damage(tmp_path / training.CHECKPOINT_DIR / "3", how)

    with absl_warnings() as seen:
        again = training.Checkpoints(tmp_path, fingerprint=_fp(), keep=2, job="test job")
        got, meta, step = again.restore_or_init(tree, {})
    assert step == 2 and meta == {"at": 2} and int(got["step"]) == 2
    np.testing.assert_array_equal(got["w"], np.full(64, 2.0))
    assert any("checkpoint at step 3" in m and "cannot be restored" in m and "previous one" in m for m in seen), seen
    assert (tmp_path / training.DAMAGED_DIR / "3").is_dir()  # set aside for inspection
    # the damaged step is out of the manager's folder, so training can save step 3 again and it becomes the latest
    again.save(3, {"w": np.full(64, 3.0), "step": np.array(3, np.int32)}, {"at": 3})
    again.close()
    ckpt = training.Checkpoints(tmp_path, fingerprint=_fp(), keep=2, job="test job")
    got, meta, step = ckpt.restore_or_init(tree, {})
    assert step == 3 and meta == {"at": 3}
    # every kept checkpoint damaged: a fresh start, with a warning
    for s in (2, 3):
        _damage(tmp_path / training.CHECKPOINT_DIR / str(s), how)
    with absl_warnings() as seen:
        got, meta, step = ckpt.restore_or_init(tree, {"fresh": True})
    ckpt.close()
    assert step is None and meta == {"fresh": True} and got is tree
    assert any("none of the checkpoints [3, 2]" in m and "starts afresh" in m for m in seen), seen


def test_auto_encoder_resumes_exactly_from_the_previous_checkpoint_when_the_latest_is_truncated(tmp_path):
    from tests.visual.test_autoencoder import _manifold, _small_config
    from dcca_jax.visual import autoencoder as ae

    x = _manifold(300, 3, d=8)
    cfg6 = _small_config(max_epochs=6, checkpoint_every=2, patience=100, hidden_sizes=(16,))
    full = ae.fit_autoencoder(x, config=cfg6)
    cfg4 = _small_config(max_epochs=4, checkpoint_every=2, patience=100, hidden_sizes=(16,))
    ae.fit_autoencoder(x, config=cfg4, workdir=str(tmp_path / "run"))  # checkpoints at epochs 2 and 4
    _damage(tmp_path / "run" / training.CHECKPOINT_DIR / "4", "truncate")
    with absl_warnings() as seen:
        resumed = ae.fit_autoencoder(x, config=cfg6, workdir=str(tmp_path / "run"))
    assert any("checkpoint at step 4" in m for m in seen), seen
    assert [h["epoch"] for h in resumed.history] == list(range(1, 7))  # epochs 3 and 4 redone from step 2
    for a, b in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)


