r"""Images -> CNN features -> auto-encoder codes (the paper's visual view, section 2).

  python experiments/extract_features.py --config=experiments/configs/extract_corel5k.py --workdir=runs/visual

See the config's docstring for the outputs; --progress=false silences the progress bar.
"""
from absl import app, flags
from ml_collections import config_flags

from experiments.studies import extract_features

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/extract_corel5k.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/visual", "Output directory (reruns resume).")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar on stderr.")


def main(argv):
    del argv
    extract_features.build_visual_view(_CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value)


if __name__ == "__main__":
    app.run(main)
