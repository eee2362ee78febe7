r"""The whole pipeline: images + tags -> DMFR views -> CCA/KCCA/DCCA -> recommendations -> metrics.

  python experiments/pipeline.py --config=experiments/configs/default.py --workdir=runs/default
  python experiments/pipeline.py --config=experiments/configs/corel5k.py \
      --config.data.root=../shared/data/corel5k --workdir=runs/corel5k

Every stage caches its output in the workdir; a rerun skips finished stages and resumes an
interrupted one; `--config.x=y` overrides any field. `--dry_run` checks the data and the sizes in seconds
and exits (as experiments/check_data.py).
"""
from absl import app, flags
from ml_collections import config_flags

from experiments import cli_common as common

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Pipeline config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Directory for stages, results, tables and figures.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Only check the data and the sizes (experiments/check_data.py); "
                             "exit 1 when the pipeline would fail.")


def main(argv):
    if _DRY_RUN.value:
        common.run(argv, lambda: common.check_main(_CONFIG.value, _WORKDIR.value))
    else:
        common.run(argv, lambda: common.pipeline_main(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
