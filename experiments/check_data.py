r"""Checks a dataset against a pipeline config in seconds, before any expensive stage.

  python experiments/check_data.py --config=experiments/configs/image_folder.py --config.data.root=PATH

Loads and splits the data as the pipeline would, reads every image header (no pixel is decoded), resolves
every "auto" size and prints: images found / missing / unreadable, vocabulary and tags per image, the
resolved sizes, warnings and every problem (each with its --config. flag, value and limit). Exits 1 when the
pipeline would fail. Same as `pipeline.py --dry_run`.
"""
from absl import app, flags
from ml_collections import config_flags

from experiments import cli_common as common

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Pipeline config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "The pipeline's workdir (the synthetic dataset is generated there); "
                               "default a temporary folder.")


def main(argv):
    common.run(argv, lambda: common.check_main(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
