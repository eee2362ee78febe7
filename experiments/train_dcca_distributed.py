r"""Data-parallel DCCA over every device of every process (one process per host).

  # one host, all its devices
  python experiments/train_dcca_distributed.py \
      --config=experiments/configs/dcca_distributed.py --x_v=v.npy --x_s=s.npy --workdir=runs/dp
  # several hosts: the same command on each, plus (or JAX_COORDINATOR_ADDRESS etc. in the environment)
  #   --coordinator_address=host0:1234 --num_processes=4 --process_id=<rank>

Each process reads only its contiguous share of the rows (``process_slice``), the towers are
initialised from a linear CCA fitted on all rows by all-reduced streaming statistics, and every step's
objective and gradients are those of the global batch; a seeded ``validation_fraction`` of each process's
rows is held out for early stopping, and the towers' outputs end with the final CCA (Eq. 8) as in ``DeepCCA``.
Process 0 writes ``metrics.jsonl``, ``history.json`` and the fitted model (``model/``) to --workdir.
"""
import json
import os
import pathlib

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from dcca_jax import distributed as dist
from experiments import cli_common

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/dcca_distributed.py", lock_config=True)
_X_V = flags.DEFINE_string("x_v", None, "Visual view, a 2-D .npy file.", required=True)
_X_S = flags.DEFINE_string("x_s", None, "Semantic view, a 2-D .npy file with the same rows.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/dcca_distributed", "Output directory (process 0 writes).")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (else $DCCA_/JAX_COORDINATOR_ADDRESS).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (else $DCCA_/JAX_NUM_PROCESSES).")
_PID = flags.DEFINE_integer("process_id", None, "This process's rank (else $DCCA_/JAX_PROCESS_ID).")
_AUTO = flags.DEFINE_bool("distributed_auto", False, "Let JAX detect the cluster (Cloud TPU VM pods; or "
                          "DCCA_DISTRIBUTED=auto). SLURM and Open MPI jobs are detected without it.")


def main(argv):
    del argv
    dist.initialize_distributed(**cli_common.distributed_args(
        os.environ, coordinator_address=_COORD.value, num_processes=_NPROC.value, process_id=_PID.value,
        auto=_AUTO.value))
    c = _CONFIG.value
    mesh = dist.make_mesh()
    x_v = np.load(_X_V.value, mmap_mode="r")
    x_s = np.load(_X_S.value, mmap_mode="r")
    n = min(x_v.shape[0], c.max_rows or x_v.shape[0])
    rows = dist.process_slice(n, multiple_of=c.batch_size // jax.process_count())
    model = dist.fit_dcca_data_parallel(
        x_v[rows], x_s[rows], c, mesh, policy=c.precision, metrics_path=pathlib.Path(_WORKDIR.value) / "metrics.jsonl"
    )
    if jax.process_index() == 0:
        (pathlib.Path(_WORKDIR.value) / "history.json").write_text(json.dumps(model.history, indent=2))
        model.save(pathlib.Path(_WORKDIR.value) / "model")


if __name__ == "__main__":
    app.run(main)
