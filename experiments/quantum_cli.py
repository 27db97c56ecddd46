"""The command-line shape the quantum studies share (``qgeom learn``, ``qgeom sequence``, ...).

A study module provides ``run_study(config, outdir, *, fresh, progress)`` returning a
summary with a Markdown ``"table"``, its ``DEFAULT`` and ``FULL`` configs, and optionally
extra flags and report lines; these two functions do the rest:

* ``quick`` — the short study (``DEFAULT`` plus overrides) with the persistent compile
  cache, into ``results/<name>`` unless told otherwise;
* ``main`` — parse the common flags (``quantum_common.study_parser``) and the study's own,
  resolve defaults → ``--full`` → ``--config`` file → flags, run, print the table, the
  study's report lines (plot paths, ...) and where the summary went.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from experiments import quantum_common as qc
from experiments.io import results_dir


def quick(name: str, run_study: Callable, default: dict, outdir=None, *, progress: bool = True,
          **overrides) -> dict:
    """``run_study({**default, **overrides}, outdir or results/<name>)`` with the compile cache on."""
    qc.enable_compile_cache()
    return run_study({**default, **overrides}, outdir or results_dir(name), progress=progress)


def main(argv, *, name: str, doc: str, run_study: Callable, default: dict, full: dict,
         add_flags: Callable | None = None, report: Callable[[dict], list[str]] | None = None) -> int:
    """Parse ``argv``, run the study and print its table and ``report(summary)`` lines.

    ``doc``'s first paragraph is the help text; ``add_flags(parser)`` adds the study's own
    flags (destinations named as its config keys).
    """
    parser = qc.study_parser(name, doc.split("\n\n")[0])
    if add_flags is not None:
        add_flags(parser)
    args = parser.parse_args(argv)
    config = qc.resolve_config(args, default, full)
    qc.enable_compile_cache()
    outdir = args.out or results_dir(name)
    summary = run_study(config, outdir, fresh=args.fresh, progress=not args.no_progress)
    print(summary["table"])
    for line in report(summary) if report is not None else ():
        print(line)
    print(f"summary: {Path(outdir) / 'summary.json'}")
    return 0
