"""dcca_jax.data."""
