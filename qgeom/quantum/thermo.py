r"""Exact thermodynamics and state distances from dense matrices (eigh-based, jit-able).

For a Hamiltonian H = Σ_k w_k |k⟩⟨k| at inverse temperature β:
σ_β = e^{−βH}/Z, log Z = logsumexp(−β w) (stable for any spectrum),
F = −log Z / β, E = Tr(σ_β H) = Σ_k p_k w_k, S = β(E − F).

``H`` is a PennyLane operator (converted with its sorted wires) or a dense
Hermitian array. Functions of density matrices check (outside ``jit``) that
inputs are square, Hermitian, unit-trace and positive semi-definite and raise
``ValueError`` naming the failed property.

Fidelity uses the squared convention F(ρ,σ) = (Tr √(√ρ σ √ρ))² of PennyLane's
``qml.math.fidelity``; QuTiP's ``fidelity`` is the square root of it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp, xlogy

from qgeom.metrics.quantum import check_density_matrix
from qgeom.quantum.hamiltonians import hamiltonian_matrix


def check_beta(beta) -> None:
    """Raise ``ValueError`` unless a concrete β is a finite number > 0 (traced β passes)."""
    try:
        b = np.asarray(beta)
    except Exception:
        return
    if b.ndim != 0 or not np.isfinite(b) or b <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")


def _spectrum(H):
    return jnp.linalg.eigh(hamiltonian_matrix(H))


def log_partition(H, beta):
    """log Z = log Tr e^{−βH} = logsumexp(−β w)."""
    check_beta(beta)
    w = jnp.linalg.eigvalsh(hamiltonian_matrix(H))
    return logsumexp(-beta * w)


def free_energy(H, beta):
    """F = −log Z / β."""
    return -log_partition(H, beta) / beta


def thermal_energy(H, beta):
    """E = Tr(σ_β H) = Σ_k w_k e^{−β w_k} / Z."""
    check_beta(beta)
    w = jnp.linalg.eigvalsh(hamiltonian_matrix(H))
    return jnp.sum(jax.nn.softmax(-beta * w) * w)


def thermal_entropy(H, beta):
    """S(σ_β) = β(E − F) = β E + log Z."""
    check_beta(beta)
    w = jnp.linalg.eigvalsh(hamiltonian_matrix(H))
    return beta * jnp.sum(jax.nn.softmax(-beta * w) * w) + logsumexp(-beta * w)


def gibbs_state(H, beta):
    """σ_β = e^{−βH}/Z = V diag(softmax(−β w)) V†."""
    check_beta(beta)
    w, v = _spectrum(H)
    p = jax.nn.softmax(-beta * w)
    return (v * p) @ v.conj().T


def entropy(rho):
    """Von Neumann entropy S(ρ) = −Tr ρ log ρ = −Σ λ log λ (nats; λ ≤ 0 contribute 0)."""
    check_density_matrix(rho)
    lam = jnp.clip(jnp.linalg.eigvalsh(rho), 0.0, None)
    return -jnp.sum(xlogy(lam, lam))


def relative_entropy(rho, sigma, atol: float = 1e-12):
    r"""D(ρ‖σ) = Tr ρ (log ρ − log σ) in nats.

    With ρ = Σ λ_i |a_i⟩⟨a_i| and σ = Σ μ_j |b_j⟩⟨b_j|,
    Tr ρ log σ = Σ_j W_j log μ_j, W_j = Σ_i λ_i |⟨a_i|b_j⟩|². Eigenvalues μ_j ≤ ``atol``
    count as zero: their term is 0 when W_j ≤ ``atol`` and makes D = +∞ otherwise
    (supp ρ ⊄ supp σ). For reporting; training never needs it.
    """
    check_density_matrix(rho, "rho")
    check_density_matrix(sigma, "sigma")
    lam, a = jnp.linalg.eigh(rho)
    mu, b = jnp.linalg.eigh(sigma)
    lam = jnp.clip(lam, 0.0, None)
    weights = jnp.abs(a.conj().T @ b) ** 2  # (i, j) ↦ |⟨a_i|b_j⟩|²
    wj = lam @ weights
    zero = mu <= atol
    log_mu = jnp.log(jnp.where(zero, 1.0, mu))
    cross = jnp.where(zero, jnp.where(wj > atol, -jnp.inf, 0.0), wj * log_mu)
    return jnp.sum(xlogy(lam, lam)) - jnp.sum(cross)


def _sqrtm_psd(rho):
    """√ρ by eigh; eigenvalues below the numerical noise floor d·ε·λ_max are set to 0 (√ amplifies noise)."""
    lam, v = jnp.linalg.eigh(rho)
    floor = rho.shape[0] * jnp.finfo(lam.dtype).eps * jnp.max(jnp.abs(lam))
    lam = jnp.where(lam > floor, lam, 0.0)
    return (v * jnp.sqrt(lam)) @ v.conj().T


def fidelity(rho, sigma):
    """Squared (Uhlmann–Jozsa) fidelity F = (Tr √(√ρ σ √ρ))² = ‖√ρ √σ‖₁², PennyLane's convention.

    QuTiP's ``fidelity`` returns √F. Computed from the singular values of √ρ √σ, which
    (unlike the eigenvalues of √ρ σ √ρ under a square root) stay accurate for rank-deficient states.
    """
    check_density_matrix(rho, "rho")
    check_density_matrix(sigma, "sigma")
    return jnp.sum(jnp.linalg.svd(_sqrtm_psd(rho) @ _sqrtm_psd(sigma), compute_uv=False)) ** 2


def trace_distance(rho, sigma):
    """T(ρ,σ) = ½ ‖ρ − σ‖₁ = ½ Σ |eig(ρ − σ)|."""
    check_density_matrix(rho, "rho")
    check_density_matrix(sigma, "sigma")
    return 0.5 * jnp.sum(jnp.abs(jnp.linalg.eigvalsh(rho - sigma)))
