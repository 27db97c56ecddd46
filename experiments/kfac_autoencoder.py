"""The K-FAC paper's MNIST deep-autoencoder benchmark: K-FAC, FOOF, SGD, Adam, kfac-jax and the K-FAC family.

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

When named (``--methods``) and in ``--full``, the K-FAC family and the gradient-only
preconditioners (``experiments.classical_family``): ``ekfac``, ``kfac-tridiag``, ``rs-kfac``
(adaptive like ``kfac``, damping grid with the paper's 150 in the middle), ``kld-wrm`` (fixed
lr, momentum 0.9, damping from the paper's 150 adapted by LM — its authors' 1e-2 made the
untuned run diverge here; their lr 0.01·(1 − 0.9) = 1e-3 is a grid point; ``kld-wrm-puiu``: the
decay ρ = 0.33 and no momentum of Puiu's own CNN runs, same lr grid), ``tnt`` (fixed lr, momentum 0.9, inverses every 20, EMA 0.9; the middle point is the
authors' lr 1e-4, ε 0.1 at batch 1000 in our units), ``mbf`` (fixed lr, momentum 0.9,
damping 1, mini-blocks of 16 rows; the paper's settings were not available), ``hessian-free``
(damping grid around the module's 1, at most 50 CG iterations per step), ``shampoo``,
``soap`` (its reference lr 3e-3 in the middle), ``mfac`` (a window of 32 gradients; its
step along a window gradient g is m·g/‖g‖², so with this summed-pixel loss the authors' lr 1e-3
barely moves (549.17 → 549.08 in 15 steps); the grid sits around 1).

Every method gets the same tuning budget: the four grid points of its ``METHODS`` entry (initial
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

from experiments import classical_family as cf
from experiments import classical_methods as cm
from experiments import classical_study as cs
from experiments.classical_problems import autoencoder_problem
from experiments.harness import MethodSpec, Registry
from experiments.harness.cli import Study


def _grid(name, values, **fixed):
    return tuple({name: v, **fixed} for v in values)


DAMPINGS = (1.5, 15.0, 150.0, 1000.0)
# TNT: the authors' lr 1e-4, ε 0.1 at batch 1000 are (0.1, 3.16) in our units (classical_family.tnt_units)
TNT_FIXED = dict(momentum=0.9, damping=3.16, adapt_damping=False, inverse_period=20, ema=0.9)
METHODS = Registry(
    MethodSpec("kfac", "K-FAC", cm.kfac, _grid("damping", DAMPINGS)),
    MethodSpec("kfac-sub", "K-FAC, curvature on ¼ batch", cm.kfac_sub, _grid("damping", DAMPINGS)),
    MethodSpec("foof", "FOOF", cm.foof, _grid("lr", (3e-4, 1e-3, 3e-3, 1e-2), damping=1.0)),
    MethodSpec("sgd", "SGD, Sutskever", cm.sgd, _grid("lr", (3e-4, 1e-3, 3e-3, 1e-2))),
    MethodSpec("adam", "Adam", cm.adam, _grid("lr", (1e-4, 3e-4, 1e-3, 3e-3))),
    MethodSpec("kfac-jax", "kfac-jax", cm.kfac_jax, _grid("damping", DAMPINGS), requires="kfac_jax"),
    MethodSpec("kld-wrm-puiu", "SO-KLD-WRM, Puiu's ρ 0.33, no momentum", cf.kld_wrm,
               _grid("lr", (1e-3, 3e-3, 0.01, 0.03), ema=0.33, momentum=0.0, damping=150.0)),
    *cf.family_specs({
        "ekfac": _grid("damping", DAMPINGS), "kfac-tridiag": _grid("damping", DAMPINGS),
        "rs-kfac": _grid("damping", DAMPINGS),
        "kld-wrm": _grid("lr", (1e-3, 3e-3, 0.01, 0.03), momentum=0.9, damping=150.0),
        "tnt": _grid("lr", (0.01, 0.03, 0.1, 0.3), **TNT_FIXED),
        "mbf": _grid("lr", (1e-3, 3e-3, 0.01, 0.03), momentum=0.9, damping=1.0, adapt_damping=False),
        "hessian-free": _grid("damping", (0.01, 0.1, 1.0, 10.0), cg_maxiter=50),
        "shampoo": _grid("lr", (3e-4, 1e-3, 3e-3, 1e-2)), "soap": _grid("lr", (3e-4, 1e-3, 3e-3, 1e-2)),
        "mfac": _grid("lr", (0.1, 0.3, 1.0, 3.0), num_grads=32)}),
)
BASE = ["kfac", "kfac-sub", "foof", "sgd", "adam", "kfac-jax"]  # the quick default (`make run`)

DEFAULT = {"methods": BASE, "steps": 60, "seeds": 1, "first_seed": 0, "batch_size": 100, "train_size": 5000,
           "eval_size": 1000, "eval_every": 10, "tune_steps": 0, "stop_at_target": False}
FULL = dict(DEFAULT, methods=[m for m in METHODS if m != "kld-wrm-puiu"], train_size=20000, batch_size=250, steps=2000, seeds=2, tune_steps=200, eval_every=25,
            stop_at_target=True)


def run_study(config: dict, outdir, *, fresh: bool = False, progress: bool = True, registry: Registry = METHODS):
    """The study of ``config`` (keys of ``DEFAULT``) into ``outdir``; returns the results dict."""
    config, data = cs.autoencoder_setup(config, registry, "MNIST autoencoder")
    return cs.run_study(autoencoder_problem(), registry, data, config, outdir, progress=progress, fresh=fresh,
                        error_label="test reconstruction error (squared, per image)", title="MNIST deep autoencoder")


STUDY = Study("kfac", __doc__, run_study, DEFAULT, FULL, cs.flags, cs.report, summary_file="results.json",
              results="kfac_autoencoder")
main = STUDY.main


if __name__ == "__main__":
    raise SystemExit(main())
