r"""Corel5k feature levers (multi-scale blocks, flip averaging, fine-tuned backbone): JSON + Markdown + features.

  python experiments/feature_levers.py --config=experiments/configs/feature_levers.py --workdir=runs/corel5k_levers
"""
from absl import app, flags
from ml_collections import config_flags

from experiments.studies.feature_levers import run_feature_levers

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/feature_levers.py",
                                          "Study configuration.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/corel5k_levers", "Where results, passes and features go.")


def main(argv):
    del argv
    run_feature_levers(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
