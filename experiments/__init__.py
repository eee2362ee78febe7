"""Experiment mains (``python experiments/<name>.py``), their configs, the studies and the benchmarks.

Not part of the library: ``dcca_jax`` never imports this package. It is installed beside ``dcca_jax`` (see
pyproject.toml) so that a main run as a script imports ``experiments.cli_common``, ``experiments.configs.*``
and ``experiments.studies.*`` by their package names.
"""
