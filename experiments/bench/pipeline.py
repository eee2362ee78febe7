r"""Benchmark: the whole pipeline (``experiments/pipeline.py``), wall clock and seconds per stage.

  make bench-pipeline    # Corel5k in a fresh workdir; results/bench/pipeline.json and pipeline.md
  python experiments/bench/pipeline.py --config=experiments/configs/corel5k.py \
      --config.data.root=../shared/data/corel5k --out_dir=results/bench
  # the same, with a "before" column from an earlier run (its pipeline.json, or a pipeline workdir):
  python experiments/bench/pipeline.py --config=experiments/configs/corel5k.py \
      --config.data.root=../shared/data/corel5k --before=results/bench/pipeline_before.json
  # everything but the CNN stage, copied from an earlier run of the same config:
  python experiments/bench/pipeline.py ... --reuse_from=runs/corel5k --reuse_stages=cnn

The pipeline runs as its own process (``python experiments/pipeline.py --config=... --workdir=...``, every
``--config.x=y`` flag passed on), exactly as a user runs it, in a fresh temporary workdir (removed afterwards)
unless ``--workdir`` is given; the total is that process's wall clock (start-up and imports included). The
per-stage seconds are the stages' own ``timing.json``; "rest" is the total minus the stages (start-up, tables,
retrieval, tagger bundle, figures). Recorded with them: ``os.getloadavg()`` before and after, the CPU count,
the jax backend, the git commit; the pipeline's log goes to ``<name>.log``. Timings taken under load (a 1-minute
load average above the CPU count) are marked so in the Markdown: they are not speed claims.
"""
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

from dcca_jax import pipeline
from dcca_jax._io import atomic_write_json, atomic_write_text, jsonable
from experiments import cli_common as common

_DEFAULT_CONFIG = "experiments/configs/corel5k.py"
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Pipeline config file (passed on with every "
                                          "--config.x=y override, in the --config=FILE form).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Pipeline workdir; empty = a fresh temporary folder, removed after "
                               "the run. Stages already finished in a given workdir are reused (and reported so).")
_OUT_DIR = flags.DEFINE_string("out_dir", "results/bench", "Where <name>.json and <name>.md are written.")
_NAME = flags.DEFINE_string("name", "pipeline", "Base name of the output files.")
_LABEL = flags.DEFINE_string("label", "after", "Column title of this run in the Markdown table.")
_BEFORE = flags.DEFINE_string("before", "", "An earlier run to put beside this one: its <name>.json, or a pipeline "
                              "workdir (its stages' timing.json).")
_BEFORE_LABEL = flags.DEFINE_string("before_label", "before", "Column title of --before.")
_REUSE_FROM = flags.DEFINE_string("reuse_from", "", "A pipeline workdir of the same config to copy --reuse_stages "
                                  "from (e.g. to time everything but the CNN stage).")
