r"""Your own photos: a folder of images with a tags.tsv (file name TAB space-separated tags).

  python experiments/pipeline.py --config=experiments/configs/image_folder.py \
      --config.data.root=/path/to/photos --workdir=runs/photos

Split: train_list.txt / test_list.txt beside tags.tsv when present, else a seeded 80/20 split
(--config.data.options.test_fraction=0.2). See BUILD.md for the tags.tsv format.

File names resolve relative to the tags file's folder (or its images/ subfolder when the names are there);
--config.data.options.image_root=DIR and --config.data.options.tags_file=PATH (both relative to data.root,
or absolute) override that. Forgiving by default, and every skip is logged with its file and line:
missing images, lines without a TAB, duplicate names (the first line is kept) and lines that are not UTF-8
are skipped; the run stops when more than max_missing_fraction of the images are missing (a wrong image
root). Untagged images stay in test (tags are recommended for them) but not in training. Unreadable images
are skipped and listed in results.json (visual.failed_images); --config.visual.max_pixels bounds the
declared size of the images read.
"""
from experiments.configs import default


def get_config():
    c = default.get_config()
    c.data.kind = "image_folder"
    c.data.root = ""
    c.data.options.tags_file = "tags.tsv"
    c.data.options.image_root = ""  # "": the tags file's folder, or its images/ subfolder
    c.data.options.test_fraction = 0.2
    c.data.options.seed = 0
    c.data.options.missing = "skip"
    c.data.options.max_missing_fraction = 0.5
    c.data.options.encoding_errors = "skip"  # strict | replace | skip
    c.data.options.bad_lines = "skip"  # error | skip
    c.data.options.drop_untagged_train = True
    c.visual.backbone = "auto"
    return c
