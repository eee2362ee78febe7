"""dcca_jax.tagging."""
