"""Shared fixtures: float64 on, the path to ../shared (skipped with a reason when absent), one pipeline run."""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib

import jax
import pytest

jax.config.update("jax_enable_x64", True)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("DCCA_SHARED", ROOT.parent / "shared"))


def shared_path(*parts: str) -> pathlib.Path:
    """Path inside ../shared, or pytest.skip with the reason when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not found at {p} (set DCCA_SHARED or place ../shared beside the repo)")
    return p


@pytest.fixture
def shared_dir() -> pathlib.Path:
    return shared_path()


def outputs_of_fresh_processes(code: str, tmp_path: pathlib.Path, *, salts=("1", "12345"), suffix: str = ".npz"):
    """Runs ``python -c code OUT`` (the repository on ``PYTHONPATH``) once per hash salt (``PYTHONHASHSEED``),
    each in a fresh process, and returns the paths OUT the runs wrote: what a test of process-independent
    results compares."""
    import subprocess
    import sys

    outs = []
    for salt in salts:
        env = dict(os.environ, PYTHONHASHSEED=salt, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
        out = tmp_path / f"out{salt}{suffix}"
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, timeout=120)
        outs.append(out)
    return outs


METHODS = {"JEC", "General CCA", "CCA-KNN", "DMFR&CCA", "DMFR&KCCA", "DMFR&DCCA"}


def tiny_pipeline_config():
    """A fresh copy of the tiny pipeline config, ``experiments/configs/test.py``."""
    from experiments.configs import test

    return test.get_config()


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """``(workdir, results)`` of one pipeline run on the test config, shared by the pipeline and study tests."""
    from dcca_jax import pipeline

    workdir = tmp_path_factory.mktemp("pipeline")
    return workdir, pipeline.run_pipeline(tiny_pipeline_config(), workdir)


def shipped_config(name: str):
    """A fresh ``experiments/configs/<name>.py`` ``get_config()``."""
    import importlib

    return importlib.import_module(f"experiments.configs.{name}").get_config()


@pytest.fixture(scope="module")
def fast_compiles():
    """XLA without most optimisations for a module of tiny runs, where compiling costs more than it saves."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@contextlib.contextmanager
def absl_warnings():
    """Collects the messages of the absl warnings (and errors) logged inside the block into the yielded list."""
    seen = []

    class _Keep(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                seen.append(record.getMessage())

    handler, logger = _Keep(), logging.getLogger("absl")
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
