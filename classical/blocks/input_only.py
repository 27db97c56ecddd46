"""FOOF's block: the input factor only (Benzing 2022, "Gradient descent on neurons",
arXiv:2202.00329).

With A = E[ā āᵀ] (EMA, as K-FAC's) the step is

    ΔW = −η (A + λI)⁻¹ ∇W        (our layout W: (d_in + 1, d_out); the paper's ∇W (A + λI)⁻¹),

each output neuron's weight vector taking the least-squares step that moves its
pre-activations along the negative gradient. No backward pass with sampled targets is needed
(``needs_preact_grads = False``). As a metric this is A ⊗ I: (A ⊗ I + λI)⁻¹ = (A + λI)⁻¹ ⊗ I
is exactly the preconditioner — the geometry FOOF descends in, not a Fisher approximation.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from classical.blocks.base import F32, CurvatureBlock, LayerBatch, ema, input_factor
from qgeom.metrics.kronecker import KroneckerFactored, KroneckerInverse, psd_inverse


@dataclasses.dataclass(frozen=True)
class InputOnlyBlock(CurvatureBlock):
    """A ⊗ I with plain damping: cache (A + λI)⁻¹ (Cholesky), apply (A + λI)⁻¹ ∇W."""

    needs_preact_grads = False

    def init(self):
        return {"A": jnp.eye(self.shape[0], dtype=F32)}

    def update(self, stats, batch: LayerBatch, decay):
        return ema(stats, {"A": input_factor(batch.inputs)}, decay)

    def metric(self, stats):
        return KroneckerFactored(stats["A"], jnp.eye(self.shape[1], dtype=F32), mode="eigen")

    def refresh(self, stats, damping):
        a = stats["A"]
        return stats, KroneckerInverse(psd_inverse(a + damping * jnp.eye(a.shape[0], dtype=F32)))

    def apply_inverse(self, stats, cache, grad, damping):
        return cache.apply(grad)
