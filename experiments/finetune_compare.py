r"""Paired-bootstrap comparison of finished runs from several finetune_corel5k workdirs (levers): JSON + Markdown.

  PYTHONPATH=$PWD python experiments/finetune_compare.py --reference=main \
      --runs=main=runs/corel5k_finetune:finetune_seed0,bn_update=runs/lever_bn_update:finetune_seed0 \
      --out=results/corel5k_finetune/levers.json
"""
import json
import pathlib

from absl import app, flags

from experiments.studies.finetune_corel5k import compare_runs, comparison_markdown

_RUNS = flags.DEFINE_list("runs", [], "LABEL=WORKDIR:RUN_NAME entries.")
_REF = flags.DEFINE_string("reference", None, "Label of the reference run.", required=True)
_DATA = flags.DEFINE_string("data_dir", "../shared/data/corel5k", "Corel5k folder (test labels).")
_OUT = flags.DEFINE_string("out", "results/corel5k_finetune/levers.json", "JSON path (a .md beside it).")


def main(argv):
    del argv
    runs = {}
    for entry in _RUNS.value:
        label, rest = entry.split("=", 1)
        wd, name = rest.rsplit(":", 1)
        runs[label] = (wd, name)
    res = compare_runs(runs, reference=_REF.value, data_dir=_DATA.value)
    out = pathlib.Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(comparison_markdown(res, reference=_REF.value))


if __name__ == "__main__":
    app.run(main)
