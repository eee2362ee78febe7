"""dcca_jax.semantic."""
