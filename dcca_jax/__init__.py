"""dcca_jax: CCA, kernel CCA and deep CCA for cross-modal image tag recommendation, in JAX."""

__version__ = "0.1.0"
