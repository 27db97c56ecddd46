"""Optimizers for QHBMs and mixed states, all in optax's extra-args shape.

* ``qpngd(model, lr, ...)`` — BKM natural gradient (exact block-diagonal QHBM metric), with
  the authors' damping or amortized curvature (refresh every k steps, LM-adapted damping);
* ``qpmd(model, lr, alpha, inner_steps, inner_lr)`` — quantum-probabilistic mirror descent;
* ``qng(model, lr)`` — Fubini–Study QNG on the circuit part; ``gd``, ``adam`` — optax baselines;
* ``natural_gradient(metric_fn, lr)`` / ``mirror_descent(divergence, ...)`` — the general forms;
* ``fit(loss, params, optimizer, steps)`` — jitted loop recording loss, wall time, gradient
  evaluations, stopping on non-finite values;
* ``BKMNaturalGradientOptimizer``, ``MirrorDescentOptimizer`` — PennyLane-shaped
  (``step`` / ``step_and_cost`` with ``rho_fn=qnode``) for density matrices of any origin;
* ``qgeom.optimize.damping`` — the Levenberg–Marquardt and step-rejection rules shared with
  ``classical``'s K-FAC family;
* ``qgeom.optimize.sequence`` — warm- vs cold-start sequences (imaginary / real time).
"""

from qgeom.optimize.baselines import adam, gd
from qgeom.optimize.damping import (
    all_finite,
    levenberg_marquardt,
    reduction_ratio,
    rejected_damping,
)
from qgeom.optimize.mirror import (
    Divergence,
    MirrorDescentState,
    density_divergence,
    mirror_descent,
    qhbm_divergence,
    qpmd,
    trace_rho_log_rho,
)
from qgeom.optimize.natural import (
    EighMetric,
    NaturalGradientState,
    natural_gradient,
    qng,
    qpngd,
)
from qgeom.optimize.pennylane import BKMNaturalGradientOptimizer, MirrorDescentOptimizer
from qgeom.optimize.runner import FitResult, fit, make_step

__all__ = [
    "qpngd",
    "qpmd",
    "qng",
    "gd",
    "adam",
    "natural_gradient",
    "mirror_descent",
    "Divergence",
    "qhbm_divergence",
    "density_divergence",
    "trace_rho_log_rho",
    "EighMetric",
    "levenberg_marquardt",
    "reduction_ratio",
    "rejected_damping",
    "all_finite",
    "NaturalGradientState",
    "MirrorDescentState",
    "fit",
    "make_step",
    "FitResult",
    "BKMNaturalGradientOptimizer",
    "MirrorDescentOptimizer",
]
