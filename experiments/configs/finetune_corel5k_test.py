r"""A tiny, CPU-friendly version of finetune_corel5k.py (400 training images at 32 px, one epoch, two seeds).

  python experiments/finetune_corel5k.py --config=experiments/configs/finetune_corel5k_test.py \
      --workdir=/tmp/finetune_test

Runs in about a minute; the numbers mean nothing (tests/experiments/test_finetune_corel5k.py).
"""
from experiments.configs import finetune_corel5k


def get_config():
    c = finetune_corel5k.get_config()
    c.max_train = 400
    c.max_test = 60
    c.val_size = 100
    c.seeds = (0, 1)
    c.bootstrap_resamples = 50
    c.transfer_grid = [{"method": ["knn"], "k": [5], "against": ["visual", "semantic"]},
                       {"method": ["2pknn"], "weighting": ["exp"], "k1": [1], "temperature": [0.1],
                        "against": ["visual"]}]
    f = c.finetune
    f.augment.size = 32
    f.trainable_from = "expanded_conv_16"
    f.out_dim = 20
    f.visual_hidden = (16,)
    f.semantic_hidden = (16,)
    f.micro_batch = 50
    f.accumulate = 3
    f.epochs = 1
    f.eval_batch = 100
    return c
