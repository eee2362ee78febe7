"""Config files for ``--config=experiments/configs/<name>.py``; each defines ``get_config()`` (ml_collections)."""
