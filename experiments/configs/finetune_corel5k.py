r"""DCCA from pixels on Corel5k: fine-tuned MobileNetV2 vs frozen-feature DCCA vs linear CCA, three seeds.

  PYTHONPATH=$PWD python experiments/finetune_corel5k.py --config=experiments/configs/finetune_corel5k.py \
      --workdir=runs/corel5k_finetune

Needs ../shared/data/corel5k (images and annotations) and the MobileNetV2 TFLite file at ``weights``.
Results, timings and the measured numbers: results/corel5k_finetune/results.md.
"""
import ml_collections

from dcca_jax.finetune import finetune_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data_dir = "../shared/data/corel5k"
    c.weights = "../shared/models/mobilenet_v2_1.0_224_quant/mobilenet_v2_1.0_224_quant.tflite"
    c.methods = ("linear_cca", "frozen_dcca", "finetune")
    c.seeds = (0, 1, 2)
    c.split_seed = 0  # the baselines' 4000/500 split
    c.val_size = 500
    c.max_train = 0  # 0: all (tests use fewer)
    c.max_test = 0
    c.n_tags = 5
    c.num_workers = 1
    c.bootstrap_resamples = 1000
    c.transfer_grid = [
        {"method": ["knn"], "k": [5, 10, 20], "against": ["visual", "semantic"]},
        {"method": ["2pknn"], "weighting": ["exp"], "k1": [1, 2, 3], "temperature": [0.05, 0.1, 0.2],
         "against": ["visual", "semantic"]},
    ]
    f = finetune_config()
    f.augment.size = 160
    f.trainable_from = "expanded_conv_13"
    f.batch_norm = "folded"
    f.out_dim = 100
    f.visual_hidden = (1024,)
    f.semantic_hidden = (1024,)
    f.cnn_lr = 1e-4
    f.head_lr = 1e-4
    f.semantic_lr = 1e-4
    f.micro_batch = 50
    f.accumulate = 10
    f.epochs = 8
    f.patience = 3
    c.finetune = f
    return c
