r"""Feature levers of MobileNetV2 on Corel5k (experiments/studies/feature_levers.py).

  python experiments/feature_levers.py --config=experiments/configs/feature_levers.py \
      --config.finetuned_checkpoint=runs/corel5k_finetune/finetune_seed0/finetuned_backbone.npz \
      --workdir=runs/corel5k_levers

Three extraction passes of the 4,999 images (JAX port, batch 32): plain and mirrored at 224 px (every candidate
block pooled at once), the fine-tuned network at 160 px.  Drop a pass from ``passes`` to skip its lever.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data_dir = "../shared/data/corel5k"
    c.tflite_path = "../shared/models/mobilenet_v2_1.0_224_quant/mobilenet_v2_1.0_224_quant.tflite"
    c.finetuned_checkpoint = "runs/corel5k_finetune/finetune_seed0/finetuned_backbone.npz"
    # When finetuned_checkpoint does not exist yet: export the best-so-far CNN from this fine-tuning run's latest
    # checkpoint to it (an interim backbone of a run still in progress; results.json records its epoch).
    c.finetuned_run_dir = ""
    c.finetuned_input_size = 160  # what experiments/configs/finetune_corel5k.py trained at
    c.finetuned_crop_fraction = 0.875  # its evaluation view (dcca_jax.visual.augment.eval_image)
    c.crop_fraction = 1.0  # the baseline features (runs/corel5k, stages/cnn)
    c.batch_size = 32
    c.passes = ("plain", "mirror", "finetuned")
    # Pooled by every pass: the ends of the 28x28 (32-d), 14x14 (64-d, 96-d) and 7x7 (160-d, 320-d) stages and
    # the 1280-d pre-logits.
    c.blocks = ("expanded_conv_5", "expanded_conv_9", "expanded_conv_12", "expanded_conv_15", "expanded_conv_16",
                "Conv_1")
    c.block_sets = (("Conv_1",), ("expanded_conv_16", "Conv_1"), ("expanded_conv_15", "expanded_conv_16", "Conv_1"),
                    ("expanded_conv_12", "expanded_conv_15", "expanded_conv_16", "Conv_1"),
                    ("expanded_conv_5", "expanded_conv_9", "expanded_conv_12", "expanded_conv_15",
                     "expanded_conv_16", "Conv_1"))
    c.block_norms = ("none", "l2")
    c.baseline_check = ""  # a pipeline's stages/cnn folder: log the plain pass's Conv_1 difference to it
    c.split_seed = 0
    c.val_size = 500
    c.max_images = 0  # 0: all (tests use fewer)
    c.n_tags = 5
    c.select_metric = "per_word/F1"
    c.bootstrap_resamples = 1000
    d = ml_collections.ConfigDict()
    d.ridge_v = (0.1, 0.3, 1.0)  # in units of the features' mean per-dimension variance
    d.ridge_s = (0.01,)
    d.n_components = (100, 150)
    d.knn = {"k": [5, 10], "against": ["visual", "semantic"]}
    d.two_pass = {"method": ["2pknn"], "weighting": ["exp"], "k1": [1, 2, 3], "temperature": [0.05, 0.1],
                  "against": ["visual"]}
    c.downstream = d
    return c
