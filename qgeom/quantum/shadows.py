r"""Measurement data of an unknown state σ: random single-qubit Pauli bases (classical shadows).

A device measures each copy of σ with every qubit i in a uniformly random Pauli basis
P_i ∈ {X, Y, Z} and returns the bases and the outcome bits b_i (eigenvalue (−1)^{b_i}).
Each shot gives the snapshot σ̂_s = ⊗_i (I + 3(−1)^{b_i} P_i)/2 = ⊗_i (3 V_i†|b_i⟩⟨b_i|V_i − I),
an unbiased estimator: E[σ̂_s] = σ (Huang, Kueng & Preskill, Nat. Phys. 16, 1050 (2020)).
The mean σ̂ = (1/S) Σ_s σ̂_s (``unbiased_estimate``) is Hermitian with unit trace but not
positive; any loss linear in σ evaluated at σ̂ is unbiased for every value of the model
parameters, and so is its gradient (the data do not depend on the parameters). The
variance of a global observable grows like 3ⁿ: this is an estimator for few qubits.

Because σ̂ is not positive, −Tr(σ̂ log ρ) is unbounded below in ρ (put weight → 0 on a
negative direction of σ̂) and few-shot learning runs away. ``physical_estimate`` is the
density matrix closest to σ̂ in Frobenius norm (``nearest_density_matrix``: Smolin,
Gambetta & Smith, PRL 108, 070502 (2012)) — biased, but −Tr(σ̃ log ρ) ≥ S(σ̃) ≥ 0 is
bounded below, and it is computed once on the data, before any training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qgeom.quantum.limits import check_dense
from qgeom.quantum.thermo import check_density_matrix

PAULIS = np.array([[[0, 1], [1, 0]], [[0, -1j], [1j, 0]], [[1, 0], [0, -1]]], dtype=complex)  # X, Y, Z
# rows: conjugated eigenvectors for eigenvalue +1 (bit 0) and −1 (bit 1) of X, Y, Z
_ROTATIONS = np.array(
    [[[1, 1], [1, -1]], [[1, -1j], [1, 1j]], [[np.sqrt(2), 0], [0, np.sqrt(2)]]], dtype=complex
) / np.sqrt(2)


class ShadowData(NamedTuple):
    """Random-Pauli measurement record: ``bases`` (S, n) in {0: X, 1: Y, 2: Z}, ``outcomes`` (S, n) bits, ``wires``."""

    bases: np.ndarray
    outcomes: np.ndarray
    wires: tuple

    @property
    def n(self) -> int:
        return len(self.wires)

    def _factors(self, bases, outcomes):
        """Single-qubit snapshot factors (I + 3(−1)^b P)/2, shape (..., n, 2, 2)."""
        sign = 1 - 2 * np.asarray(outcomes)
        return (np.eye(2) + 3 * sign[..., None, None] * PAULIS[np.asarray(bases)]) / 2

    def snapshots(self) -> jax.Array:
        """All snapshots σ̂_s, shape (S, 2ⁿ, 2ⁿ) (small data only)."""
        check_dense(self.n, copies=len(self.bases), what="stacked shadow snapshots")
        f = self._factors(self.bases, self.outcomes)
        out = f[:, 0]
        for i in range(1, self.n):
            out = np.einsum("sab,scd->sacbd", out, f[:, i]).reshape(len(f), 2 ** (i + 1), 2 ** (i + 1))
        return jnp.asarray(out)

    def unbiased_estimate(self) -> jax.Array:
        """σ̂ = mean snapshot: unbiased, unit trace, not PSD (distinct (basis, outcome) records
        are expanded once, weighted by count)."""
        check_dense(self.n, copies=2, what="shadow estimate")
        codes = np.asarray(self.bases) * 2 + np.asarray(self.outcomes)  # 6 symbols per qubit
        uniq, counts = np.unique(codes, axis=0, return_counts=True)
        unique = ShadowData(uniq // 2, uniq % 2, self.wires)
        total = np.zeros((2**self.n, 2**self.n), dtype=complex)
        for s in range(0, len(uniq), 512):
            block = ShadowData(unique.bases[s : s + 512], unique.outcomes[s : s + 512], self.wires)
            total += np.einsum("s,sab->ab", counts[s : s + 512], np.asarray(block.snapshots()))
        return jnp.asarray(total / counts.sum())

    def physical_estimate(self) -> jax.Array:
        """The density matrix closest to σ̂ in Frobenius norm (``nearest_density_matrix``)."""
        return nearest_density_matrix(self.unbiased_estimate())


def nearest_density_matrix(a) -> jax.Array:
    r"""argmin ‖ρ − a‖_F over density matrices ρ (ρ ⪰ 0, Tr ρ = 1), for Hermitian ``a``.

    Frobenius distance is unitarily invariant, so the minimiser shares a's eigenvectors and
    its spectrum is the Euclidean projection of a's eigenvalues μ onto the probability
    simplex: λ_k = max(μ_k − t, 0), t fixed by Σλ = 1. For unit-trace ``a`` this is the
    spectrum shift of Smolin, Gambetta & Smith, PRL 108, 070502 (2012): drop the most
    negative eigenvalues while μ_i + a_drop/i < 0 (a_drop the sum dropped so far, i the
    number kept) and add a_drop/i to the rest. Jit-able; ``ValueError`` (outside ``jit``)
    for a non-square, non-finite or non-Hermitian input.
    """
    try:
        m = np.asarray(a)
    except Exception:  # traced
        m = None
    if m is not None:
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"nearest_density_matrix needs a square matrix, got shape {m.shape}")
        if not np.all(np.isfinite(m)):
            raise ValueError("nearest_density_matrix: non-finite entries")
        if np.max(np.abs(m - m.conj().T), initial=0.0) > 1e-8 * max(1.0, np.max(np.abs(m), initial=0.0)):
            raise ValueError("nearest_density_matrix needs a Hermitian matrix")
    a = jnp.asarray(a, dtype=jnp.complex128)
    mu, vecs = jnp.linalg.eigh(0.5 * (a + a.conj().T))
    return (vecs * _project_to_simplex(mu)) @ vecs.conj().T


def _project_to_simplex(mu):
    """Euclidean projection of ``mu`` onto {λ ≥ 0, Σλ = 1} (sort, cumulative sums, one threshold)."""
    u = jnp.sort(mu)[::-1]
    kept = jnp.arange(1, u.size + 1)
    shift = (1 - jnp.cumsum(u)) / kept  # a_drop / i when the i largest are kept
    count = jnp.sum(u + shift > 0)  # the condition holds exactly for a prefix of i
    return jnp.maximum(mu + shift[count - 1], 0.0)


def measure_shadows(sigma, key, shots: int, wires: Sequence | None = None) -> ShadowData:
    """Simulate a device measuring ``shots`` copies of σ in uniformly random local Pauli bases."""
    check_density_matrix(sigma, "sigma")
    sigma = np.asarray(sigma)
    n = int(round(np.log2(sigma.shape[0])))
    if 2**n != sigma.shape[0]:
        raise ValueError(f"sigma has dimension {sigma.shape[0]}, not a power of 2")
    if not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    wires = tuple(range(n)) if wires is None else tuple(wires)
    if len(wires) != n:
        raise ValueError(f"{len(wires)} wires given for a {n}-qubit state")
    check_dense(n, copies=3, what="shadow measurement simulation")
    kb, ko = jax.random.split(key)
    bases = np.asarray(jax.random.randint(kb, (shots, n), 0, 3))
    uniq, inverse = np.unique(bases, axis=0, return_inverse=True)
    probs = np.empty((len(uniq), 2**n))
    for u, basis in enumerate(uniq):  # Born rule in each distinct basis: diag(V σ V†)
        v = np.array([[1.0]])
        for b in basis:
            v = np.kron(v, _ROTATIONS[b])
        probs[u] = np.clip(np.real(np.einsum("by,yz,bz->b", v, sigma, v.conj())), 0, None)
    logits = jnp.log(jnp.asarray(probs / probs.sum(axis=1, keepdims=True)))[inverse.ravel()]
    idx = np.asarray(jax.random.categorical(ko, logits))
    outcomes = (idx[:, None] >> np.arange(n - 1, -1, -1)[None, :]) & 1
    return ShadowData(bases, outcomes, wires)
