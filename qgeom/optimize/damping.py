"""The damping rules shared by every optimizer in qgeom and classical (both worlds).

* ``levenberg_marquardt(λ, ρ, decay)`` — Martens & Grosse 2015 §6.5 (and Moré's classic
  trust-region rule): with the reduction ratio ρ = (h(θ + δ) − h(θ)) / (M(δ) − M(0)) of the
  actual to the quadratic-model change,

      ρ > 3/4 → λ ← decay·λ,   ρ < 1/4 → λ ← λ/decay,   otherwise (or ρ not finite) λ unchanged,

  ``decay`` ∈ (0, 1) (K-FAC: (19/20)^T₁ for an adaptation every T₁ steps).
* ``reduction_ratio(actual, predicted)`` — ρ, guarded against a non-negative prediction.
* ``rejected_damping(λ, factor)`` — a rejected step (non-finite loss, gradient or update, or a
  loss that rose) multiplies the damping: λ ← min(factor · max(λ, floor), ceiling).
* ``all_finite(*trees)`` — the check that decides rejection.

The functions are pure ``jax.numpy`` (traceable, usable in ``jit``) and also accept Python
floats (the PennyLane optimizers keep their damping as a float).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def levenberg_marquardt(damping, rho, decay, lower=0.25, upper=0.75):
    """λ·decay if ρ > ``upper``, λ/decay if ρ < ``lower``, else λ; a non-finite ρ leaves λ."""
    new = jnp.where(rho > upper, damping * decay, jnp.where(rho < lower, damping / decay, damping))
    return jnp.where(jnp.isfinite(rho), new, damping)


def reduction_ratio(actual, predicted):
    """ρ = actual / predicted change; a predicted change ≥ 0 (no model decrease) counts as −1e-300."""
    return actual / jnp.minimum(predicted, -1e-300)


def rejected_damping(damping, factor=10.0, floor=0.0, ceiling=jnp.inf):
    """Damping after a rejected step: min(factor · max(λ, floor), ceiling)."""
    return jnp.minimum(factor * jnp.maximum(damping, floor), ceiling)


def all_finite(*trees):
    """True (a JAX bool) iff every leaf of every tree is finite; True for no leaves."""
    leaves = [jnp.all(jnp.isfinite(x)) for t in trees for x in jax.tree_util.tree_leaves(t)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
