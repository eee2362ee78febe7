r"""Figure 3, a gallery of test images with ground-truth and recommended tags (HTML page and PNG contact sheet).

  python experiments/examples.py --config=experiments/configs/default.py --workdir=runs/default

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
    common.run(argv, lambda: common.show(paper_tables.examples_gallery(_CONFIG.value, _WORKDIR.value, progress=True), _WORKDIR.value))


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
