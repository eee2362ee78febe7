r"""Corel5k baselines: JEC, general CCA with each transfer method, CCA-KNN (MobileNetV2 features).

  python experiments/corel5k_baselines.py --config=experiments/configs/corel5k_baselines.py \
      --workdir=runs/corel5k_baselines

Needs ../shared/data/corel5k and the MobileNetV2 features (arrays train (4500, 1280), test (499, 1280)) at
``features_path``.  About 10 minutes on 2 CPU cores (JEC featurisation about 2 minutes, cached at ``jec_cache``).
Expected (test, 499 images): general CCA + kNN per-word F1 about .37-.38, N+ about 160-170, per-image AF about
.52-.54 (FINDINGS.md: .374 / 164 / .525 with 5-NN).
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
        "pca_dims": [0, 300], "ridge_v": [0.01, 0.1, 1.0], "ridge_s": [0.01, 0.1], "n_components": [50, 100, 150]})
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
        "pca_dims": [0, 300], "ridge_v": [0.1, 1.0], "ridge_s": [1e-2], "n_components": [50, 100],
        "transfer": {"k": [5, 10, 20], "corr_power": [0.0, 2.0, 4.0]},
    })
    return c
