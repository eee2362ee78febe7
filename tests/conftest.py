"""Shared fixtures: float64 on, and the path to ../shared (skipped with a reason when absent)."""
from __future__ import annotations

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


def shipped_config(name: str):
    """``experiments/configs/<name>.py``'s ``get_config()`` (the configs import each other as ``configs.x``)."""
    import importlib.util
    import sys

    experiments = ROOT / "experiments"
    sys.path.insert(0, str(experiments))
    try:
        spec = importlib.util.spec_from_file_location(f"shipped_{name}", experiments / "configs" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.get_config()
    finally:
        sys.path.remove(str(experiments))


@pytest.fixture(scope="module")
def fast_compiles():
    """XLA without most optimisations for a module of tiny runs, where compiling costs more than it saves."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)
