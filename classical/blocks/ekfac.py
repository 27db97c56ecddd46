"""EKFAC's block: K-FAC's eigenbasis with a re-fitted diagonal (George, Laurent, Bouthillier,
Ballas & Vincent, "Fast approximate natural gradient descent in a Kronecker-factored
eigenbasis", NeurIPS 2018, arXiv:1806.03884).

K-FAC's A ⊗ G = (Q_A ⊗ Q_G) diag(α ⊗ γ) (Q_A ⊗ Q_G)ᵀ with A = Q_A diag(α) Q_Aᵀ,
G = Q_G diag(γ) Q_Gᵀ. EKFAC keeps the Kronecker-factored eigenbasis (KFE) and replaces the
eigenvalues α_i γ_j by the second moments of the per-example gradients in that basis,

    S_ij = E_n[((Q_Aᵀ ∇W_n Q_G)_ij)²],    ∇W_n = Σ_t ā_{n,t} g_{n,t}ᵀ

(for a dense layer ∇W_n = ā_n g_nᵀ and S = E[(Q_Aᵀ ā)² ((Q_Gᵀ g)²)ᵀ] costs two small
products; a conv layer sums over its T positions before squaring). This diagonal is the
Frobenius-closest to the layer's exact Fisher block among all matrices diagonal in the KFE
(the paper's theorem), so EKFAC is never farther from it than K-FAC. The update is

    ΔW = Q_A [(Q_Aᵀ ∇W Q_G) / (S + λ)] Q_Gᵀ,

with A, G (EMAs) eigendecomposed at every refresh (every T steps) and S re-estimated by an
EMA at every statistics update. What S becomes when the basis changes (``s_at_refresh``):

* ``"batch"`` (default, the paper): Algorithm 1 runs ComputeEigenBasis(D) and then
  ComputeScalings(D) on the same mini-batch D, so right after a refresh S is the second
  moment of this step's per-example gradients in the new basis; the EMA restarts from it;
* ``"kfac"`` (the authors' code, Thrandis/EKFAC-pytorch ``_compute_kfe``): S ← the K-FAC
  eigenvalues α γᵀ of the new basis, i.e. EKFAC = K-FAC at the refresh;
* ``"project"``: S ← (P_Aᵀ Q_A)^∘2 S ((P_Gᵀ Q_G)^∘2)ᵀ (P the new bases), the diagonal in the new
  basis of the previous EKFAC matrix (its Frobenius projection).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from classical.blocks.base import F32, CurvatureBlock, LayerBatch, ema, input_factor, output_factor
from qgeom.metrics.factorization import KroneckerEigenbasis


def kfe_second_moment(batch: LayerBatch, q_a, q_g):
    """S = mean_n (Q_Aᵀ ∇W_n Q_G)^∘2 for the batch's per-example gradients (no EMA)."""
    a = batch.homogeneous_inputs() @ q_a  # (N, T, d_A)
    g = batch.preact_grads @ q_g  # (N, T, d_G)
    n, t = a.shape[:2]
    if t == 1:  # dense: (Q_Aᵀ ā gᵀ Q_G)² = (Q_Aᵀā)² ((Q_Gᵀg)²)ᵀ, never forming ∇W_n
        return (a[:, 0] ** 2).T @ (g[:, 0] ** 2) / n
    return jnp.mean(jnp.einsum("nti,nto->nio", a, g) ** 2, axis=0)


@dataclasses.dataclass(frozen=True)
class EKFACBlock(CurvatureBlock):
    """A, G (for the basis) and S (the KFE diagonal); the damped inverse is exact in the KFE.

    ``s_decay``: EMA decay of S, or ``None`` for the optimizer's statistics decay ε_k.
    ``s_at_refresh``: ``"batch"``, ``"kfac"`` or ``"project"`` (module docstring).
    """

    s_decay: float | None = None
    s_at_refresh: str = "batch"

    def __post_init__(self):
        if self.s_decay is not None and not 0 <= self.s_decay < 1:
            raise ValueError(f"s_decay must be in [0, 1) or None, got {self.s_decay!r}")
        if self.s_at_refresh not in ("batch", "kfac", "project"):
            raise ValueError(f"s_at_refresh must be 'batch', 'kfac' or 'project', got {self.s_at_refresh!r}")

    @property
    def rebases(self):
        return self.s_at_refresh == "batch"

    def init(self):
        d_a, d_g = self.shape
        return {"A": jnp.eye(d_a, dtype=F32), "G": jnp.eye(d_g, dtype=F32), "Q_A": jnp.eye(d_a, dtype=F32),
                "Q_G": jnp.eye(d_g, dtype=F32), "S": jnp.ones((d_a, d_g), F32)}

    def update(self, stats, batch: LayerBatch, decay):
        factors = ema({"A": stats["A"], "G": stats["G"]},
                      {"A": input_factor(batch.inputs), "G": output_factor(batch.preact_grads)}, decay)
        s_decay = decay if self.s_decay is None else self.s_decay
        s = ema(stats["S"], kfe_second_moment(batch, stats["Q_A"], stats["Q_G"]), s_decay)
        return {**stats, **factors, "S": s}

    def metric(self, stats):
        return KroneckerEigenbasis(stats["Q_A"], stats["Q_G"], stats["S"])

    def refresh(self, stats, damping):
        """New basis; S ← the K-FAC eigenvalues (``"kfac"``, and ``"batch"`` until ``rebase``) or the projection."""
        new = KroneckerEigenbasis.of_factors(stats["A"], stats["G"])
        s = new.S
        if self.s_at_refresh == "project":
            s = (new.Q_A.T @ stats["Q_A"]) ** 2 @ stats["S"] @ ((new.Q_G.T @ stats["Q_G"]) ** 2).T
        return {**stats, "Q_A": new.Q_A, "Q_G": new.Q_G, "S": s}, None

    def rebase(self, stats, batch: LayerBatch):
        """``"batch"``: S ← this batch's second moment in the new basis (Algorithm 1's ComputeScalings)."""
        return {**stats, "S": kfe_second_moment(batch, stats["Q_A"], stats["Q_G"])}

    def apply_inverse(self, stats, cache, grad, damping):
        return self.metric(stats).solve(grad, damping)
