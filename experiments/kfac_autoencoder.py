"""The K-FAC paper's MNIST deep-autoencoder benchmark: K-FAC, FOOF, SGD, Adam, kfac-jax.

Network 784-1000-500-250-30-250-500-1000-784 (tanh, linear code layer), sigmoid
cross-entropy summed over pixels, ℓ2 1e-5 (Martens & Grosse 2015 §13). Methods:

* ``kfac`` — ours (``classical.kfac.KFAC``): adaptive α, μ from the quadratic model, LM
  damping every 5 steps, inverses every 5 steps, EMA 0.95 (the paper's settings);
* ``kfac-sub`` — the same, with all curvature (factor statistics and the quadratic model's
  Fisher products) from the first quarter of each batch (``curvature_batch_size=0.25``);
* ``foof`` — ours (``classical.foof``), the A factor only, damping 1, momentum 0.9;
* ``sgd`` — optax SGD, Nesterov momentum with Sutskever et al.'s schedule (μ_max 0.99);
* ``adam`` — optax Adam;
* ``kfac-jax`` — DeepMind's kfac-jax with its MNIST-autoencoder example config
  (adaptive lr/momentum/damping, curvature EMA 0.95, inverse period 5, damping
  interval 5, initial damping tuned around its 150), only when kfac-jax is installed.

Every method gets the same tuning budget: the four grid points in ``GRIDS`` (initial
damping for the adaptive K-FACs, learning rate for the others), run on seed 0 for
``--tune-steps`` steps and ranked by final training loss (never test data). Adam runs
first; its best seed-mean training loss within ``--steps`` steps is the target, and the
summary gives every method's steps and wall time to reach it (with ``--stop-at-target``
the other methods stop there). Training loss is measured on a fixed subset of the
training set, the test error is the squared reconstruction error per image on a fixed
test subset. Output: ``results/kfac_autoencoder/{results.json,summary.md,curves.png}``;
per-run checkpoints make an interrupted study resume where it stopped.

    qgeom kfac             # quick: ~2 min, 5k images, batch 100, 60 steps, no tuning
    qgeom kfac --full      # the study (~1 h on 2 cores): 20k images, batch 250, Adam 2000 steps,
                           # others up to 2000 steps or Adam's best, 2 seeds, 4-point grids at 200 steps
"""

from __future__ import annotations

import warnings

from experiments import kfac_common as kc
from experiments.io import results_dir

GRIDS = {
    "kfac": [{"damping": d} for d in (1.5, 15.0, 150.0, 1000.0)],
    "kfac-sub": [{"damping": d} for d in (1.5, 15.0, 150.0, 1000.0)],
    "foof": [{"lr": lr, "damping": 1.0} for lr in (3e-4, 1e-3, 3e-3, 1e-2)],
    "sgd": [{"lr": lr} for lr in (3e-4, 1e-3, 3e-3, 1e-2)],
    "adam": [{"lr": lr} for lr in (1e-4, 3e-4, 1e-3, 3e-3)],
    "kfac-jax": [{"damping": d} for d in (1.5, 15.0, 150.0, 1000.0)],
}

DEFAULTS = {"steps": 60, "seeds": 1, "batch_size": 100, "train_size": 5000, "eval_size": 1000, "eval_every": 10,
            "tune_steps": 0}

FULL = {"train_size": 20000, "eval_size": 1000, "batch_size": 250, "steps": 2000, "seeds": 2, "tune_steps": 200,
        "eval_every": 25, "stop_at_target": True}


def main(argv=None):
    args = kc.parse_study_args(kc.study_parser("qgeom kfac", __doc__, defaults=DEFAULTS, full=FULL), argv)
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    mnist = kc.study_mnist(args)
    x = mnist.x_train[: args.train_size]
    ev_tr, ev_te = x[: args.eval_size], mnist.x_test[: args.eval_size]
    data = {"train": (x, x), "eval_train": (ev_tr, ev_tr), "eval_test": (ev_te, ev_te)}
    out = kc.study_out(args.out or str(results_dir("kfac_autoencoder")), args.fresh)
    print(f"MNIST autoencoder: {args.train_size} images, batch {args.batch_size}, {args.steps} steps, "
          f"{args.seeds} seed(s), methods {args.methods}, tuning {args.tune_steps} steps/grid point")
    res = kc.run_study(kc.autoencoder_problem(), data, methods=args.methods, grids={m: GRIDS[m] for m in args.methods},
                       seeds=args.seeds, steps=args.steps, tune_steps=args.tune_steps, batch_size=args.batch_size,
                       eval_every=args.eval_every, out_dir=out, progress=not args.no_progress,
                       error_label="test reconstruction error (squared, per image)", target_horizon=args.steps,
                       stop_at_target=args.stop_at_target, title="MNIST deep autoencoder", settings=vars(args))
    print()
    kc.print_study(res, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
