"""K-FAC's step-size rule (Martens & Grosse 2015, §7): the 2×2 quadratic model over δ = αΔ + μδ₀.

With C = F + (λ+η) I (exact Fisher products, ℓ2 coefficient η), the damped model
M(δ) = ½ δᵀCδ + ∇hᵀδ restricted to δ = αΔ + μδ₀ is

    M(α, μ) = ½ [α μ] [[ΔᵀCΔ, ΔᵀCδ₀], [δ₀ᵀCΔ, δ₀ᵀCδ₀]] [α μ]ᵀ + [∇hᵀΔ, ∇hᵀδ₀] [α μ]ᵀ,

minimised in closed form (both α, μ; or α alone for a fixed μ). ``undamped_change`` is
M₀(δ) − M₀(0) of the undamped model (F + ηI) used by the Levenberg–Marquardt ratio ρ (§6.5).
"""

from __future__ import annotations

import jax.numpy as jnp


def minimise_alpha_mu(m11, m12, m22, gd, g0, momentum=None, has_velocity=True):
    """argmin over (α, μ) of ½[α μ]M[α μ]ᵀ + gd·α + g0·μ with M = [[m11, m12], [m12, m22]];
    ``momentum`` fixes μ (then α = −(gd + μ m12)/m11). Without a previous step (``has_velocity``
    false) or with a singular M it falls back to α = −gd/m11, μ = 0."""
    if momentum is not None:
        mu = jnp.asarray(momentum, jnp.result_type(m11))
        return -(gd + mu * m12) / m11, mu
    det = m11 * m22 - m12 ** 2
    two = has_velocity & (det > 1e-12 * m11 * m22)
    safe = jnp.where(two, det, 1.0)
    alpha = jnp.where(two, (-gd * m22 + g0 * m12) / safe, -gd / m11)
    mu = jnp.where(two, (-g0 * m11 + gd * m12) / safe, 0.0)
    return alpha, mu


def undamped_change(alpha, mu, m11, m12, m22, gd, g0, lam, dd, d0, s00):
    """M₀(αΔ + μδ₀) − M₀(0): the damped entries less λ·(ΔᵀΔ, Δᵀδ₀, δ₀ᵀδ₀)."""
    return (0.5 * (alpha ** 2 * (m11 - lam * dd) + 2 * alpha * mu * (m12 - lam * d0) + mu ** 2 * (m22 - lam * s00))
            + alpha * gd + mu * g0)
