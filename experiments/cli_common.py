"""Shared glue of the experiment mains: logging, one-line errors, where the outputs went, cluster settings."""
from __future__ import annotations

import pathlib
import sys
from typing import Any, Callable, Mapping

from absl import logging

from dcca_jax.pipeline import PipelineError, run_pipeline
from dcca_jax.sizes import SizeError

# Errors a user can fix get one line, not a traceback.
USER_ERRORS = (PipelineError, FileNotFoundError, NotADirectoryError, ValueError, KeyError)


# Loggers whose INFO lines are noise in a main's console: jax's accelerator probe ("Unable to initialize
# backend 'tpu'" on every CPU/GPU host) and gensim's per-build lifecycle lines. The library leaves logging
# configuration to the application (dcca_jax.semantic.skipgram only quiets gensim around its own calls).
NOISY_LOGGERS = ("jax._src.xla_bridge", "gensim")


class _QuietLibraries:
    """Drops orbax's per-checkpoint INFO chatter from the console (warnings and errors still show)."""

    def filter(self, record) -> bool:
        import logging as py_logging

        return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def quiet_noisy_loggers() -> None:
    """Raises :data:`NOISY_LOGGERS` to WARNING, so INFO (absl's level in the mains) shows only our lines."""
    import logging as py_logging

    for name in NOISY_LOGGERS:
        py_logging.getLogger(name).setLevel(py_logging.WARNING)


def parse_flags(argv):
    """absl's flag parsing, with bad flags and bad ``--config.x=y`` overrides as one-line errors."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}\nPass --helpshort or --helpfull to see the flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        sys.exit(f"error: bad flag value ({type(e).__name__}: {str(e).strip()}); check the --config.<field> names "
                 "against the config file.")


def run(argv, fn: Callable[[], None]) -> None:
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]} (flags are --name=value)")
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    quiet_noisy_loggers()
    try:
        fn()
    except USER_ERRORS as e:
        # A SizeError lists every size problem, one per line; other errors get their first line.
        lines = str(e).splitlines() or [type(e).__name__]
        msg = "\n".join(lines) if isinstance(e, SizeError) else lines[0]
        sys.exit(f"error: {type(e).__name__}: {msg}")


def pipeline_main(config, workdir: str) -> dict:
    results = run_pipeline(config, workdir, progress=True)
    out = pathlib.Path(workdir)
    print((out / "tables.md").read_text())
    print(f"results: {out / 'results.json'}\ntables: {out / 'tables.md'}\n"
          f"figures: {out / 'table1_ccs.png'}, {out / 'ap_ar.png'}")
    return results


def check_main(config, workdir: str) -> None:
    """Prints the data check (dcca_jax.check) and exits 1 when the pipeline would fail."""
    from dcca_jax import check

    report = check.check_data(config, workdir=workdir or None)
    print(check.format_check(report))
    if not report.ok:
        sys.exit(1)


def show(result: dict, workdir: str) -> None:
    """Prints the Markdown files a study wrote and where its outputs are."""
    out = pathlib.Path(workdir)
    newest = max(out.glob("*.md"), key=lambda p: p.stat().st_mtime, default=None)
    if newest is not None:
        print(newest.read_text())
    print(f"outputs in {out.resolve()}")
    del result


# jax.distributed settings in the environment, first name wins (DCCA_ before JAX_).
_DISTRIBUTED_ENV = {
    "coordinator_address": (("DCCA_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS"), str),
    "num_processes": (("DCCA_NUM_PROCESSES", "JAX_NUM_PROCESSES"), int),
    "process_id": (("DCCA_PROCESS_ID", "JAX_PROCESS_ID"), int),
}
# Cluster managers whose jobs jax.distributed.initialize() configures by itself.
CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID",
               "MEGASCALE_COORDINATOR_ADDRESS")


def distributed_args(environ: Mapping[str, str], **given: Any) -> dict[str, Any]:
    """Arguments of :func:`dcca_jax.distributed.initialize_distributed` from flags and the environment.

    Each of ``coordinator_address``, ``num_processes`` and ``process_id`` not given (``None``) is read from
    ``DCCA_<NAME>`` or ``JAX_<NAME>``. With none of them set anywhere, ``auto`` is true when asked for
    (``auto=True`` or ``DCCA_DISTRIBUTED=auto``) or when a cluster manager JAX detects itself is present.

    Raises:
      ValueError: an environment variable does not parse (the message names it).
    """
    out: dict[str, Any] = {}
    for key, (names, cast) in _DISTRIBUTED_ENV.items():
        value = given.get(key)
        for var in names:
            if value is not None:
                break
            raw = environ.get(var)
            if raw not in (None, ""):
                try:
                    value = cast(raw)
                except ValueError:
                    raise ValueError(f"environment variable {var}={raw!r} is not a valid {key}.") from None
        out[key] = value
    asked = bool(given.get("auto")) or environ.get("DCCA_DISTRIBUTED", "").lower() == "auto"
    none_set = all(v is None for v in out.values())
    out["auto"] = none_set and (asked or any(environ.get(v) for v in CLUSTER_ENV))
    return out

