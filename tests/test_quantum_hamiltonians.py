"""tfim matrices vs an independent Kronecker-product construction (and qml.spin, netket)."""

import functools

import jax.numpy as jnp
import networkx as nx
import numpy as np
import pennylane as qml
import pytest

import qgeom  # noqa: F401  (float64)
from qgeom.quantum import hamiltonian_matrix, sparse_matrix, tfim

X = np.array([[0, 1], [1, 0]], dtype=complex)
Z = np.diag([1.0, -1.0]).astype(complex)


def kron_site(ops: dict, n: int) -> np.ndarray:
    return functools.reduce(np.kron, [ops.get(i, np.eye(2)) for i in range(n)])


def tfim_kron(n, edges, J, h):
    H = sum(-J * kron_site({i: Z, j: Z}, n) for i, j in edges)
    return H + sum(-h * kron_site({i: X}, n) for i in range(n))


GRAPHS = {
    "chain5": nx.path_graph(5),
    "ring6": nx.cycle_graph(6),
    "square2x3": nx.convert_node_labels_to_integers(nx.grid_2d_graph(2, 3), ordering="sorted"),
    "triangular": nx.convert_node_labels_to_integers(nx.triangular_lattice_graph(1, 3), ordering="sorted"),
}


@pytest.mark.parametrize("name", GRAPHS)
def test_tfim_matches_kronecker_products(name):
    g = GRAPHS[name]
    n = g.number_of_nodes()
    J, h = 0.7, -1.3
    H = tfim(g, J=J, h=h)
    ref = tfim_kron(n, list(g.edges), J, h)
    np.testing.assert_allclose(hamiltonian_matrix(H), ref, atol=1e-14)
    np.testing.assert_allclose(sparse_matrix(H).toarray(), ref, atol=1e-14)


def test_tfim_grid_tuple_nodes_use_sorted_wires():
    g = nx.grid_2d_graph(2, 2)
    H = tfim(g, 1.0, 0.5)
    assert sorted(H.wires.tolist()) == sorted(g.nodes)
    idx = {v: k for k, v in enumerate(sorted(g.nodes))}
    ref = tfim_kron(4, [(idx[u], idx[v]) for u, v in g.edges], 1.0, 0.5)
    np.testing.assert_allclose(hamiltonian_matrix(H), ref, atol=1e-14)


def test_tfim_equals_pennylane_spin_square_lattice():
    H_pl = qml.spin.transverse_ising("square", [2, 3], coupling=0.9, h=0.4)
    lat = qml.spin.generate_lattice("square", [2, 3])
    g = nx.Graph()
    g.add_nodes_from(range(lat.n_sites))
    g.add_edges_from((i, j) for i, j, *_ in lat.edges)
    np.testing.assert_allclose(
        hamiltonian_matrix(tfim(g, 0.9, 0.4)), qml.matrix(H_pl, wire_order=range(6)), atol=1e-13
    )


def test_tfim_equals_netket_ising():
    nk = pytest.importorskip("netket")
    g = nx.cycle_graph(5)
    hi = nk.hilbert.Spin(0.5, N=5)
    # netket: H = -h Σ σˣ + J Σ σᶻσᶻ (sign of J flipped); its σᶻ = +1 is the first basis state
    Hn = nk.operator.Ising(hi, nk.graph.Chain(5, pbc=True), h=0.8, J=-1.1).to_dense()
    np.testing.assert_allclose(hamiltonian_matrix(tfim(g, 1.1, 0.8)), Hn, atol=1e-13)


def test_bad_hamiltonians_raise():
    with pytest.raises(ValueError, match="not Hermitian"):
        hamiltonian_matrix(qml.Hamiltonian([1j], [qml.Z(0)]))
    with pytest.raises(ValueError, match="not Hermitian"):
        hamiltonian_matrix(jnp.array([[0.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="wires"):
        hamiltonian_matrix(tfim(nx.path_graph(3)), wires=[0, 1])
    with pytest.raises(ValueError, match="self-loops"):
        tfim(nx.Graph([(0, 0), (0, 1)]))
    with pytest.raises(ValueError, match="GiB"):
        hamiltonian_matrix(tfim(nx.path_graph(40)))
