"""The K-FAC paper's MNIST deep-autoencoder benchmark: K-FAC, FOOF, SGD, Adam, kfac-jax.

Network 784-1000-500-250-30-250-500-1000-784 (tanh, linear code layer), sigmoid
cross-entropy summed over pixels, ℓ2 1e-5 (Martens & Grosse 2015 §13). Methods:

* ``kfac`` — ours (``classical.kfac.KFAC``): adaptive α, μ from the quadratic model, LM
  damping every 5 steps, inverses every 5 steps, EMA 0.95 (the paper's settings);
* ``foof`` — ours (``classical.foof``), the A factor only, damping 1, momentum 0.9;
* ``sgd`` — optax SGD, Nesterov momentum with Sutskever et al.'s schedule (μ_max 0.99);
* ``adam`` — optax Adam;
* ``kfac-jax`` — DeepMind's kfac-jax with its MNIST-autoencoder example config
  (adaptive lr/momentum/damping, curvature EMA 0.95, inverse period 5, damping
  interval 5, initial damping tuned around its 150), only when kfac-jax is installed.

Every method gets the same tuning budget: the three grid points in ``GRIDS`` (initial
damping for the adaptive K-FACs, learning rate for the others), run on
seed 0 for ``--tune-steps`` steps and ranked by final training loss (never test data).
Training loss is measured on a fixed subset of the training set, the test error is
the squared reconstruction error per image on a fixed test subset. Output:
``results/kfac_autoencoder/{results.json,curves.png}``; per-run checkpoints make an
interrupted study resume where it stopped.

    qgeom kfac                      # quick: ~2 min, 5k images, batch 100, 60 steps, no tuning
    qgeom kfac --full               # the study: 60k images, batch 1000, 2000 steps, 3 seeds, tuning
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from classical.data import load_mnist
from experiments import kfac_common as kc
from experiments.io import results_dir

GRIDS = {
    "kfac": [{"damping": d} for d in (15.0, 150.0, 1000.0)],
    "foof": [{"lr": lr, "damping": 1.0} for lr in (3e-3, 1e-2, 3e-2)],
    "sgd": [{"lr": lr} for lr in (3e-3, 1e-2, 3e-2)],
    "adam": [{"lr": lr} for lr in (3e-4, 1e-3, 3e-3)],
    "kfac-jax": [{"damping": d} for d in (15.0, 150.0, 1000.0)],
}

FULL = {"train_size": 60000, "eval_size": 10000, "batch_size": 1000, "steps": 2000, "seeds": 3,
        "tune_steps": 300, "eval_every": 50}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="qgeom kfac", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(kc.METHODS),
                    help="comma-separated subset of %(default)s (kfac-jax is skipped when not installed)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--train-size", type=int, default=5000, help="training images used (≤ 60000)")
    ap.add_argument("--eval-size", type=int, default=1000, help="train / test images the curves are measured on")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--tune-steps", type=int, default=0, help="steps per grid point on seed 0 (0: no tuning, "
                    "middle grid point)")
    ap.add_argument("--full", action="store_true", help="the full study: " + ", ".join(f"{k}={v}" for k, v in FULL.items()))
    ap.add_argument("--out", default=None, help="output directory (default results/kfac_autoencoder)")
    ap.add_argument("--fresh", action="store_true", help="delete this study's checkpoints first")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.full:
        for k, v in FULL.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    return args


def check_args(args, methods):
    for name in ("steps", "seeds", "batch_size", "train_size", "eval_size", "eval_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.tune_steps < 0:
        raise ValueError(f"--tune-steps must be >= 0, got {args.tune_steps}")
    if args.batch_size > args.train_size:
        raise ValueError(f"--batch-size {args.batch_size} exceeds --train-size {args.train_size}")
    unknown = [m for m in methods if m not in kc.METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(kc.METHODS)}")


def select_methods(spec: str) -> list[str]:
    methods = [m.strip() for m in spec.split(",") if m.strip()]
    if "kfac-jax" in methods and not kc.kfac_jax_available():
        print("kfac-jax is not installed (pip install -e '.[ref]'): skipping it")
        methods.remove("kfac-jax")
    return methods


def main(argv=None):
    args = parse_args(argv)
    methods = select_methods(args.methods)
    check_args(args, methods)
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    mnist = load_mnist()
    if args.train_size > len(mnist.x_train) or args.eval_size > len(mnist.x_test):
        raise ValueError(f"MNIST has {len(mnist.x_train)} train / {len(mnist.x_test)} test images")
    x = mnist.x_train[: args.train_size]
    ev_tr, ev_te = x[: args.eval_size], mnist.x_test[: args.eval_size]
    data = {"train": (x, x), "eval_train": (ev_tr, ev_tr), "eval_test": (ev_te, ev_te)}
    out = args.out or str(results_dir("kfac_autoencoder"))
    if args.fresh:
        import shutil

        shutil.rmtree(f"{out}/ckpt", ignore_errors=True)
    problem = kc.autoencoder_problem()
    print(f"MNIST autoencoder: {args.train_size} images, batch {args.batch_size}, {args.steps} steps, "
          f"{args.seeds} seed(s), methods {methods}, tuning {args.tune_steps} steps/grid point")
    res = kc.run_study(problem, data, methods=methods, grids={m: GRIDS[m] for m in methods}, seeds=args.seeds,
                       steps=args.steps, tune_steps=args.tune_steps, batch_size=args.batch_size,
                       eval_every=args.eval_every, out_dir=out, progress=not args.no_progress,
                       error_label="test reconstruction error (squared, per image)",
                       title="MNIST deep autoencoder")
    print()
    for m, t in res["tuning"].items():
        if t["table"]:
            grid = ", ".join(f"{row['hparams']}: {row['final_train_loss']:.4g}" for row in t["table"])
            print(f"tuning {m}: {grid} -> {t['winner']}")
    print(kc.markdown_table(res["summary"], "test_error"))
    print(f"\nwrote {out}/results.json and {out}/curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
