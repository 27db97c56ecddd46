"""The torus lattice and the QHBM authors' hardware-efficient ansatz vs dense constructions."""

import functools

import jax
import numpy as np
import pennylane as qml
import pytest

import qgeom  # noqa: F401  (float64)
from qgeom.quantum import hamiltonian_matrix, tfim
from qgeom.quantum.circuits import qhea
from qgeom.quantum.hamiltonians import torus

X = np.array([[0, 1], [1, 0]], dtype=complex)
Z = np.diag([1.0, -1.0]).astype(complex)


def kron_site(ops: dict, n: int) -> np.ndarray:
    return functools.reduce(np.kron, [ops.get(i, np.eye(2)) for i in range(n)])


def test_torus_2x3_matches_hand_written_bonds():
    # sites k = 3r + c; horizontal ring bonds in each row, vertical bonds doubled by the wrap
    bonds = [(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3)] + [(c, 3 + c) for c in range(3)] * 2
    J, h = 0.7, 2.5
    ref = sum(-J * kron_site({i: Z, j: Z}, 6) for i, j in bonds) + sum(-h * kron_site({i: X}, 6) for i in range(6))
    np.testing.assert_allclose(hamiltonian_matrix(tfim(torus(2, 3), J=J, h=h)), ref, atol=1e-13)


def test_torus_3x3_matches_pennylane_periodic_square():
    # PennyLane numbers its lattice sites differently: equal up to a relabelling, so equal spectra
    ref = qml.matrix(qml.spin.transverse_ising("square", [3, 3], coupling=1.0, h=2.5, boundary_condition=True))
    ours = np.asarray(hamiltonian_matrix(tfim(torus(3, 3), J=1.0, h=2.5)))
    np.testing.assert_allclose(np.linalg.eigvalsh(ours), np.linalg.eigvalsh(ref), atol=1e-10)
    assert torus(3, 3).number_of_edges() == 18


@pytest.mark.parametrize("rows, cols", [(1, 3), (3, 1), (2.0, 3)])
def test_torus_rejects_degenerate_sizes(rows, cols):
    with pytest.raises(ValueError, match="torus needs integer"):
        torus(rows, cols)


def _cirq_pow(pauli, t):
    """cirq's P**t = e^{iπt/2}(cos(πt/2) I − i sin(πt/2) P) for P = X, Z."""
    return np.exp(1j * np.pi * t / 2) * (np.cos(np.pi * t / 2) * np.eye(2) - 1j * np.sin(np.pi * t / 2) * pauli)


def _qhea_dense(phi, n):
    u = np.eye(2**n, dtype=complex)
    pairs = [(i, i + 1) for s in (0, 1) for i in range(s, n - 1, 2)]
    for layer in phi:
        for i in range(n):
            u = kron_site({i: _cirq_pow(Z, layer[2 * i + 1]) @ _cirq_pow(X, layer[2 * i])}, n) @ u
        for k, (i, j) in enumerate(pairs):
            proj = kron_site({i: np.diag([0, 1.0]), j: np.diag([0, 1.0])}, n)
            u = (np.eye(2**n) + (np.exp(1j * np.pi * layer[2 * n + k]) - 1) * proj) @ u
    return u


def test_qhea_matches_cirq_convention_up_to_global_phase():
    n, layers = 4, 2
    c = qhea(n, layers)
    assert c.param_shape == (layers, 3 * n - 1)
    phi = c.init(jax.random.PRNGKey(0), scale=0.7)
    u, ref = np.asarray(c.unitary(phi)), _qhea_dense(np.asarray(phi), n)
    phase = np.vdot(u.ravel(), ref.ravel())
    phase /= abs(phase)
    np.testing.assert_allclose(u * phase, ref, atol=1e-12)


def test_qhea_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n >= 2"):
        qhea(1, 3)
