"""MNIST classifiers trained with K-FAC, FOOF, SGD, Adam and kfac-jax: an MLP and a small conv net.

* ``mlp``  — 784-1000-500-10, tanh, softmax cross-entropy, ℓ2 1e-5;
* ``conv`` — conv 3×3/2 (16) → conv 3×3/2 (32) → dense 128 → 10, relu (our K-FAC treats
  the convolutions as KFC patch layers; kfac-jax registers them automatically).

Same harness as the autoencoder study (``experiments.kfac_common``): equal tuning
budget (three grid points per method on seed 0, ranked by training loss), several
seeds, training loss and test error (1 − accuracy) versus steps and wall time,
``results/kfac_classifier/<model>/{results.json,curves.png}``, resumable checkpoints.

    qgeom kfac-classifier                       # quick: both models, 10k images, 60 steps
    qgeom kfac-classifier --full --models mlp   # 60k images, batch 1000, 1000 steps, 3 seeds, tuning
"""

from __future__ import annotations

import argparse
import shutil
import warnings

from classical.data import load_mnist
from experiments import kfac_common as kc
from experiments.io import results_dir
from experiments.kfac_autoencoder import check_args, select_methods

PROBLEMS = {"mlp": kc.mlp_classifier_problem, "conv": kc.conv_classifier_problem}

GRIDS = {
    "kfac": [{"damping": d} for d in (0.01, 0.1, 1.0)],
    "foof": [{"lr": lr, "damping": 0.1} for lr in (0.03, 0.1, 0.3)],
    "sgd": [{"lr": lr} for lr in (0.03, 0.1, 0.3)],
    "adam": [{"lr": lr} for lr in (3e-4, 1e-3, 3e-3)],
    "kfac-jax": [{"damping": d} for d in (0.01, 0.1, 1.0)],
}

FULL = {"train_size": 60000, "eval_size": 10000, "batch_size": 1000, "steps": 1000, "seeds": 3,
        "tune_steps": 200, "eval_every": 50}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="qgeom kfac-classifier", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,conv", help="comma-separated subset of mlp,conv")
    ap.add_argument("--methods", default=",".join(kc.METHODS))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--train-size", type=int, default=10000)
    ap.add_argument("--eval-size", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--tune-steps", type=int, default=0, help="steps per grid point on seed 0 (0: no tuning)")
    ap.add_argument("--full", action="store_true", help="the full study: " + ", ".join(f"{k}={v}" for k, v in FULL.items()))
    ap.add_argument("--out", default=None, help="output directory (default results/kfac_classifier)")
    ap.add_argument("--fresh", action="store_true", help="delete this study's checkpoints first")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.full:
        for k, v in FULL.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    return args


def main(argv=None):
    args = parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in PROBLEMS]
    if bad or not models:
        raise ValueError(f"unknown models {bad}; choose from {sorted(PROBLEMS)}")
    methods = select_methods(args.methods)
    check_args(args, methods)
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    mnist = load_mnist()
    if args.train_size > len(mnist.x_train) or args.eval_size > len(mnist.x_test):
        raise ValueError(f"MNIST has {len(mnist.x_train)} train / {len(mnist.x_test)} test images")
    for model in models:
        problem = PROBLEMS[model]()
        shape = (-1, 28, 28, 1) if model == "conv" else (-1, 784)
        x, y = mnist.x_train[: args.train_size].reshape(shape), mnist.y_train[: args.train_size]
        k = args.eval_size
        data = {"train": (x, y), "eval_train": (x[:k], y[:k]),
                "eval_test": (mnist.x_test[:k].reshape(shape), mnist.y_test[:k])}
        out = f"{args.out or results_dir('kfac_classifier')}/{model}"
        if args.fresh:
            shutil.rmtree(f"{out}/ckpt", ignore_errors=True)
        print(f"MNIST {model} classifier: {args.train_size} images, batch {args.batch_size}, {args.steps} steps, "
              f"{args.seeds} seed(s), methods {methods}, tuning {args.tune_steps} steps/grid point")
        res = kc.run_study(problem, data, methods=methods, grids={m: GRIDS[m] for m in methods}, seeds=args.seeds,
                           steps=args.steps, tune_steps=args.tune_steps, batch_size=args.batch_size,
                           eval_every=args.eval_every, out_dir=out, progress=not args.no_progress,
                           error_label="test error (1 - accuracy)", title=f"MNIST {model} classifier")
        for m, t in res["tuning"].items():
            if t["table"]:
                grid = ", ".join(f"{row['hparams']}: {row['final_train_loss']:.4g}" for row in t["table"])
                print(f"tuning {m}: {grid} -> {t['winner']}")
        print(kc.markdown_table(res["summary"], "test_error"))
        print(f"wrote {out}/results.json and {out}/curves.png\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
