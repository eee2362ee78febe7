r"""Data-parallel DCCA on one host or many (experiments/train_dcca_distributed.py).

  python experiments/train_dcca_distributed.py \
      --config=experiments/configs/dcca_distributed.py --x_v=views_v.npy --x_s=views_s.npy --workdir=runs/dp

Views are two 2-D ``.npy`` files (memory-mapped; each process reads only its rows). ``batch_size`` is the
global batch: it must be divisible by the number of devices of all processes together. Towers as in
FINDINGS.md's best DCCA: residual over linear CCA, so training starts at linear CCA's correlations.
"""
from dcca_jax.models.dcca import dcca_config


def get_config():
    c = dcca_config("paper")
    c.towers.update(visual_hidden=(1024, 1024), semantic_hidden=(1024, 1024), out_dim=50, residual_cca=True)
    c.batch_size = 1024
    c.epochs = 10
    c.learning_rate = 1e-3
    c.precision = "float32"  # "bfloat16" on GPUs/TPUs: bf16 towers, float32 covariances and objective
    c.max_rows = 0  # 0 = all rows of the files
    return c
