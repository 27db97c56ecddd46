"""The config / command-line layer every study uses.

A study is a ``Study``: its name, docstring (the first paragraph is the help text), a
``run(config, outdir, *, fresh, progress) → summary`` function, its ``default`` (quick) and
``full`` configs, ``flags`` (functions adding the study's own flags to the parser, each
destination named as its config key, default None), ``report(summary) → lines``, the
``summary_file`` it writes and its folder under ``results/``. The summary has a ``"table"``.
``main(study, argv)`` resolves the config — defaults, then ``--full``, then a ``--config``
JSON file, then the flags given — and runs it; ``quick(study, outdir, **overrides)`` runs the
default config from Python (what ``qgeom demo`` does). A study module sets
``main = STUDY.main`` for ``experiments/cli.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from experiments.harness.store import enable_compile_cache, results_dir


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    doc: str
    run: Callable
    default: dict
    full: dict
    flags: Callable | tuple = ()
    report: Callable[[dict], list[str]] | None = None
    summary_file: str = "summary.json"
    results: str | None = None  # the output folder under results/ (default: the name)

    @property
    def outdir(self) -> Path:
        return results_dir(self.results or self.name)

    def main(self, argv=None) -> int:
        """``qgeom <name> [flags]``."""
        return main(self, argv)


def methods_type(text: str) -> list[str]:
    """``--methods a b`` and ``--methods a,b`` alike."""
    return [m for m in text.split(",") if m]


def parser(study: Study) -> argparse.ArgumentParser:
    """The study's parser: the common flags, then ``study.flags``."""
    p = argparse.ArgumentParser(prog=f"qgeom {study.name}", description=study.doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    full = ", ".join(f"{k}={v}" for k, v in study.full.items() if study.default.get(k) != v)
    p.add_argument("--full", action="store_true", help=f"the full study ({full})")
    p.add_argument("--config", help="JSON file of settings (keys as the flags, with underscores)")
    p.add_argument("--methods", type=methods_type, nargs="+", help="methods to run (space- or comma-separated)")
    p.add_argument("--out", help=f"output directory (default results/{study.results or study.name})")
    p.add_argument("--fresh", action="store_true", help="ignore and clear the checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal)")
    for add in study.flags if isinstance(study.flags, tuple) else (study.flags,):
        add(p)
    return p


def resolve(args: argparse.Namespace, default: dict, full: dict) -> dict:
    """Defaults (short or ``--full``), then the ``--config`` file, then the flags given."""
    config = dict(full if args.full else default)
    if args.config:
        with open(args.config) as fh:
            extra = json.load(fh)
        unknown = set(extra) - set(config)
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(config)}")
        config.update(extra)
    for key in config:
        value = getattr(args, key, None)
        if value is not None:
            config[key] = [m for group in value for m in group] if key == "methods" else value
    return config


def quick(study: Study, outdir=None, *, progress: bool = True, fresh: bool = False, **overrides) -> dict:
    """``study.run({**default, **overrides}, outdir or results/<name>)`` with the compile cache on."""
    enable_compile_cache()
    return study.run({**study.default, **overrides}, Path(outdir or study.outdir), fresh=fresh, progress=progress)


def main(study: Study, argv=None) -> int:
    """Parse ``argv``, run the study, print its table, ``report`` lines and where the summary went."""
    args = parser(study).parse_args(argv)
    config = resolve(args, study.default, study.full)
    enable_compile_cache()
    outdir = Path(args.out or study.outdir)
    summary = study.run(config, outdir, fresh=args.fresh, progress=not args.no_progress)
    print(summary["table"])
    for line in study.report(summary) if study.report is not None else ():
        print(line)
    if (outdir / study.summary_file).exists():
        print(f"summary: {outdir / study.summary_file}")
    return 0
