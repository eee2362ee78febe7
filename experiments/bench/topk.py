r"""Chunked cosine top-k (dcca_jax.tagging.recommend.chunked_topk): wall time and XLA's compiled memory use.

  python experiments/bench/topk.py --n_queries=100000 --n_items=200000 --dim=64 --k=10 \
      --workdir=results/bench   # -> topk_<n_queries/1000>k_<n_items/1000>k.json

Writes JSON (and Markdown next to it) with the compiled temporary / argument / output sizes from
``jax.jit(...).lower(...).compile().memory_analysis()``, the dense similarity matrix size it avoids, and the
best wall time of ``--repeats`` runs after one warm-up (compile) run.
"""
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from dcca_jax.tagging import recommend

_NQ = flags.DEFINE_integer("n_queries", 100_000, "Queries.")
_NI = flags.DEFINE_integer("n_items", 200_000, "Items.")
_DIM = flags.DEFINE_integer("dim", 64, "Dimension of the common space.")
_K = flags.DEFINE_integer("k", 10, "Neighbours.")
_QC = flags.DEFINE_integer("query_chunk", 1024, "Queries per chunk.")
_IC = flags.DEFINE_integer("item_chunk", 16384, "Items per chunk.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Timed runs after the warm-up.")
_WORKDIR = flags.DEFINE_string("workdir", "results/bench", "Output folder: topk_<queries>k_<items>k.json and .md go there.")


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(_NQ.value, _DIM.value)).astype(np.float32))
    it = jnp.asarray(rng.normal(size=(_NI.value, _DIM.value)).astype(np.float32))
    kw = dict(k=_K.value, query_chunk=_QC.value, item_chunk=_IC.value)
    compiled = recommend.chunked_topk.lower(q, it, **kw).compile()
    mem = compiled.memory_analysis()
    t0 = time.perf_counter()
    jax.block_until_ready(recommend.chunked_topk(q, it, **kw))
    first = time.perf_counter() - t0
    times = []
    for _ in range(_REPEATS.value):
        t0 = time.perf_counter()
        jax.block_until_ready(recommend.chunked_topk(q, it, **kw))
        times.append(time.perf_counter() - t0)
    gib = 2.0 ** 30
    res = {
        "n_queries": _NQ.value, "n_items": _NI.value, "dim": _DIM.value, "k": _K.value,
        "query_chunk": _QC.value, "item_chunk": _IC.value, "backend": jax.default_backend(),
        "devices": str(jax.devices()),
        "temp_gib": mem.temp_size_in_bytes / gib, "argument_gib": mem.argument_size_in_bytes / gib,
        "output_gib": mem.output_size_in_bytes / gib,
        "dense_similarity_gib": _NQ.value * _NI.value * 4 / gib,
        "first_run_s": first, "best_s": min(times) if times else None,
        "queries_per_s": _NQ.value / min(times) if times else None,
    }
    logging.info("%s", res)
    out = pathlib.Path(_WORKDIR.value) / f"topk_{_NQ.value // 1000}k_{_NI.value // 1000}k.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    out.with_suffix(".md").write_text(
        "| queries | items | dim | k | temporaries GiB | dense matrix GiB | best time s | queries/s |\n"
        "|---|---|---|---|---|---|---|---|\n"
        f"| {_NQ.value} | {_NI.value} | {_DIM.value} | {_K.value} | {res['temp_gib']:.3f} | "
        f"{res['dense_similarity_gib']:.1f} | {res['best_s'] if res['best_s'] is None else round(res['best_s'], 2)} "
        f"| {res['queries_per_s'] if res['queries_per_s'] is None else round(res['queries_per_s'])} |\n")


if __name__ == "__main__":
    app.run(main)
