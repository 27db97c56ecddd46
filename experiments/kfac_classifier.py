"""MNIST classifiers trained with K-FAC, FOOF, SGD, Adam, kfac-jax and the K-FAC family: an MLP and a small conv net.

* ``mlp``  — 784-1000-500-10, tanh, softmax cross-entropy, ℓ2 1e-5;
* ``conv`` — conv 3×3/2 (16) → conv 3×3/2 (32) → dense 128 → 10, relu (our K-FAC treats
  the convolutions as KFC patch layers; kfac-jax registers them automatically);
* ``puiu-cnn`` — Puiu's KLD-WRM MNIST CNN (``puiu_cnn_problem``), for his claim (K-FAC 97.45 %
  vs SO-KLD-WRM 97.82 % test accuracy after 50 epochs, single runs): run ``kfac-puiu`` (K-FAC at
  his settings: lr 0.01, momentum 0, damping 1e-2, decay 0.95, inverses every 30) against
  ``kld-wrm`` (its middle grid point is his setting, decay 0.33) at batch 512, no tuning.

Also, when named (``--methods``) and in ``--full``: ``ekfac``, ``kfac-tridiag``, ``rs-kfac``,
``kld-wrm``, ``tnt``, ``mbf``, ``hessian-free``, ``shampoo``, ``soap``, ``mfac``
(``experiments.classical_family``; grids in ``METHODS``, the middle point without tuning).
KLD-WRM uses the authors' MNIST-classifier notebook settings (lr 0.01 as the middle point,
momentum 0, damping 1e-2, statistics decay 0.33, inverses every 30 steps). ``kfac-tridiag``
refuses the conv model (its cross-layer statistics need dense layers) and is skipped there
with a note; every other method runs on both models (MBF cuts conv kernels per channel pair).

Same protocol as the autoencoder study (``experiments.classical_study``): equal tuning
budget (three grid points per method on seed 0, ranked by training loss), several
seeds, training loss and test error (1 − accuracy) versus steps and wall time,
``results/kfac_classifier/<model>/{results.json,summary.md,curves.png}``, resumable
checkpoints.

    qgeom kfac-classifier                       # quick: both models, 10k images, 60 steps
    qgeom kfac-classifier --full --models mlp   # 60k images, batch 1000, 1000 steps, 3 seeds, tuning
"""

from __future__ import annotations

import warnings
from pathlib import Path

from classical import models
from experiments import classical_family as cf
from experiments import classical_methods as cm
from experiments import classical_study as cs
from experiments.classical_problems import Problem, conv_classifier_problem, mlp_classifier_problem
from experiments.harness import MethodSpec, Registry
from experiments.harness.cli import Study


def puiu_cnn_problem(l2=1e-3) -> Problem:
    """Puiu's MNIST CNN (ConstantinPuiu/Rethinking-EA-of-the-Fisher notebooks): conv 5×5 (5) → pool 2 →
    conv 5×5 (7) → pool 2 → dense 30 → 10, relu, weight decay 1e-3. Differences: average pooling
    after the relu (ours has no max-pooling) and no dropout (his Dropout2d and dropout)."""
    layers = [models.Conv2D(5, (5, 5), (1, 1), "VALID", "relu"), models.AvgPool2D((2, 2)),
              models.Conv2D(7, (5, 5), (1, 1), "VALID", "relu"), models.AvgPool2D((2, 2)), models.Flatten(),
              models.Dense(30, "relu"), models.Dense(10, "linear")]
    return Problem("puiu-cnn", models.Network(layers, (28, 28, 1), "categorical"), l2)


PROBLEMS = {"mlp": mlp_classifier_problem, "conv": conv_classifier_problem, "puiu-cnn": puiu_cnn_problem}
PUIU = dict(momentum=0.0, damping=0.01, adapt_damping=False, inverse_period=30)  # his K-FAC / KLD-WRM settings


def _grid(name, values, **fixed):
    return tuple({name: v, **fixed} for v in values)


