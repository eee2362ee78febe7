r"""Find photos by tags with a trained pipeline's tagger bundle (cross-modal search in the common space).

  python experiments/search.py --tagger=runs/default/tagger --tags="sky water" --k=20 --out=hits.tsv
  python experiments/search.py --tagger=runs/default/tagger --tags="sky water" --images=PATH/TO/PHOTOS \
      --k=20 --out=hits.tsv

Writes hits.tsv (``path<TAB>score``, best first) and hits.html. With --images the folder is indexed first (cached
in <tagger>/indexes/, resumable) and searched; without it, the tagger's training images are searched.
"""
from absl import app, flags

from experiments import cli_common as common
from dcca_jax.tagging import outputs

_TAGGER = flags.DEFINE_string("tagger", "runs/default/tagger", "Tagger bundle folder (<workdir>/tagger).")
_TAGS = flags.DEFINE_string("tags", None, "Query tags, separated by spaces.", required=True)
_IMAGES = flags.DEFINE_string("images", None, "Folder of untagged photos to index and search.")
_K = flags.DEFINE_integer("k", 20, "Number of hits.")
_OUT = flags.DEFINE_string("out", "hits.tsv", "Output TSV; the .html is written beside it.")
_INDEX_DIR = flags.DEFINE_string("index_dir", "", "Where to cache the folder's index (default <tagger>/indexes/).")
_MODEL = flags.DEFINE_string("model", "", "Exported model to use (cca, kcca, dcca); default: the bundle's best.")
_WEIGHTS = flags.DEFINE_string("weights", "", "CNN weights file, if moved since training (sha256 must match).")


def main(argv):
    def go():
        r = outputs.search_images(_TAGGER.value, _TAGS.value, _OUT.value, k=_K.value, images=_IMAGES.value,
                                  index_dir=_INDEX_DIR.value or None, model=_MODEL.value or None,
                                  weights=_WEIGHTS.value or None)
        if r["unknown"]:
            print(f"unknown tags ignored: {' '.join(r['unknown'])}")
        for path, score in r["hits"][:10]:
            print(f"{score:.3f}  {path}")
        print(f"{len(r['hits'])} hits (model {r['model']})\n{r['tsv']}\n{r['html']}")

    common.run(argv, go)


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