_REUSE_STAGES = flags.DEFINE_list("reuse_stages", [], "Stages copied from --reuse_from before the run.")
_XLA_CACHE = flags.DEFINE_string("xla_cache", "", "A persistent XLA compilation cache folder for the pipeline (jax's "
                                 "JAX_COMPILATION_CACHE_DIR, every compile kept); empty = jax's default (none "
                                 "unless the environment sets one). The record says whether it was empty (cold).")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _machine() -> dict:
    import jax

    return {"cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
            "jax_devices": [str(d) for d in jax.devices()], "python": sys.version.split()[0],
            "git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(_git("status", "--porcelain"))}


def run_bench(workdir: pathlib.Path, pipeline_flags: list[str]) -> dict:
    """Runs experiments/pipeline.py in ``workdir`` and returns the measurement record."""
    for stage in _REUSE_STAGES.value:
        src = pathlib.Path(_REUSE_FROM.value) / "stages" / stage
        if not (src / "DONE").exists():
            raise FileNotFoundError(f"--reuse_stages: {src} is not a finished stage; run the pipeline there first "
                                    "or drop the stage from --reuse_stages.")
        shutil.copytree(src, workdir / "stages" / stage, dirs_exist_ok=True)
    cmd = [sys.executable, "experiments/pipeline.py", *pipeline_flags, f"--workdir={workdir}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    if _XLA_CACHE.value:
        env["JAX_COMPILATION_CACHE_DIR"] = str(pathlib.Path(_XLA_CACHE.value).resolve())
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    cache_dir = env.get("JAX_COMPILATION_CACHE_DIR")
    cache_entries = len(list(pathlib.Path(cache_dir).glob("*"))) if cache_dir and pathlib.Path(cache_dir).is_dir() else 0
    machine = _machine()  # the commit the run starts from
    load_before, started = os.getloadavg(), time.time()
    t0 = time.perf_counter()
    log = pathlib.Path(_OUT_DIR.value) / f"{_NAME.value}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:  # the pipeline's own log (its stages' progress), kept beside the results
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
    total = time.perf_counter() - t0
    load_after = os.getloadavg()
    if proc.returncode:
        raise RuntimeError(f"the pipeline failed (exit {proc.returncode}): {' '.join(cmd)}; its log: {log}\n"
                           + log.read_text()[-4000:])
    timings = pipeline.stage_timings(workdir)
    reused = sorted(s for s, t in timings["finished_at"].items() if t < started)
    computed = {s: v for s, v in timings["stages"].items() if s not in reused}
    return {
        "command": " ".join(cmd), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "stages": computed, "reused_stages": reused, "recommend_methods": timings["recommend_methods"],
        "rest_seconds": total - sum(computed.values()), "total_seconds": total,
        "loadavg_before": load_before, "loadavg_after": load_after, **machine,
        "xla_cache": {"dir": cache_dir, "entries_before": cache_entries},
        "config": jsonable(_CONFIG.value),
    }


def _read_before(path: str) -> dict:
    p = pathlib.Path(path)
    if p.is_dir():  # a pipeline workdir: its stages' own timings, no total
        t = pipeline.stage_timings(p)
        return {"stages": t["stages"], "recommend_methods": t["recommend_methods"], "reused_stages": [],
                "source": str(p)}
    return {**json.loads(p.read_text()), "source": str(p)}


def _cell(x) -> str:
    return "" if x is None else f"{x:.1f}"


def _cache(record: dict) -> str:
    c = record.get("xla_cache") or {}
    if not c.get("dir"):
        return "none"
    return f"{c['dir']} ({'warm, ' + str(c['entries_before']) + ' entries' if c['entries_before'] else 'cold'})"


def markdown(after: dict, before: dict | None) -> str:
    cols = ([_BEFORE_LABEL.value] if before else []) + [_LABEL.value]
    runs = ([before] if before else []) + [after]
    stages = list(dict.fromkeys([s for r in runs for s in r["stages"]] + [s for r in runs for s in r["reused_stages"]]))
    stages.sort(key=lambda s: pipeline.STAGE_ORDER.index(s) if s in pipeline.STAGE_ORDER else len(pipeline.STAGE_ORDER))
    methods = list(dict.fromkeys(m for r in runs for m in r["recommend_methods"]))
    head = "| stage | " + " | ".join(f"{c} (s)" for c in cols) + (" | speed-up |" if before else " |")
    lines = [head, "|---" * (len(cols) + 1 + bool(before)) + "|"]

    def row(name, values):
        cells = [("reused" if v == "reused" else _cell(v)) for v in values]
        up = ""
        if before and all(isinstance(v, float) and v > 0 for v in values):
            up = f" | {values[0] / values[1]:.1f}x"
        elif before:
            up = " | "
        lines.append(f"| {name} | " + " | ".join(cells) + up + " |")

    for s in stages:
        row(s, ["reused" if s in r["reused_stages"] else r["stages"].get(s) for r in runs])
        if s == "recommend":
            for m in methods:
                row(f"&nbsp;&nbsp;recommend: {m}", [r["recommend_methods"].get(m) for r in runs])
    row("rest (start-up, tables, retrieval, bundle, figures)", [r.get("rest_seconds") for r in runs])
    row("**total** (wall clock" + (", reused stages excluded)" if any(r["reused_stages"] for r in runs) else ")"),
        [r.get("total_seconds") for r in runs])
    notes = [""]
    for c, r in zip(cols, runs):
        if "loadavg_before" not in r:
            notes.append(f"- {c}: stage timings of {r['source']} (no machine record).")
            continue
        loaded = max(r["loadavg_before"][0], r["loadavg_after"][0]) > (r["cpu_count"] or 1)
        notes.append(f"- {c}: {r['date']}, {r['cpu_count']} CPUs, jax {r['jax_backend']}, commit "
                     f"{r['git_commit'][:10]}{' (dirty)' if r['git_dirty'] else ''}, load average "
                     f"{tuple(round(x, 2) for x in r['loadavg_before'])} before, "
                     f"{tuple(round(x, 2) for x in r['loadavg_after'])} after"
                     + (" **(under load: not a speed claim)**" if loaded else "") + f"; XLA cache {_cache(r)}"
                     + f"; `{r['command']}`")
    return "\n".join(lines + notes) + "\n"


def main(argv):
    # absl consumed the flags: the --config ones are passed on to the pipeline as they were written
    pipeline_flags = [a for a in sys.argv[1:] if a.startswith("--config")]
    if not any(a.startswith("--config=") for a in pipeline_flags):
        pipeline_flags.insert(0, f"--config={_DEFAULT_CONFIG}")

    def go():
        keep = bool(_WORKDIR.value)
        workdir = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="bench_pipeline_"))
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            record = run_bench(workdir, pipeline_flags)
        finally:
            if not keep:
                shutil.rmtree(workdir, ignore_errors=True)
        before = _read_before(_BEFORE.value) if _BEFORE.value else None
        if before:
            record["before"] = before
        out = pathlib.Path(_OUT_DIR.value)
        atomic_write_json(out / f"{_NAME.value}.json", jsonable(record))
        atomic_write_text(out / f"{_NAME.value}.md", markdown(record, before))
        common.show(record, str(out))

    common.run(argv, go)


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_flags)