DAMPINGS = (0.01, 0.1, 1.0)
METHODS = Registry(
    MethodSpec("kfac", "K-FAC", cm.kfac, _grid("damping", DAMPINGS)),
    MethodSpec("kfac-sub", "K-FAC, curvature on ¼ batch", cm.kfac_sub, _grid("damping", DAMPINGS)),
    MethodSpec("foof", "FOOF", cm.foof, _grid("lr", (0.03, 0.1, 0.3), damping=0.1)),
    MethodSpec("sgd", "SGD, Sutskever", cm.sgd, _grid("lr", (0.03, 0.1, 0.3))),
    MethodSpec("adam", "Adam", cm.adam, _grid("lr", (3e-4, 1e-3, 3e-3))),
    MethodSpec("kfac-jax", "kfac-jax", cm.kfac_jax, _grid("damping", DAMPINGS), requires="kfac_jax"),
    MethodSpec("kfac-puiu", "K-FAC, Puiu's settings", cm.kfac, _grid("lr", (3e-3, 0.01, 0.03), ema=0.95, **PUIU)),
    *cf.family_specs({
        "ekfac": _grid("damping", DAMPINGS), "kfac-tridiag": _grid("damping", DAMPINGS),
        "rs-kfac": _grid("damping", DAMPINGS),
        "kld-wrm": _grid("lr", (3e-3, 0.01, 0.03), ema=0.33, **PUIU),
        "tnt": _grid("lr", (0.01, 0.03, 0.1), momentum=0.9, damping=1.0, adapt_damping=False, inverse_period=20,
                     ema=0.9),
        "mbf": _grid("lr", (0.01, 0.03, 0.1), momentum=0.9, damping=1.0, adapt_damping=False),
        "hessian-free": _grid("damping", (0.1, 1.0, 10.0), cg_maxiter=50),
        "shampoo": _grid("lr", (3e-3, 0.01, 0.03)), "soap": _grid("lr", (1e-3, 3e-3, 0.01)),
        "mfac": _grid("lr", (1e-3, 0.01, 0.1), num_grads=32)}),
)
BASE = ["kfac", "kfac-sub", "foof", "sgd", "adam", "kfac-jax"]  # the quick default

DEFAULT = {"methods": BASE, "models": ["mlp", "conv"], "steps": 60, "seeds": 1, "first_seed": 0, "batch_size": 128,
           "train_size": 10000, "eval_size": 2000, "eval_every": 10, "tune_steps": 0, "stop_at_target": False}
FULL = dict(DEFAULT, methods=[m for m in METHODS if m != "kfac-puiu"], train_size=60000, eval_size=10000, batch_size=1000, steps=1000, seeds=3,
            tune_steps=200, eval_every=50)


def run_study(config: dict, outdir, *, fresh: bool = False, progress: bool = True, registry: Registry = METHODS):
    """Every model of ``config["models"]`` into ``outdir/<model>``; returns ``{"models": {...}, "table"}``."""
    config = cs.check_config(config, registry)
    models = [m for group in config["models"] for m in group.split(",") if m]
    bad = [m for m in models if m not in PROBLEMS]
    if bad or not models:
        raise ValueError(f"unknown models {bad}; choose from {sorted(PROBLEMS)}")
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    mnist = cs.mnist(config)
    out, k = {}, config["eval_size"]
    for model in models:
        refused = [m for m in config["methods"] if model != "mlp" and m in cf.REFUSES_CONV]
        for m in refused:
            print(f"{m} skipped on the conv model: {cf.REFUSES_CONV[m]}")
        kept = dict(config, methods=[m for m in config["methods"] if m not in refused])
        if not kept["methods"]:
            continue
        shape = (-1, 784) if model == "mlp" else (-1, 28, 28, 1)
        x, y = mnist.x_train[: config["train_size"]].reshape(shape), mnist.y_train[: config["train_size"]]
        data = {"train": (x, y), "eval_train": (x[:k], y[:k]),
                "eval_test": (mnist.x_test[:k].reshape(shape), mnist.y_test[:k])}
        print(f"MNIST {model} classifier: {config['train_size']} images, batch {config['batch_size']}, "
              f"{config['steps']} steps, {config['seeds']} seed(s), methods {kept['methods']}, "
              f"tuning {config['tune_steps']} steps/grid point")
        out[model] = cs.run_study(PROBLEMS[model](), registry, data, kept, Path(outdir) / model, progress=progress,
                                  fresh=fresh, error_label="test error (1 - accuracy)",
                                  title=f"MNIST {model} classifier")
    return {"models": out, "table": "\n\n".join(f"{m}:\n{r['table']}" for m, r in out.items())}


def _flags(parser) -> None:
    cs.flags(parser)
    parser.add_argument("--models", nargs="+", help="subset of mlp conv (space- or comma-separated)")


def _report(summary) -> list[str]:
    return [line for r in summary["models"].values() for line in cs.report(r)]


STUDY = Study("kfac-classifier", __doc__, run_study, DEFAULT, FULL, _flags, _report, results="kfac_classifier")
main = STUDY.main


if __name__ == "__main__":
    raise SystemExit(main())
