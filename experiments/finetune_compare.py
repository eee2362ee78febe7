r"""Paired-bootstrap comparison of finished runs from several finetune_corel5k workdirs (levers): JSON + Markdown.

  python experiments/finetune_compare.py --reference=main \
      --runs=main=runs/corel5k_finetune:finetune_seed0,bn_update=runs/lever_bn_update:finetune_seed0 \
      --workdir=results/corel5k_finetune --name=levers
"""
import json
import pathlib

from absl import app, flags

from experiments.studies.finetune_corel5k import compare_runs, comparison_markdown

_RUNS = flags.DEFINE_list("runs", [], "LABEL=WORKDIR:RUN_NAME entries.")
_REF = flags.DEFINE_string("reference", None, "Label of the reference run.", required=True)
_DATA = flags.DEFINE_string("data_dir", "../shared/data/corel5k", "Corel5k folder (test labels).")
_WORKDIR = flags.DEFINE_string("workdir", "results/corel5k_finetune", "Output folder: <name>.json and <name>.md go there.")
_NAME = flags.DEFINE_string("name", "levers", "Name of this comparison (the file names).")


def main(argv):
    del argv
    runs = {}
    for entry in _RUNS.value:
        label, rest = entry.split("=", 1)
        wd, name = rest.rsplit(":", 1)
        runs[label] = (wd, name)
    res = compare_runs(runs, reference=_REF.value, data_dir=_DATA.value)
    out = pathlib.Path(_WORKDIR.value) / f"{_NAME.value}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(comparison_markdown(res, reference=_REF.value))


if __name__ == "__main__":
    app.run(main)
