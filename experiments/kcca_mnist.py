r"""Kernel CCA on MNIST left/right halves: train/validation/test total correlation and fit time.

  .venv/bin/python experiments/kcca_mnist.py \
      --config=experiments/configs/kcca_mnist.py --data=../shared/data/mnist/mnist.npz --workdir=runs/kcca_mnist
"""
import json
import pathlib

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments.studies.mnist_halves import fit_kcca_mnist

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/kcca_mnist.py", lock_config=True)
_DATA = flags.DEFINE_string("data", "../shared/data/mnist/mnist.npz", "mnist.npz path.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/kcca_mnist", "Output directory (result.json, model/).")


def main(argv):
    del argv
    cfg = _CONFIG.value
    if cfg.float64:
        jax.config.update("jax_enable_x64", True)
    out = pathlib.Path(_WORKDIR.value)
    out.mkdir(parents=True, exist_ok=True)
    result = fit_kcca_mnist(_DATA.value, config=cfg.model, n_val=cfg.n_val, refit_full=cfg.refit_full,
                            split_seed=cfg.split_seed, dtype=np.float64 if cfg.float64 else np.float32,
                            save_dir=out / "model")
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"KCCA MNIST halves: validation total {result['val_total']:.2f}, train total {result['train_total']:.2f}, "
          f"test total {result['test_total']:.2f} (50 dims); fit {result['final_fit_seconds']:.0f} s on "
          f"{result['n_final']} images; written to {out / 'result.json'}")


if __name__ == "__main__":
    app.run(main)
