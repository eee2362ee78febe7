r"""CCA vs KCCA vs DCCA fit time, transform time and held-out correlation on the same data, one table.

  python experiments/bench/pipeline_models.py --config=experiments/configs/default.py --workdir=runs/default

Shares the pipeline's stage cache in the workdir: stages already computed there are reused.
"""
from absl import app, flags
from ml_collections import config_flags

from experiments import cli_common as common
from experiments.studies import paper_tables

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Pipeline config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Directory for stages and outputs.")


def main(argv):
    common.run(argv, lambda: common.show(paper_tables.benchmark_models(_CONFIG.value, _WORKDIR.value, progress=True), _WORKDIR.value))


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
