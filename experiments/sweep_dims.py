r"""Figure 2: per-image AF against the common-space dimension for DMFR&CCA and DMFR&DCCA, and AP-AR curves.

  python experiments/sweep_dims.py --config=experiments/configs/default.py --workdir=runs/default \
      --dims=10,20,50,100,150
"""
from absl import app, flags
from ml_collections import config_flags

from experiments import cli_common as common
from experiments.studies import paper_tables

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Pipeline config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Directory for stages and outputs.")
_DIMS = flags.DEFINE_list("dims", ["10", "20", "50", "100", "150"], "Common-space dimensions to sweep.")
_MODELS = flags.DEFINE_list("models", ["cca", "dcca"], "Models to sweep (cca, kcca, dcca).")


def main(argv):
    common.run(argv, lambda: common.show(
        paper_tables.dimension_sweep(_CONFIG.value, _WORKDIR.value, dims=[int(d) for d in _DIMS.value],
                                models=_MODELS.value, progress=True), _WORKDIR.value))


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
