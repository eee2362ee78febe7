"""dcca_jax.visual."""
