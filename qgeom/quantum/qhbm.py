r"""Quantum Hamiltonian-based models (QHBMs).

ρ(θ, φ) = U(φ) e^{−K_θ} U(φ)† / Z_θ with K_θ = Σ_x E_θ(x)|x⟩⟨x| from an
energy-based model (:mod:`qgeom.quantum.ebm`) and U(φ) from a
:class:`~qgeom.quantum.circuits.Circuit` (Verdon et al., arXiv:1910.02071).
Its spectrum is p_θ(x) = e^{−E_θ(x)}/Z_θ and its eigenvectors are the columns of U, so

* S(ρ) = H(p_θ) = log Z_θ + Σ_x p_θ(x) E_θ(x)          (no eigendecomposition),
* log ρ = U diag(log p_θ) U† = −U K_θ U† − log Z_θ     (no matrix logarithm),
* Tr(ρH) = Σ_x p_θ(x) ⟨x|U†HU|x⟩                       (H applied to U's columns).

Parameters are a dict ``{"theta": θ, "phi": φ}``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import pennylane as qml
from jax.scipy.special import logsumexp

from qgeom.quantum.circuits import Circuit
from qgeom.quantum.ebm import ZProductEBM, basis_bits
from qgeom.quantum.hamiltonians import (
    _check_hermitian_op,
    check_wires,
    hamiltonian_matrix,
    pauli_tables,
)


class PreparedObservable(NamedTuple):
    """A Hermitian observable in the form used for H·U: Pauli groups (``flips``, ``d``) or a dense ``matrix``."""

    flips: tuple | None
    d: jax.Array | None
    matrix: jax.Array | None


class QHBM:
    """ρ(θ, φ) = U(φ) diag(p_θ) U(φ)† for an EBM p_θ and a circuit U(φ) on the same number of qubits."""

    def __init__(self, ebm: ZProductEBM, circuit: Circuit):
        if ebm.n != circuit.n:
            raise ValueError(f"EBM has {ebm.n} bits but the circuit has {circuit.n} qubits")
        self.ebm, self.circuit = ebm, circuit
        self.n, self.wires = circuit.n, circuit.wires

    def __repr__(self) -> str:
        return f"QHBM({self.ebm!r}, {self.circuit!r})"

    # -- parameters ---------------------------------------------------------------
    def init(self, key) -> dict:
        """Random parameters {"theta": ebm.init, "phi": circuit.init}."""
        k1, k2 = jax.random.split(key)
        return {"theta": self.ebm.init(k1), "phi": self.circuit.init(k2)}

    def check_params(self, params) -> None:
        """Raise ``ValueError`` unless ``params`` is {"theta", "phi"} with the right shapes."""
        if not isinstance(params, dict) or set(params) != {"theta", "phi"}:
            raise ValueError(f"QHBM parameters must be a dict with keys 'theta' and 'phi', got {params!r:.200}")
        self.ebm.check_params(params["theta"])
        self.circuit.check_params(params["phi"])

    # -- spectrum -------------------------------------------------------------------
    def energies(self, params):
        """E_θ(x) for all 2ⁿ basis states (the spectrum of K_θ)."""
        self.check_params(params)
        return self.ebm.energies(params["theta"])

    def log_partition(self, params):
        """log Z_θ."""
        self.check_params(params)
        return self.ebm.log_partition(params["theta"])

    def probabilities(self, params):
        """p_θ, the eigenvalues of ρ in the order of U's columns."""
        self.check_params(params)
        return self.ebm.probabilities(params["theta"])

    def entropy(self, params):
        """S(ρ) = H(p_θ) = log Z_θ + Σ_x p_θ(x) E_θ(x)."""
        e = self.energies(params)
        return logsumexp(-e) + jnp.sum(jax.nn.softmax(-e) * e)

    # -- operators --------------------------------------------------------------------
    def unitary(self, params):
        """U(φ), 2ⁿ×2ⁿ."""
        self.check_params(params)
        return self.circuit.unitary(params["phi"])

    def _conjugate(self, params, diag):
        u = self.unitary(params)
        return (u * diag) @ u.conj().T

    def density_matrix(self, params):
        """ρ = U diag(p_θ) U†."""
        return self._conjugate(params, self.probabilities(params))

    def log_density_matrix(self, params):
        """log ρ = U diag(log p_θ) U† (log p = −E − log Z: finite even where p underflows)."""
        e = self.energies(params)
        return self._conjugate(params, -e - logsumexp(-e))

    def modular_hamiltonian(self, params):
        """U K_θ U† = U diag(E_θ) U†, so that log ρ = −modular − log Z_θ."""
        return self._conjugate(params, self.energies(params))

    # -- measurements -------------------------------------------------------------------
    def prepare(self, H) -> PreparedObservable:
        """Validate ``H`` (Hermitian, wires within the model's) and bring it into the form used by :meth:`expectation`.

        A PennyLane operator with a Pauli representation is kept as Pauli groups when
        that is cheaper than a dense product (G groups cost G·4ⁿ vs 8ⁿ); otherwise a
        dense Hermitian 2ⁿ×2ⁿ matrix is used.
        """
        if isinstance(H, PreparedObservable):
            return H
        if isinstance(H, qml.operation.Operator):
            check_wires(H, self.wires)
            _check_hermitian_op(H)
            tables = pauli_tables(H, self.wires)
            if tables is not None and 8 * len(tables[0]) <= 2**self.n:
                return PreparedObservable(tables[0], jnp.asarray(tables[1]), None)
        return PreparedObservable(None, None, hamiltonian_matrix(H, self.wires))

    def _apply_observable(self, obs: PreparedObservable, u):
        """H·U for a prepared observable (Pauli groups: flips of U's row tensor times phases)."""
        if obs.matrix is not None:
            return obs.matrix @ u
        n, cols = self.n, u.shape[1]
        t = u.reshape((2,) * n + (cols,))
        out = 0
        for axes, d in zip(obs.flips, obs.d):
            ft = jnp.flip(t, axis=axes) if axes else t
            out = out + d.reshape((2,) * n + (1,)) * ft
        return out.reshape(2**n, cols)

    def expectation(self, params, H):
        """Tr(ρH) = Σ_x p_θ(x) ⟨x|U†HU|x⟩; ``H`` an operator, a dense Hermitian matrix or a :class:`PreparedObservable`."""
        obs = self.prepare(H)
        p = self.probabilities(params)
        u = self.unitary(params)
        hu = self._apply_observable(obs, u)
        return jnp.sum(jnp.real(jnp.sum(u.conj() * hu, axis=0)) * p)

    def sample(self, params, key, shots: int):
        """Computational-basis measurement outcomes of ρ as (shots, n) int bits.

        As a device would produce them: x ~ p_θ, prepare |x⟩, apply U, measure;
        the outcome law is diag(ρ)(y) = Σ_x |U_yx|² p_θ(x).
        """
        probs = jnp.abs(self.unitary(params)) ** 2 @ self.probabilities(params)
        idx = jax.random.categorical(key, jnp.log(probs), shape=(shots,))
        return basis_bits(self.n)[idx]


jax.tree_util.register_static(QHBM)
