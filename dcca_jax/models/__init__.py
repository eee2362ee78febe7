"""dcca_jax.models."""
