r"""The side-by-side table on Corel5k (docs/results.md): every method on one pipeline run's CNN features.

  python experiments/corel5k_baselines.py --config=experiments/configs/corel5k_side_by_side.py \
      --config.pipeline_dir=runs/corel5k --config.features_path=runs/corel5k/stages/cnn \
      --config.finetune_preds=<finetune workdir>/test_preds.npz --workdir=runs/corel5k_side_by_side

The features are the run's CNN stage (train.npy, test.npy in list-file order); the DMFR&CCA/KCCA/DCCA and JEC rows
are the run's own test scores (``pipeline:*``), "tagprop@dcca" is TagProp in the run's DCCA common space, and
"dcca_pixels" the fine-tuning study's run ("not run" without ``finetune_preds``).  Everything else is chosen on
the 4000/500 validation split and evaluated once on test.  The CCA grids are narrower than corel5k_baselines.py's
(no PCA, ridge_v 0.1, the values that study chose on validation; 2PKNN against the visual projections, CCA-KNN one
word2vec seed) so that the whole table runs in about 20 minutes on 2 shared cores.
"""
import ml_collections

from experiments.configs import corel5k_baselines


def get_config() -> ml_collections.ConfigDict:
    c = corel5k_baselines.get_config()
    c.features_path = "runs/corel5k/stages/cnn"
    c.features_ready = ""
    c.methods = ["raw_knn", "pipeline:jec", "general_cca", "general_cca+2pknn", "cca_knn", "tagprop",
                 "pipeline:cca", "pipeline:kcca", "pipeline:dcca", "dcca_pixels", "tagprop@dcca"]
    c.general_cca.pca_dims = [0]
    c.general_cca.ridge_v = [0.1]
    c.general_cca.n_components = [100, 150]
    c.transfer_grids.two_pass.against = ["visual"]
    c.cca_knn.seeds = [0]
    c.cca_knn.pca_dims = [0]
    c.cca_knn.n_components = [100]
    return c
