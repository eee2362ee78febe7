r"""Semantic view (skip-gram deep words) of Corel5k.

  python experiments/semantic_view.py --config=experiments/configs/semantic.py --workdir=runs/semantic

Writes runs/semantic/semantic_{train,test}.npy ((4500, 100) and (499, 100) bags of deep words), the fitted
encoder and semantic_report.json. Expected: about 15 s on 2 (shared) CPU cores; 0 unknown test tags (the Corel5k
vocabulary is shared), 7 all-zero training rows (the 7 untagged images).
Override on the command line, e.g. --config.semantic.representation=bag_of_words.
"""
import ml_collections

from dcca_jax.semantic import deepwords


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset = ml_collections.ConfigDict()
    c.dataset.kind = "corel5k"  # corel5k | image_folder | nus_wide | features
    c.dataset.root = "../shared/data/corel5k"
    c.dataset.check_images = False  # the semantic view needs only the tags
    c.semantic = deepwords.semantic_config()
    return c
