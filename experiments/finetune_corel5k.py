r"""DCCA from pixels on Corel5k (fine-tuned MobileNetV2) against frozen DCCA and linear CCA: JSON + Markdown.

  python experiments/finetune_corel5k.py --config=experiments/configs/finetune_corel5k.py \
      --workdir=runs/corel5k_finetune

Seeds: ``--config.seeds="(0,1,2)"``.  A rerun with the same workdir resumes (checkpoints per run, finished runs kept).
"""
from absl import app, flags
from ml_collections import config_flags

from experiments.studies.finetune_corel5k import run_finetune_corel5k

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/finetune_corel5k.py",
                                          "Study configuration.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/corel5k_finetune", "Where results.json and results.md go.")


def main(argv):
    del argv
    run_finetune_corel5k(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
