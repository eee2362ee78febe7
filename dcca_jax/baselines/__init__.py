"""Baselines of the paper's Table 2: JEC (Makadia et al. 2008), general CCA and CCA-KNN (Murthy et al. 2015)."""
