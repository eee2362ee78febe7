r"""The semantic view of a dataset: skip-gram vectors, deep words (k-means), bag of deep words per image.

  python experiments/semantic_view.py --config=experiments/configs/semantic.py --workdir=runs/semantic
"""
from absl import app, flags, logging
from ml_collections import config_flags

from dcca_jax.data import datasets
from dcca_jax.semantic import deepwords

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/semantic.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/semantic", "Where to write the matrices and the report.")


def main(argv):
    del argv
    cfg = _CONFIG.value
    kwargs = {k: v for k, v in cfg.dataset.items() if k not in ("kind", "root")}
    data = datasets.load_dataset(cfg.dataset.kind, cfg.dataset.root, **kwargs)
    report = deepwords.export_semantic_view(data, _WORKDIR.value, config=cfg.semantic)
    logging.info("semantic view %s: dim %d, rows %s, %.1f s -> %s", report["representation"], report["dim"],
                 report["rows"], report["seconds"], _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
