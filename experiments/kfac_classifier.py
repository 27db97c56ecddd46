"""MNIST classifiers trained with K-FAC, FOOF, SGD, Adam and kfac-jax: an MLP and a small conv net.

* ``mlp``  — 784-1000-500-10, tanh, softmax cross-entropy, ℓ2 1e-5;
* ``conv`` — conv 3×3/2 (16) → conv 3×3/2 (32) → dense 128 → 10, relu (our K-FAC treats
  the convolutions as KFC patch layers; kfac-jax registers them automatically).

Same harness as the autoencoder study (``experiments.kfac_common``): equal tuning
budget (three grid points per method on seed 0, ranked by training loss), several
seeds, training loss and test error (1 − accuracy) versus steps and wall time,
``results/kfac_classifier/<model>/{results.json,summary.md,curves.png}``, resumable
checkpoints.

    qgeom kfac-classifier                       # quick: both models, 10k images, 60 steps
    qgeom kfac-classifier --full --models mlp   # 60k images, batch 1000, 1000 steps, 3 seeds, tuning
"""

from __future__ import annotations

import warnings

from experiments import kfac_common as kc
from experiments.io import results_dir

PROBLEMS = {"mlp": kc.mlp_classifier_problem, "conv": kc.conv_classifier_problem}

GRIDS = {
    "kfac": [{"damping": d} for d in (0.01, 0.1, 1.0)],
    "kfac-sub": [{"damping": d} for d in (0.01, 0.1, 1.0)],
    "foof": [{"lr": lr, "damping": 0.1} for lr in (0.03, 0.1, 0.3)],
    "sgd": [{"lr": lr} for lr in (0.03, 0.1, 0.3)],
    "adam": [{"lr": lr} for lr in (3e-4, 1e-3, 3e-3)],
    "kfac-jax": [{"damping": d} for d in (0.01, 0.1, 1.0)],
}

DEFAULTS = {"steps": 60, "seeds": 1, "batch_size": 128, "train_size": 10000, "eval_size": 2000, "eval_every": 10,
            "tune_steps": 0}

FULL = {"train_size": 60000, "eval_size": 10000, "batch_size": 1000, "steps": 1000, "seeds": 3,
        "tune_steps": 200, "eval_every": 50}


def main(argv=None):
    ap = kc.study_parser("qgeom kfac-classifier", __doc__, defaults=DEFAULTS, full=FULL)
    ap.add_argument("--models", default="mlp,conv", help="comma-separated subset of mlp,conv")
    args = kc.parse_study_args(ap, argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in PROBLEMS]
    if bad or not models:
        raise ValueError(f"unknown models {bad}; choose from {sorted(PROBLEMS)}")
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    mnist = kc.study_mnist(args)
    for model in models:
        shape = (-1, 28, 28, 1) if model == "conv" else (-1, 784)
        x, y = mnist.x_train[: args.train_size].reshape(shape), mnist.y_train[: args.train_size]
        k = args.eval_size
        data = {"train": (x, y), "eval_train": (x[:k], y[:k]),
                "eval_test": (mnist.x_test[:k].reshape(shape), mnist.y_test[:k])}
        out = kc.study_out(f"{args.out or results_dir('kfac_classifier')}/{model}", args.fresh)
        print(f"MNIST {model} classifier: {args.train_size} images, batch {args.batch_size}, {args.steps} steps, "
              f"{args.seeds} seed(s), methods {args.methods}, tuning {args.tune_steps} steps/grid point")
        res = kc.run_study(PROBLEMS[model](), data, methods=args.methods, grids={m: GRIDS[m] for m in args.methods},
                           seeds=args.seeds, steps=args.steps, tune_steps=args.tune_steps, batch_size=args.batch_size,
                           eval_every=args.eval_every, out_dir=out, progress=not args.no_progress,
                           error_label="test error (1 - accuracy)", target_horizon=args.steps,
                           stop_at_target=args.stop_at_target, title=f"MNIST {model} classifier", settings=vars(args))
        kc.print_study(res, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
