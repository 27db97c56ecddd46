"""Learning rate and momentum from a stochastic-Lanczos-quadrature spectrum.

Granziol, Zohren & Roberts (JMLR 2022) propose to set SGD's learning rate and momentum on the
fly from an SLQ estimate of the batch Hessian's spectrum, using the optimal values of the
heavy-ball method on a quadratic (Polyak 1964): on eigenvalues in [λ_lo, λ_hi],

    α = 4 / (√λ_hi + √λ_lo)²,   ρ = ((√κ − 1) / (√κ + 1))²,   κ = λ_hi / λ_lo,

the update v ← ρv + g, θ ← θ − αv then contracts every mode by √ρ per step. What we follow
(the paper's text of the learner was not available offline; its released code contains a
Lanczos–Newton optimizer, not this learner): λ_hi is the largest Ritz value over the probes
(Lanczos resolves the outliers first); λ_lo is the mean positive curvature of the SLQ density,
mean over probes of Σ_j τ_j max(θ_j, 0) ≈ tr(H₊)/P — the smallest eigenvalue of an
over-parameterized net is ≈ 0 or negative and would send ρ to 1, so the bulk's mean stands in
as the effective lower edge. ρ is capped at ``max_momentum``.
"""

from __future__ import annotations

import jax.numpy as jnp

from qgeom.spectral.lanczos import slq


def heavy_ball_from_spectrum(nodes, weights, max_momentum=0.99):
    """(α, ρ, diagnostics) from SLQ ``nodes``/``weights`` of shape (probes, steps).

    Returns a dict with ``learning_rate`` α, ``momentum`` ρ (≤ ``max_momentum``),
    ``lambda_max`` λ_hi, ``lambda_low`` λ_lo and ``kappa``; α is NaN when no Ritz value is
    positive (no curvature to set a step from)."""
    nodes, weights = jnp.asarray(nodes), jnp.asarray(weights)
    hi = jnp.max(nodes)
    lo = jnp.mean(jnp.sum(weights * jnp.maximum(nodes, 0.0), axis=-1))
    lo = jnp.clip(lo, jnp.finfo(nodes.dtype).tiny, None)
    ok = hi > 0
    hi = jnp.where(ok, hi, jnp.nan)
    kappa = jnp.maximum(hi / lo, 1.0)
    root = jnp.sqrt(kappa)
    rho = jnp.minimum(((root - 1) / (root + 1)) ** 2, max_momentum)
    return {"learning_rate": 4.0 / (jnp.sqrt(hi) + jnp.sqrt(lo)) ** 2, "momentum": rho,
            "lambda_max": hi, "lambda_low": lo, "kappa": kappa}


def slq_hyperparameters(mv, dim, key, num_probes, num_steps, max_momentum=0.99, dtype=None):
    """``heavy_ball_from_spectrum`` of ``slq(mv, dim, key, num_probes, num_steps)`` (jit-able)."""
    if not 0 <= max_momentum < 1:
        raise ValueError(f"max_momentum must lie in [0, 1), got {max_momentum!r}")
    nodes, weights = slq(mv, dim, key, num_probes, num_steps, dtype=dtype)
    return heavy_ball_from_spectrum(nodes, weights, max_momentum)
