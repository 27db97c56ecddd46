"""Jordan–Wigner free-fermion TFIM thermodynamics vs dense exact diagonalization."""

import networkx as nx
import numpy as np
import pennylane as qml
import pytest

import qgeom  # noqa: F401
from qgeom.quantum import hamiltonian_matrix, tfim, tfim_free_fermion

# (J, h, β): paramagnet, ferromagnet, critical point (zero mode), negative couplings, h = 0, cold
PARAMS = [(1.0, 0.7, 1.3), (1.0, 1.0, 2.0), (-0.8, 1.5, 0.4), (1.0, -1.0, 5.0), (0.5, 0.0, 1.0), (1.0, 0.3, 20.0), (0.6, 1.4, 3.0)]


def ring_hamiltonian(n, J, h):
    """Σ_{i} Z_i Z_{i+1 mod n}; for n = 2 the bond appears twice (the free-fermion ring convention)."""
    if n == 2:
        return qml.Hamiltonian([-2 * J, -h, -h], [qml.Z(0) @ qml.Z(1), qml.X(0), qml.X(1)])
    return tfim(nx.cycle_graph(n), J, h)


def dense_thermo(H, beta):
    """log Z, E, S from the dense spectrum (numpy eigvalsh)."""
    w = np.linalg.eigvalsh(np.asarray(hamiltonian_matrix(H)))
    a = -beta * w
    log_z = a.max() + np.log(np.sum(np.exp(a - a.max())))
    e = np.sum(np.exp(a - log_z) * w)
    return log_z, e, log_z + beta * e


@pytest.mark.parametrize("n", range(2, 11))
@pytest.mark.parametrize("boundary", ["open", "periodic"])
def test_free_fermion_matches_dense_ed(n, boundary):
    params = PARAMS if n <= 8 else PARAMS[3:4]  # n = 9, 10: the h = −J zero-mode case only (dense ED is slow)
    for J, h, beta in params:
        H = tfim(nx.path_graph(n), J, h) if boundary == "open" else ring_hamiltonian(n, J, h)
        ff = tfim_free_fermion(n, J, h, beta, boundary)
        log_z, e, s = dense_thermo(H, beta)
        assert abs(ff.log_partition - log_z) < 1e-9, (J, h, beta)
        assert abs(ff.energy - e) < 1e-9, (J, h, beta)
        assert abs(ff.entropy - s) < 1e-9, (J, h, beta)
        assert abs(ff.free_energy + ff.log_partition / beta) < 1e-12


def test_large_chain_limits():
    # β → 0: log Z → n log 2; the ring's ground energy per site at h = J is −4/π (exact, thermodynamic limit)
    ff = tfim_free_fermion(500, 1.0, 0.5, 1e-6, "periodic")
    assert abs(ff.log_partition - 500 * np.log(2)) < 1e-3
    ff = tfim_free_fermion(500, 1.0, 1.0, 200.0, "periodic")
    assert abs(ff.energy / 500 + 4 / np.pi) < 1e-5
    for boundary in ("open", "periodic"):
        out = tfim_free_fermion(500, 1.0, 0.9, 2.0, boundary)
        assert all(np.isfinite(v) for v in out)


def test_bad_inputs():
    with pytest.raises(ValueError, match="boundary"):
        tfim_free_fermion(4, boundary="twisted")
    with pytest.raises(ValueError, match="beta"):
        tfim_free_fermion(4, beta=0.0)
    with pytest.raises(ValueError, match="n must be"):
        tfim_free_fermion(1, boundary="periodic")
