"""Shared glue of the experiment mains: logging, one-line errors, and where the outputs went."""
from __future__ import annotations

import pathlib
import sys
from typing import Callable

from absl import logging

from dcca_jax.pipeline import PipelineError, run_pipeline
from dcca_jax.sizes import SizeError

# Errors a user can fix get one line, not a traceback.
USER_ERRORS = (PipelineError, FileNotFoundError, NotADirectoryError, ValueError, KeyError)


class _QuietLibraries:
    """Drops orbax's per-checkpoint INFO chatter from the console (warnings and errors still show)."""

    def filter(self, record) -> bool:
        import logging as py_logging

        return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


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
