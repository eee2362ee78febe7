r"""Corel5k baselines (JEC, general CCA with each transfer method, CCA-KNN): JSON + Markdown to --workdir.

  python experiments/corel5k_baselines.py --config=experiments/configs/corel5k_baselines.py \
      --workdir=runs/corel5k_baselines
"""
from absl import app, flags
from ml_collections import config_flags

from experiments.studies.corel5k_baselines import run_corel5k_baselines

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/corel5k_baselines.py",
                                          "Study configuration.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/corel5k_baselines", "Where results.json and results.md go.")


def main(argv):
    del argv
    run_corel5k_baselines(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
