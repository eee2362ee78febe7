r"""NUS-WIDE in its official release layout (ImageList/, NUS_WID_Tags/, Groundtruth/, Flickr/ images).

  python experiments/pipeline.py --config=experiments/configs/nus_wide.py \
      --config.data.root=/path/to/NUS-WIDE --workdir=runs/nus_wide

Tags: the 1,000-tag list of the release; 269,648 images (MobileNetV2 extraction takes hours on a CPU:
run it on a GPU, see BUILD.md). KCCA uses the Nystrom solver; DCCA trains in minibatches.
"""
from experiments.configs import corel5k


def get_config():
    c = corel5k.get_config()
    c.data.kind = "nus_wide"
    c.data.root = ""
    c.data.options.missing = "skip"
    c.data.validation_fraction = 0.05
    c.sizes.landmarks = 4000  # targets of the "auto" sizes
    c.sizes.dcca_batch = 2000
    c.dcca.epochs = 30
    c.baselines = ("general_cca", "cca_knn")  # JEC's all-pairs distances over 160k images are impractical
    return c
