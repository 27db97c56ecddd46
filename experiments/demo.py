"""Short demo of both worlds (what ``make run`` runs): a few minutes on 2 cores.

* quantum — Gibbs sampling (VQT) of the 4-spin TFIM ring at β = 1 with QPMD, QPNGD,
  Adam, GD and Fubini–Study QNG (``experiments.gibbs``' default config);
* classical — the MNIST deep autoencoder (784-1000-500-250-30-…-784) for a few dozen
  steps with K-FAC, FOOF and Adam on a 5,000-image subset (``experiments.kfac_autoencoder``).

Writes ``results/demo/{gibbs,kfac}/`` (JSON + PNG) and ``results/demo/summary.md``.
Both parts resume from their checkpoints; ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import shutil
import time

from experiments.harness.cli import quick
from experiments.harness.store import atomic_write_text, results_dir

KFAC = dict(methods=["kfac", "foof", "adam"], steps=60, train_size=5000, batch_size=250, eval_every=10)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="qgeom demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--fresh", action="store_true", help="delete the demo's previous results and checkpoints")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    root = results_dir("demo")
    if args.fresh:
        shutil.rmtree(root)
        root = results_dir("demo")

    from experiments import gibbs, kfac_autoencoder

    t0 = time.perf_counter()
    print("== quantum: VQT Gibbs sampling of the n = 4 TFIM ring (β = 1) ==")
    quantum = quick(gibbs.STUDY, results_dir("demo", "gibbs"), progress=not args.no_progress)
    print(quantum["table"])
    t1 = time.perf_counter()

    print("\n== classical: MNIST deep autoencoder, K-FAC vs FOOF vs Adam ==")
    kfac_dir = results_dir("demo", "kfac")
    classical = quick(kfac_autoencoder.STUDY, kfac_dir, progress=not args.no_progress, **KFAC)
    print(classical["table"])
    t2 = time.perf_counter()

    plots = [p["plot"] for p in quantum["problems"]] + [str(kfac_dir / "curves.png")]
    settings = ", ".join(f"{k}={v}" for k, v in KFAC.items())
    text = "\n".join([
        "# qgeom demo", "",
        f"## Quantum: VQT on the TFIM ring ({t1 - t0:.0f} s)", "", quantum["table"], "",
        f"## Classical: MNIST deep autoencoder ({t2 - t1:.0f} s, {settings})", "", classical["table"], "",
        "## Plots", "", *[f"- {p}" for p in plots], "",
    ])
    atomic_write_text(root / "summary.md", text)
    print(f"\nsummary: {root / 'summary.md'}\nplots:\n" + "\n".join(f"  {p}" for p in plots))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
