r"""Training losses for QHBMs.

* Gibbs sampling (VQT, Verdon et al. arXiv:1910.02071):
  L(θ,φ) = β Tr(ρH) − S(ρ) = D(ρ‖σ_β) − log Z_β ≥ −log Z_β, equality iff ρ = σ_β.
* Hamiltonian learning (QMHL): L(θ,φ) = −Tr(σ log ρ) = Σ_x q_φ(x) E_θ(x) + log Z_θ,
  q_φ(x) = ⟨x|U(φ)†σU(φ)|x⟩, from a density matrix σ or from measurement data
  (:class:`~qgeom.quantum.shadows.ShadowData`). The loss is linear in σ, so the unbiased
  classical-shadow estimate σ̂ gives an unbiased loss and gradient at every (θ, φ) — but
  σ̂ is not positive and that loss is unbounded below (few shots overfit without limit);
  the default is the nearest density matrix to σ̂ (Smolin–Gambetta–Smith), with which
  L ≥ S(σ̃) is bounded below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qgeom.quantum.limits import TRAINING_COPIES, check_dense
from qgeom.quantum.qhbm import QHBM
from qgeom.quantum.shadows import ShadowData
from qgeom.quantum.thermo import check_beta, check_density_matrix


def vqt_loss(model: QHBM, H, beta):
    """``loss(params)`` = β Tr(ρ_params H) − S(ρ_params); minimum −log Z_β at ρ = e^{−βH}/Z_β.

    Validates β (finite, > 0), H (Hermitian, on the model's wires) and the memory
    needed for a gradient, then returns a jit-able, differentiable function.
    """
    check_beta(beta)
    check_dense(model.n, TRAINING_COPIES, "VQT loss and gradient")
    obs = model.prepare(H)

    def loss(params):
        return beta * model.expectation(params, obs) - model.entropy(params)

    return loss


def qmhl_loss(model: QHBM, target, estimator: str = "physical"):
    """``loss(params)`` = −Tr(σ log ρ_params) = Σ_x q_φ(x) E_θ(x) + log Z_θ.

    ``target``: a density matrix σ (2ⁿ×2ⁿ; trace 1, Hermitian, PSD, else ``ValueError``)
    for the exact loss, or :class:`~qgeom.quantum.shadows.ShadowData` measured on copies
    of σ, with σ replaced (once, here) by ``estimator``: ``"physical"`` — the nearest
    density matrix to the shadow estimate (well-posed, biased) — or ``"unbiased"`` — the
    raw shadow estimate σ̂ (unbiased loss and gradient, unbounded below).
    """
    check_dense(model.n, TRAINING_COPIES, "QMHL loss and gradient")
    if estimator not in ("physical", "unbiased"):
        raise ValueError(f"estimator must be 'physical' or 'unbiased', got {estimator!r}")
    if isinstance(target, ShadowData):
        if list(target.wires) != list(model.wires):
            raise ValueError(f"shadow data measured on wires {list(target.wires)}, model wires {list(model.wires)}")
        sigma = target.physical_estimate() if estimator == "physical" else target.unbiased_estimate()
    else:
        sigma = jnp.asarray(target, dtype=jnp.complex128)
        if sigma.shape != (2**model.n, 2**model.n):
            raise ValueError(f"target must be a 2^{model.n}×2^{model.n} density matrix, got shape {sigma.shape}")
        check_density_matrix(sigma, "target")

    def loss(params):
        return _qmhl(model, sigma, params)

    return loss


@jax.jit
def _qmhl(model: QHBM, sigma, params):
    """Σ_x q_φ(x) E_θ(x) + log Z_θ with q_φ = diag(U†σU) (one compilation per model, any σ)."""
    u = model.unitary(params)
    q = jnp.real(jnp.sum(u.conj() * (sigma @ u), axis=0))
    return jnp.sum(q * model.energies(params)) + model.log_partition(params)
