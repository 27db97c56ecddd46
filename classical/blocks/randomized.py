"""Randomized K-FAC's block, RS-KFAC (Puiu, "Randomized K-FACs: speeding up K-FAC with
randomized numerical linear algebra", IDEAL 2022, arXiv:2206.15397).

The factors A = E[ā āᵀ], G = E[g gᵀ] are K-FAC's EMAs; their spectra decay fast (the paper
proves the EMA factors' must), so at each refresh every factor X ∈ {A, G} of dimension d is
replaced by a rank-r randomized eigendecomposition X ≈ U D Uᵀ instead of a dense O(d³)
``eigh``/Cholesky: a Gaussian range finder with ``power_iters`` subspace iterations and
``oversample`` extra columns, then the stable Nyström approximant (``qgeom.metrics.nystrom``,
Halko–Martinsson–Tropp 2011 and Tropp et al. 2017), O(d² (r + p)(q + 2)) work. The truncated
complement is treated as the paper does, as zero eigenvalues damped like the rest:

    (U D Uᵀ + γ I)⁻¹ = U [(D + γ)⁻¹ − γ⁻¹] Uᵀ + I/γ,
    ΔW = (A_r + γ_A I)⁻¹ ∇W (G_r + γ_G I)⁻¹,

applied in O(d_A d_G r) per step. The damping split is K-FAC's factored Tikhonov
(γ_A, γ_G) = (π√λ, √λ/π), π² = (tr A/dim A)/(tr G/dim G) (traces of the full factors), so at
r = d the block is K-FAC's ``KroneckerBlock(inverse="tikhonov")``; ``relative_damping=True``
uses the paper's λ_eff = λ·max(D) for each factor instead.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from classical.blocks.base import F32, CurvatureBlock, LayerBatch, ema, input_factor, output_factor
from qgeom.metrics.kronecker import KroneckerFactored, factored_damping
from qgeom.metrics.lowrank import nystrom


def lowrank_eigh(x, rank, key, power_iters, oversample):
    """(U, D): a rank-min(r, d) Nyström eigendecomposition of the PSD matrix ``x``."""
    d = x.shape[0]
    approx = nystrom(lambda v: x @ v, jnp.zeros((d,), x.dtype), min(rank, d), key, power_iters,
                     min(oversample, d - min(rank, d)))
    return approx.U, approx.s


def lowrank_damped_solve(u, d, gamma, v):
    """(U diag(d) Uᵀ + γ I)⁻¹ V = U [(d + γ)⁻¹ − γ⁻¹] Uᵀ V + V/γ for a matrix V (columns)."""
    return u @ ((1.0 / (d + gamma) - 1.0 / gamma)[:, None] * (u.T @ v)) + v / gamma


@dataclasses.dataclass(frozen=True)
class RandomizedKroneckerBlock(CurvatureBlock):
    """A ⊗ G with rank-``rank`` randomized factor eigendecompositions at every refresh."""

    rank: int = 220
    oversample: int = 10
    power_iters: int = 3
    relative_damping: bool = False
    seed: int = 0

    def __post_init__(self):
        for name in ("rank", "oversample", "power_iters"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (1 if name == "rank" else 0):
                raise ValueError(f"{name} must be an integer >= {1 if name == 'rank' else 0}, got {v!r}")

    def init(self):
        return {"A": jnp.eye(self.shape[0], dtype=F32), "G": jnp.eye(self.shape[1], dtype=F32),
                "key": jax.random.PRNGKey(self.seed)}

    def update(self, stats, batch: LayerBatch, decay):
        new = ema({"A": stats["A"], "G": stats["G"]},
                  {"A": input_factor(batch.inputs), "G": output_factor(batch.preact_grads)}, decay)
        return {**stats, **new}

    def metric(self, stats):
        """K-FAC's A ⊗ G, which the randomized inverse approximates."""
        return KroneckerFactored(stats["A"], stats["G"])

    def refresh(self, stats, damping):
        key, k_a, k_g = jax.random.split(stats["key"], 3)
        u_a, d_a = lowrank_eigh(stats["A"], self.rank, k_a, self.power_iters, self.oversample)
        u_g, d_g = lowrank_eigh(stats["G"], self.rank, k_g, self.power_iters, self.oversample)
        if self.relative_damping:
            g_a, g_g = damping * jnp.max(d_a), damping * jnp.max(d_g)
        else:
            g_a, g_g = factored_damping(stats["A"], stats["G"], damping)
        return {**stats, "key": key}, {"U_A": u_a, "D_A": d_a, "gamma_A": g_a, "U_G": u_g, "D_G": d_g,
                                       "gamma_G": g_g}

    def apply_inverse(self, stats, cache, grad, damping):
        left = lowrank_damped_solve(cache["U_A"], cache["D_A"], cache["gamma_A"], grad)
        return lowrank_damped_solve(cache["U_G"], cache["D_G"], cache["gamma_G"], left.T).T
