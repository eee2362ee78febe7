r"""Your own photos: a folder of images with a tags.tsv (file name TAB space-separated tags).

  python experiments/pipeline.py --config=experiments/configs/image_folder.py \
      --config.data.root=/path/to/photos --workdir=runs/photos

Split: train_list.txt / test_list.txt in the folder when present, else a seeded 80/20 split
(--config.data.options.test_fraction=0.2). See BUILD.md for the tags.tsv format.
"""
from experiments.configs import default


def get_config():
    c = default.get_config()
    c.data.kind = "image_folder"
    c.data.root = ""
    c.data.options.test_fraction = 0.2
    c.data.options.seed = 0
    c.data.options.missing = "skip"
    c.visual.backbone = "auto"
    return c
