r"""Corel5k baselines: JEC, general CCA with each transfer method, CCA-KNN (MobileNetV2 features).

  python experiments/corel5k_baselines.py --config=experiments/configs/corel5k_baselines.py \
      --workdir=runs/corel5k_baselines

Needs ../shared/data/corel5k and the MobileNetV2 features (arrays train (4500, 1280), test (499, 1280), optional
train_ids / test_ids checked against the list files) at ``features_path``.  About 25 minutes on a 2-core machine
shared with other jobs (JEC featurisation about 2 minutes more the first time, cached at ``jec_cache``).
Measured (results/corel5k_baselines/results.md, features sha256 fb4595b1...): general CCA + kNN per-word
.311/.417/.356/154, per-image .420/.594/.492; JEC .254/.304/.277/134, .369/.513/.429; 2PKNN in the CCA space
.344/.417/.377/149, .460/.650/.539.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data_dir = "../shared/data/corel5k"
    c.features_path = "/work/cache/corel5k_mnv2.npz"
    c.features_ready = "/work/cache/corel5k_mnv2.READY"  # "" when the features file is complete already
    c.wait_features_s = 3600.0
    c.jec_cache = "/work/cache/recommend/corel5k_jec.npz"
    c.methods = ["most_frequent", "raw_knn", "jec", "general_cca", "general_cca+freq", "general_cca+2pknn",
                 "general_cca+2pknn_freq", "general_cca+corr_power", "general_cca+tag_ranking", "cca_knn"]
    c.reference = "general_cca"  # bootstrap intervals are differences to this method
    c.seed = 0
    c.val_size = 500
    c.max_train = 0  # 0 = all; tests use a few hundred
    c.n_tags = 5
    c.select_metric = "per_word/F1"
    c.bootstrap_resamples = 1000

    c.jec = ml_collections.ConfigDict({"k": [3, 5, 10]})
    c.raw_knn = ml_collections.ConfigDict({"k": [5, 10, 20]})
    c.general_cca = ml_collections.ConfigDict({
        "pca_dims": [0, 300], "ridge_v": [0.1, 1.0], "ridge_s": [1e-3, 1e-2, 0.1], "n_components": [50, 100, 150]})
    c.transfer_grids = ml_collections.ConfigDict({
        "knn": {"k": [5, 10, 20], "against": ["visual", "semantic"]},
        "freq": {"k": [10, 20, 40], "freq_power": [0.25, 0.5, 0.75], "against": ["visual", "semantic"]},
        "two_pass": {"method": ["2pknn"], "weighting": ["exp"], "k1": [1, 2, 3], "temperature": [0.05, 0.1, 0.2],
                     "against": ["visual", "semantic"]},
        "two_pass_freq": {"method": ["2pknn"], "weighting": ["exp"], "k1": [1, 2], "temperature": [0.05, 0.1],
                          "freq_power": [0.1, 0.25, 0.5], "against": ["visual", "semantic"]},
        "corr_power": {"k": [5, 10, 20], "corr_power": [1.0, 2.0, 4.0], "against": ["visual", "semantic"]},
        "tag_ranking": {"method": ["tag_ranking"]},
    })
    c.cca_knn = ml_collections.ConfigDict({
        "seeds": [0, 1, 2], "w2v_dim": 100, "w2v_window": 5, "w2v_epochs": 50,
        "pca_dims": [0, 300], "ridge_v": [0.1], "ridge_s": [1e-3, 1e-2], "n_components": [50, 100],
        "transfer": {"k": [5, 10, 20], "corr_power": [0.0, 2.0, 4.0]},
    })
    # TagProp (dcca_jax.tagging.tagprop): the grid searched on validation, and the fixed training settings.
    c.tagprop = ml_collections.ConfigDict({"k": [50, 100, 200], "weighting": ["rank", "distance"],
                                           "sigma_ml": [False, True], "l2": [0.0]})
    c.tagprop_base = ml_collections.ConfigDict({"epochs": 30, "batch_size": 500, "learning_rate": 0.05,
                                                "feature_groups": 1, "normalize": True})
    # Rows from a finished pipeline run (read only): "pipeline:<cca|kcca|dcca|jec|...>", "tagprop@<model>".
    c.pipeline_dir = "runs/corel5k"
    # "dcca_pixels": the fine-tuning study's test_preds.npz ("" or a missing file: the row says "not run").
    c.finetune_preds = ""
    c.finetune_run = ""  # key in test_preds.npz; "" = the first key starting with "finetune"
    c.plot_top = 3  # methods in the per-word F1 against frequency plot (best test per-word F1)
    return c

