r"""Benchmark: the tagger's throughput from JPEG files to tags, beside CNN extraction alone, and search latency.

  python experiments/bench/tagger.py --tagger=runs/corel5k/tagger --images=../shared/data/corel5k \
      --workdir=results/bench

- extraction: :func:`dcca_jax.visual.extract.extract_features` with the bundle's backbone (decode, crop, jitted
  network), images/s;
- tagging: :meth:`dcca_jax.Tagger.tag` on the same files (extraction + auto-encoder + projection + label transfer
  + :func:`select_tags`), images/s; both after one warm-up pass (compilation excluded), median of --repeats;
- search: :meth:`dcca_jax.Tagger.search` over --index_size synthetic codes (standard normal, the model's width)
  added to the index, one query of --query_tags random vocabulary words at a time, ms per query (median and 95th
  percentile over --queries queries, after a warm-up query); the target is < 50 ms on CPU.

Writes the JSON and a Markdown table beside it, with the machine's load average (the CPUs may be shared).
"""
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from experiments.bench.measure import median_rate
from dcca_jax import Tagger
from dcca_jax.tagging.tagger import list_images
from dcca_jax.visual import extract

_TAGGER = flags.DEFINE_string("tagger", "runs/corel5k/tagger", "Tagger bundle.")
_IMAGES = flags.DEFINE_string("images", os.path.join(os.environ.get("DCCA_SHARED", "../shared"), "data", "corel5k"),
                              "Folder of JPEGs (the first --n files, sorted).")
_N = flags.DEFINE_integer("n", 256, "Images timed.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Backbone batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed passes (median reported).")
_INDEX = flags.DEFINE_integer("index_size", 100_000, "Synthetic codes in the search index.")
_QUERIES = flags.DEFINE_integer("queries", 100, "Search queries timed.")
_QUERY_TAGS = flags.DEFINE_integer("query_tags", 2, "Tags per query.")
_K = flags.DEFINE_integer("k", 20, "Hits per query.")
_WORKDIR = flags.DEFINE_string("workdir", "results/bench", "Output folder: tagger.json and tagger.md go there.")


def main(argv):
    del argv
    tg = Tagger.load(_TAGGER.value)
    root = pathlib.Path(_IMAGES.value)
    paths = [str(root / p) for p in list_images(root)[:_N.value]]
    n = len(paths)
    out = {"tagger": _TAGGER.value, "model": tg.model_name, "backbone": tg.spec["backbone"]["name"], "n_images": n,
           "batch_size": _BATCH.value, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                   "load_average": os.getloadavg(), "jax": jax.__version__,
                                                   "backend": jax.default_backend()}}
    backbone = tg._get_backbone()
    if not isinstance(backbone, str):
        def extract_only():
            extract.extract_features(paths, backbone=backbone, batch_size=_BATCH.value)

        extract_only()
        out["extract_images_per_s"], out["extract_seconds"] = median_rate(extract_only, n, _REPEATS.value)

    def tag_all():
        tg.tag(paths, n=5, batch_size=_BATCH.value)

    tag_all()
    out["tag_images_per_s"], out["tag_seconds"] = median_rate(tag_all, n, _REPEATS.value)

    k_dim = tg.visual_codes(tg.features(paths[:1])[0]).shape[1]
    rng = np.random.default_rng(0)
    tg.add_codes([f"synthetic/{i:06d}" for i in range(_INDEX.value)],
                 rng.standard_normal((_INDEX.value, k_dim)).astype(np.float32))
    known = list(tg.encoder.deep_words.words if tg.encoder.deep_words is not None else tg.vocabulary)
    queries = [list(rng.choice(known, size=_QUERY_TAGS.value, replace=False)) for _ in range(_QUERIES.value + 1)]
    tg.search(queries[0], k=_K.value, collection="added")  # compiles, and moves the index to the device
    ms = []
    for q in queries[1:]:
        t0 = time.perf_counter()
        tg.search(q, k=_K.value, collection="added")
        ms.append(1000 * (time.perf_counter() - t0))
    out["search"] = {"index_size": _INDEX.value, "dim": int(k_dim), "k": _K.value, "queries": len(ms),
                     "median_ms": statistics.median(ms), "p95_ms": float(np.percentile(ms, 95)),
                     "target_ms": 50.0}
    out["machine"]["load_average_after"] = os.getloadavg()
    path = pathlib.Path(_WORKDIR.value) / "tagger.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    s = out["search"]
    md = ["| measurement | value |", "|---|---|",
          f"| CNN extraction alone ({out['backbone']}, {n} JPEGs, batch {_BATCH.value}) | "
          f"{out.get('extract_images_per_s', float('nan')):.1f} images/s |",
          f"| tagging, JPEG files to tags (model {tg.model_name}) | {out['tag_images_per_s']:.1f} images/s |",
          f"| search over {s['index_size']:,} codes ({s['dim']}-d, top {s['k']}) | median {s['median_ms']:.1f} ms, "
          f"p95 {s['p95_ms']:.1f} ms per query |",
          "", f"{out['machine']['cpus']} CPUs, load average {out['machine']['load_average']} (before) "
              f"{out['machine']['load_average_after']} (after), {out['machine']['backend']}."]
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    app.run(main)
