"""TNT's block: tensor-normal training (Ren & Goldfarb, NeurIPS 2021, arXiv 2106.02925).

The sampled-target (true Fisher) gradient of a layer, here the matrix ∇W of shape
(d_in + 1, d_out) with the bias as last row (kfac-jax's ``DenseTNT`` convention: bias folded
into x̄), is modelled as tensor-normal, so F_W ≈ c · U_1 ⊗ U_2 with U_i the expected
contraction of the gradient with itself over every axis but i:

* ``form="minibatch"`` (what the authors' code and kfac-jax's ``NaiveTNT`` compute): from the
  mini-batch's summed gradient Ḡ = Σ_n ∇W_n, U_i = contract(Ḡ, Ḡ, all but i) / N;
* ``form="per_example"`` (kfac-jax's ``DenseTNT``): U_i = (1/N) Σ_n contract(∇W_n, ∇W_n, all but i);
  for a dense layer (∇W_n = ā_n g_nᵀ) U_1 = (1/N) Σ ‖g_n‖² ā_n ā_nᵀ, U_2 = (1/N) Σ ‖ā_n‖² g_n g_nᵀ;
  for a conv layer the per-example gradient sums over positions first (exact per-example
  contraction, not kfac-jax ``Conv2DTNT``'s per-location weighting).

Both are unbiased for E_n[contract(∇W_n, ∇W_n)] when the targets are sampled (kfac-jax's
factors are these divided by N: it scales per-example gradients by 1/√N). Statistics are EMAs.

Refresh, the authors' "same-trace" normalisation for an order-k gradient (k = 2 here), with
n_i the factor sizes and t the geometric mean of tr U_i (all equal for these estimators):

    c = (t / Π n_j)^{1/k},   Ũ_i = U_i / (c^{k−1} Π_{j≠i} n_j),   so Ũ_1 ⊗ Ũ_2 = U_1 ⊗ U_2 / t

(= kfac-jax's ``tnt_scale`` · U_1 ⊗ U_2), and the step is ΔW = (Ũ_1 + εI)⁻¹ ∇W (Ũ_2 + εI)⁻¹
with ε the total damping added to each normalised factor (the authors' damping; their code
forms U from the batch-*mean* gradient, 1/N of ``"minibatch"``'s, so their ε corresponds to
ε·√N here). ``metric()`` is Ũ_1 ⊗ Ũ_2.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from classical.blocks.base import F32, CurvatureBlock, LayerBatch, ema, gram
from qgeom.metrics.kronecker import KroneckerFactored, KroneckerInverse, psd_inverse

FORMS = ("minibatch", "per_example")


def tnt_factors(batch: LayerBatch, form: str):
    """(U_1, U_2) of one batch (see the module docstring)."""
    x, g = batch.homogeneous_inputs(), batch.preact_grads
    n, t = x.shape[:2]
    if form == "minibatch":
        total = jnp.einsum("nti,nto->io", x, g)
        return total @ total.T / n, total.T @ total / n
    if t == 1:
        x1, g1 = x[:, 0], g[:, 0]
        gn, xn = jnp.sum(g1 * g1, axis=1), jnp.sum(x1 * x1, axis=1)
        return gram(x1 * jnp.sqrt(gn)[:, None]) / n, gram(g1 * jnp.sqrt(xn)[:, None]) / n
    w = batch.per_example_grads()
    return jnp.einsum("nio,njo->ij", w, w) / n, jnp.einsum("nio,nip->op", w, w) / n


def normalized_factors(u1, u2):
    """The authors' same-trace normalisation (k = 2): Ũ_1 ⊗ Ũ_2 = U_1 ⊗ U_2 / √(tr U_1 tr U_2)."""
    n1, n2 = u1.shape[0], u2.shape[0]
    tr = jnp.sqrt(jnp.trace(u1) * jnp.trace(u2))
    c = jnp.sqrt(tr / (n1 * n2))
    safe = jnp.where(c > 0, c, 1.0)
    return u1 / (safe * n2), u2 / (safe * n1)


@dataclasses.dataclass(frozen=True)
class TNTBlock(CurvatureBlock):
    """F_W ≈ Ũ_1 ⊗ Ũ_2 (tensor-normal); cache (Ũ_1 + εI)⁻¹, (Ũ_2 + εI)⁻¹ by Cholesky."""

    form: str = "minibatch"

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"TNT form must be one of {FORMS}, got {self.form!r}")

    def init(self):
        """U_i = (Π_{j≠i} n_j) I: equal traces, Ũ_i = I."""
        a, b = self.shape
        return {"U1": b * jnp.eye(a, dtype=F32), "U2": a * jnp.eye(b, dtype=F32)}

    def update(self, stats, batch: LayerBatch, decay):
        u1, u2 = tnt_factors(batch, self.form)
        return ema(stats, {"U1": u1, "U2": u2}, decay)

    def metric(self, stats):
        return KroneckerFactored(*normalized_factors(stats["U1"], stats["U2"]), mode="eigen")

    def refresh(self, stats, damping):
        a, b = normalized_factors(stats["U1"], stats["U2"])
        inv = lambda m: psd_inverse(m + damping * jnp.eye(m.shape[0], dtype=m.dtype))
        return stats, KroneckerInverse(inv(a), inv(b))

    def apply_inverse(self, stats, cache, grad, damping):
        return cache.apply(grad)
