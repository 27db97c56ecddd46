"""K-FAC's block: F_W ≈ A ⊗ G (Martens & Grosse 2015, arXiv:1503.05671; KFC for conv layers).

    A = E[ā āᵀ]  (summed over the T shared positions of a conv layer),
    G = E[g gᵀ]  (averaged over positions),

each an exponential moving average. The damped inverse of the block (total damping λ):

* ``inverse="tikhonov"`` (§6.3): (A + π√λ I)⁻¹ ⊗ (G + √λ/π I)⁻¹ with
  π² = (tr A / dim A)/(tr G / dim G), both factors inverted by Cholesky at refresh
  (``KroneckerFactored.inverse``), so ΔW = (A + γ_A I)⁻¹ ∇W (G + γ_G I)⁻¹;
* ``inverse="eigen"``: the exact (A ⊗ G + λI)⁻¹ from the cached eigenbases
  (``KroneckerFactored.factorize()`` → ``KroneckerEigenbasis``, S = α γᵀ), valid at any λ.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from classical.blocks.base import F32, CurvatureBlock, LayerBatch, ema, input_factor, output_factor
from qgeom.metrics.kronecker import KroneckerFactored


@dataclasses.dataclass(frozen=True)
class KroneckerBlock(CurvatureBlock):
    """A ⊗ G with factored-Tikhonov (``"tikhonov"``) or exact eigenbasis (``"eigen"``) inverse."""

    inverse: str = "tikhonov"

    def __post_init__(self):
        if self.inverse not in ("tikhonov", "eigen"):
            raise ValueError(f"inverse must be 'tikhonov' or 'eigen', got {self.inverse!r}")

    def init(self):
        return {"A": jnp.eye(self.shape[0], dtype=F32), "G": jnp.eye(self.shape[1], dtype=F32)}

    def update(self, stats, batch: LayerBatch, decay):
        new = {"A": input_factor(batch.inputs), "G": output_factor(batch.preact_grads)}
        return ema(stats, new, decay)

    def metric(self, stats):
        return KroneckerFactored(stats["A"], stats["G"], mode=self.inverse)

    def refresh(self, stats, damping):
        m = self.metric(stats)
        return stats, (m.inverse(damping) if self.inverse == "tikhonov" else m.factorize())

    def apply_inverse(self, stats, cache, grad, damping):
        return cache.apply(grad) if self.inverse == "tikhonov" else cache.solve(grad, damping)
