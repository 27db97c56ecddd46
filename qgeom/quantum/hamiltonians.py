"""Hamiltonians as PennyLane operators, and their matrices for simulation.

Convention (shared with every module of ``qgeom.quantum``): the computational
basis index x is big-endian over the wire order (the first wire is the most
significant bit, as in PennyLane); bit 0 ↔ Z = +1.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import networkx as nx
import numpy as np
import pennylane as qml
import scipy.sparse

from qgeom.quantum.limits import check_dense

HERMITIAN_ATOL = 1e-10


def tfim(graph: nx.Graph, J: float = 1.0, h: float = 1.0) -> qml.operation.Operator:
    r"""Transverse-field Ising model H = −J Σ_{(i,j)∈E} Z_i Z_j − h Σ_i X_i on a graph.

    The wires are the graph's nodes in sorted order; every node gets a field term,
    so isolated nodes are kept. Any lattice comes from networkx or PennyLane, e.g.

    >>> H = tfim(nx.cycle_graph(8), J=1.0, h=0.5)                       # ring
    >>> H = tfim(nx.grid_2d_graph(3, 3), J=1.0, h=3.0)                  # 3×3 square, wires (i, j)
    >>> H = tfim(nx.triangular_lattice_graph(2, 4))                     # triangular
    >>> H = qml.spin.transverse_ising("square", [3, 3], coupling=1.0, h=3.0)  # PennyLane lattice

    ``qml.spin.transverse_ising`` uses the same sign convention (its wires are
    integers 0…N−1); this function is the graph-general form of it.
    Self-loops are rejected.
    """
    if not isinstance(graph, nx.Graph):
        raise ValueError(f"graph must be a networkx graph, got {type(graph).__name__}")
    if graph.number_of_nodes() == 0:
        raise ValueError("graph has no nodes")
    if nx.number_of_selfloops(graph):
        raise ValueError("graph has self-loops; Z_i Z_i = 1 is not an Ising coupling")
    for name, val in (("J", J), ("h", h)):
        if not np.isfinite(val):
            raise ValueError(f"{name} must be finite, got {val}")
    nodes = sorted(graph.nodes)
    coeffs = [-float(J)] * graph.number_of_edges() + [-float(h)] * len(nodes)
    ops = [qml.Z([i]) @ qml.Z([j]) for i, j in graph.edges()] + [qml.X([i]) for i in nodes]
    return qml.Hamiltonian(coeffs, ops)


def torus(rows: int, cols: int) -> nx.MultiGraph:
    """Periodic rows×cols square lattice: nodes (r, c), a bond from every site to its right
    and lower neighbour modulo the sizes (2·rows·cols bonds, four per site).

    As in the QHBM authors' 2D lattice (google/qhbm-library ``baselines/train.py``): along a
    side of length 2 the wrap-around bond repeats the direct one, so the returned multigraph
    holds it twice and ``tfim(torus(2, 3))`` couples those pairs with 2J.
    """
    for name, size in (("rows", rows), ("cols", cols)):
        if not isinstance(size, int) or size < 2:
            raise ValueError(f"a torus needs integer {name} >= 2, got {size!r}")
    g = nx.MultiGraph()
    g.add_nodes_from((r, c) for r in range(rows) for c in range(cols))
    for r in range(rows):
        for c in range(cols):
            g.add_edge((r, c), (r, (c + 1) % cols))
            g.add_edge((r, c), ((r + 1) % rows, c))
    return g


def default_wires(H) -> list:
    """The wires of an operator in sorted order (insertion order if unsortable)."""
    try:
        return sorted(H.wires.tolist())
    except TypeError:
        return H.wires.tolist()


def check_wires(H, wires: Sequence) -> None:
    """Raise ``ValueError`` if the operator ``H`` acts on a wire outside ``wires``."""
    extra = [w for w in H.wires.tolist() if w not in list(wires)]
    if extra:
        raise ValueError(f"Hamiltonian acts on wires {extra} that the model does not have (model wires {list(wires)})")


def _check_hermitian_matrix(m, name="Hamiltonian") -> None:
    try:
        a = np.asarray(m)
    except Exception:  # traced inside jit: cannot inspect
        return
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite entries")
    scale = max(1.0, float(np.max(np.abs(a)))) if a.size else 1.0
    if np.max(np.abs(a - a.conj().T), initial=0.0) > HERMITIAN_ATOL * scale:
        raise ValueError(f"{name} is not Hermitian (max |H − H†| = {np.max(np.abs(a - a.conj().T)):.3g})")


def _check_hermitian_op(H) -> None:
    ps = H.pauli_rep
    if ps is None:
        return  # checked on its matrix
    try:
        coeffs = np.array([complex(c) for c in ps.values()])
    except Exception:  # traced coefficients
        return
    if not np.all(np.isfinite(coeffs)):
        raise ValueError("Hamiltonian has non-finite coefficients")
    if np.any(np.abs(coeffs.imag) > HERMITIAN_ATOL * max(1.0, np.max(np.abs(coeffs), initial=0.0))):
        raise ValueError(f"Hamiltonian is not Hermitian: Pauli coefficients with imaginary parts {coeffs.imag[np.abs(coeffs.imag) > 0]}")


def hamiltonian_matrix(H, wires: Sequence | None = None):
    """Dense complex128 2ⁿ×2ⁿ matrix of ``H`` in the wire order ``wires`` (default: sorted wires of ``H``).

    ``H`` is a PennyLane operator or already a dense array (returned after checks:
    square, size 2ⁿ when ``wires`` is given, Hermitian). Raises ``ValueError`` for
    non-Hermitian input, wires of ``H`` outside ``wires``, or sizes above the memory limit.
    """
    if isinstance(H, qml.operation.Operator):
        wires = default_wires(H) if wires is None else list(wires)
        check_wires(H, wires)
        check_dense(len(wires), copies=2, what="dense Hamiltonian matrix")
        _check_hermitian_op(H)
        m = jnp.asarray(qml.matrix(H, wire_order=wires), dtype=jnp.complex128)
        if H.pauli_rep is None:
            _check_hermitian_matrix(m)
        return m
    m = jnp.asarray(H)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"Hamiltonian matrix must be square, got shape {m.shape}")
    if wires is not None and m.shape[0] != 2 ** len(wires):
        raise ValueError(f"Hamiltonian matrix has dimension {m.shape[0]}, the model has {len(wires)} wires (2^{len(wires)} = {2 ** len(wires)})")
    _check_hermitian_matrix(m)
    return m.astype(jnp.complex128)


def sparse_matrix(H, wires: Sequence | None = None) -> scipy.sparse.csr_matrix:
    """Sparse (scipy CSR) matrix of the operator ``H`` in the wire order ``wires``."""
    wires = default_wires(H) if wires is None else list(wires)
    check_wires(H, wires)
    _check_hermitian_op(H)
    return H.sparse_matrix(wire_order=wires, format="csr")


def pauli_tables(H, wires: Sequence):
    r"""Pauli-sum form of ``H`` grouped by X-mask, for matrix-free products H·ψ.

    With H = Σ_t c_t P_t and P_t = i^{|a∧b|} X^a Z^b (a, b bit masks over ``wires``),
    (H ψ)(y) = Σ_a d_a(y) ψ(y ⊕ a), d_a(y) = Σ_{t: a_t = a} c_t i^{|a∧b_t|} (−1)^{(y⊕a)·b_t}.
    Returns ``(flips, d)``: a tuple with, per distinct X-mask a, the wire positions it
    flips, and a complex array (G, 2ⁿ) of the d_a; ``None`` when ``H`` has no Pauli form.
    """
    ps = H.pauli_rep
    if ps is None:
        return None
    wires = list(wires)
    n = len(wires)
    pos = {w: n - 1 - k for k, w in enumerate(wires)}  # big-endian bit position
    y = np.arange(2**n)
    groups: dict[int, np.ndarray] = {}
    for word, c in ps.items():
        a = b = 0
        for w, p in word.items():
            bit = 1 << pos[w]
            if p in ("X", "Y"):
                a |= bit
            if p in ("Z", "Y"):
                b |= bit
        term = complex(c) * (1j ** bin(a & b).count("1")) * _parity_sign((y ^ a) & b)
        groups[a] = groups.get(a, 0) + term
    masks = sorted(groups)
    flips = tuple(tuple(k for k in range(n) if (a >> (n - 1 - k)) & 1) for a in masks)
    return flips, np.stack([groups[a] for a in masks])


def _parity_sign(v: np.ndarray) -> np.ndarray:
    """(−1)^popcount(v) elementwise."""
    par = np.zeros_like(v)
    while np.any(v):
        par ^= v & 1
        v = v >> 1
    return 1 - 2 * par
