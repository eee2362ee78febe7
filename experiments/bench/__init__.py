"""Benchmarks against peers and against n (run by ``make bench``; each writes ``<name>.json`` and ``.md`` to --workdir)."""
