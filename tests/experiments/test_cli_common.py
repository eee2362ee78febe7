"""The experiment mains' shared glue (experiments/cli_common.py): one-line errors instead of tracebacks."""
import os
import pathlib
import subprocess
import sys

import pytest

from experiments import cli_common

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--bogus=1"], "Unknown command line flag 'bogus'"),
        (["--config.nope=1"], "bad flag value"),
        (["--config.data.kind=corel5k", "--config.data.root=/does/not/exist"], "does not exist"),
    ],
)
def test_cli_errors_are_one_line(args, expect, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "pipeline.py"), f"--config={EXPERIMENTS / 'configs' / 'test.py'}",
         f"--workdir={tmp_path}", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode != 0
    assert expect in proc.stderr
    assert "Traceback" not in proc.stderr


def test_distributed_args_from_flags_and_environment():
    none = {"coordinator_address": None, "num_processes": None, "process_id": None}
    assert cli_common.distributed_args({}) == {**none, "auto": False}
    assert cli_common.distributed_args({"SLURM_JOB_ID": "7"})["auto"] is True
    assert cli_common.distributed_args({"DCCA_DISTRIBUTED": "auto"})["auto"] is True
    assert cli_common.distributed_args({}, auto=True)["auto"] is True
    env = {"JAX_COORDINATOR_ADDRESS": "localhost:1234", "JAX_NUM_PROCESSES": "2", "DCCA_PROCESS_ID": "1",
           "SLURM_JOB_ID": "7"}
    assert cli_common.distributed_args(env) == {"coordinator_address": "localhost:1234", "num_processes": 2,
                                                "process_id": 1, "auto": False}
    # flags win over the environment; DCCA_ over JAX_
    assert cli_common.distributed_args({**env, "DCCA_NUM_PROCESSES": "4"}, process_id=3)["num_processes"] == 4
    assert cli_common.distributed_args(env, process_id=0)["process_id"] == 0
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two'"):
        cli_common.distributed_args({"JAX_NUM_PROCESSES": "two"})



def test_mains_quiet_the_accelerator_probe_and_gensim(caplog):
    import logging as py_logging

    old = {name: py_logging.getLogger(name).level for name in cli_common.NOISY_LOGGERS}
    try:
        cli_common.quiet_noisy_loggers()
        with caplog.at_level(py_logging.INFO):
            # The line jax logs at INFO on a host without TPUs.
            py_logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu'")
            py_logging.getLogger("gensim.models.word2vec").info("collecting all words and their counts")
        assert caplog.records == []
    finally:
        for name, level in old.items():
            py_logging.getLogger(name).setLevel(level)
