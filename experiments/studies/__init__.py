"""Studies: the paper's tables and figures, the Corel5k label-transfer and fine-tuning studies, MNIST halves."""
