"""FOOF: "gradient descent on neurons" (Benzing 2022, arXiv:2202.00329).

Only K-FAC's input factor is kept: with A = E[ā āᵀ] (EMA as in ``classical.kfac``),

    ΔW = −η (A + λI)⁻¹ ∇W        (our layout W: (d_in + 1, d_out); the paper's ∇W (A + λI)⁻¹),

i.e. each output neuron's weight vector takes the least-squares step that moves its
pre-activations along the negative gradient. No backward pass with sampled targets is
needed. Heavy-ball momentum δ = ΔW + μ δ₀ and the inverse period T are shared with K-FAC:
FOOF is ``KFAC`` with ``classical.blocks.InputOnlyBlock`` on every layer, and ``metric()``
is the geometry it descends in, ⊕ A ⊗ I.
"""

from __future__ import annotations

from classical.blocks.input_only import InputOnlyBlock
from classical.kfac import KFAC


class FOOF(KFAC):
    """FOOF optimizer: ``KFAC`` with the A factor only and plain damping (A + λI)⁻¹.

    Args: ``model``, ``learning_rate`` (> 0), ``momentum`` (default 0.9), ``damping`` λ
    (> 0, fixed unless ``adapt_damping``), and K-FAC's ``l2_reg``, ``inverse_period``,
    ``stats_period``, ``ema_decay``, ``adapt_damping``, ``damping_interval``, ``damping_decay``,
    ``reject_damping_factor``.
    """

    def __init__(self, model, *, learning_rate, momentum=0.9, damping=1.0, adapt_damping=False, **settings):
        for bad in ("inverse", "estimator", "blocks"):
            if bad in settings:
                raise ValueError(f"FOOF has no {bad!r} setting")
        super().__init__(model, learning_rate=learning_rate, momentum=momentum, damping=damping,
                         adapt_damping=adapt_damping, blocks=InputOnlyBlock, **settings)


def foof(model, **settings):
    """FOOF as an optax transformation: ``update(grads, state, params, batch=(x, y))``."""
    return FOOF(model, **settings).gradient_transformation()
