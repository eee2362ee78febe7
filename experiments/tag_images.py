r"""Tag a folder of photos with a trained pipeline's tagger bundle.

  python experiments/tag_images.py --tagger=runs/default/tagger --images=PATH/TO/PHOTOS --out=tags.tsv [--n=5]

Writes tags.tsv (``relative/path<TAB>tag tag ...``, the format the loaders read: correct it and train on it),
tags.json (scores) and tags.html (a contact sheet). Resumable: work is kept in tags.tsv.shards/.
"""
from absl import app, flags

from experiments import cli_common as common
from dcca_jax.tagging import outputs

_TAGGER = flags.DEFINE_string("tagger", "runs/default/tagger", "Tagger bundle folder (<workdir>/tagger).")
_IMAGES = flags.DEFINE_string("images", None, "Folder of images to tag (searched recursively).", required=True)
_OUT = flags.DEFINE_string("out", "tags.tsv", "Output TSV; the .json and .html are written beside it.")
_N = flags.DEFINE_integer("n", 5, "Tags per image.")
_MODEL = flags.DEFINE_string("model", "", "Exported model to use (cca, kcca, dcca); default: the bundle's best.")
_WEIGHTS = flags.DEFINE_string("weights", "", "CNN weights file, if moved since training (sha256 must match).")


def main(argv):
    def go():
        r = outputs.tag_images(_TAGGER.value, _IMAGES.value, _OUT.value, n=_N.value, model=_MODEL.value or None,
                               weights=_WEIGHTS.value or None)
        print(f"{r['n_tagged']} images tagged (model {r['model']}), {len(r['failed'])} unreadable"
              + "".join(f"\n  unreadable: {f['path']}: {f['reason']}" for f in r["failed"])
              + f"\n{r['tsv']}\n{r['json']}\n{r['html']}")

    common.run(argv, go)


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
