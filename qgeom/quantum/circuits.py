r"""Parameterized circuits: PennyLane qfuncs compiled to a jit-able, differentiable unitary.

A :class:`Circuit` wraps ``qfunc(phi)`` (any PennyLane quantum function that only
applies gates) with its wires and parameter shape. The gate list is recorded
with ``qml.tape.make_qscript`` (operators without a matrix are decomposed; the
structure must not depend on the parameter values). :meth:`Circuit.apply` then
multiplies a (2ⁿ, C) block of state vectors by U(φ) without ever forming a
2ⁿ×2ⁿ matrix per gate: the gates' small matrices (``op.matrix()``, differentiable)
are fused (see :func:`_plan`) into one 2⁴×2⁴ matrix per block of 4 consecutive
qubits, applied as a single contraction on the state reshaped (2ᵃ, 16, rest), and
one elementwise 2ⁿ phase for runs of Z-diagonal gates (RZ, CZ, IsingZZ, …) that
cross blocks. A hardware-efficient layer on n qubits thus costs n/4 small dense
contractions plus one elementwise product over the 2ⁿ×C block. The unitary is
``apply(phi, I)``.

Reverse-mode memory: when the state block is large, consecutive segments of
≈√G gate steps are wrapped in ``jax.checkpoint``, so the backward pass stores
≈2√G state blocks instead of G (≈ one extra forward pass of compute).
Forward mode (``jax.jacfwd``) works unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pennylane as qml
from pennylane.ops.qubit.attributes import diagonal_in_z_basis

from qgeom.quantum.limits import check_dense

CHECKPOINT_BYTES = 2**27  # checkpoint segments once a state block exceeds 128 MiB
BLOCK = 4  # gates inside a block of BLOCK consecutive qubits are fused into one 2^BLOCK matrix


class Circuit:
    """U(φ) defined by a PennyLane qfunc ``qfunc(phi)`` on ``wires`` with ``phi.shape == param_shape``."""

    def __init__(self, qfunc: Callable, wires: Sequence, param_shape: Sequence[int]):
        self.qfunc = qfunc
        self.wires = list(wires)
        if not self.wires or len(set(self.wires)) != len(self.wires):
            raise ValueError(f"wires must be a non-empty list of distinct labels, got {self.wires}")
        self.n = len(self.wires)
        self.param_shape = tuple(int(d) for d in param_shape)
        self._pos = {w: k for k, w in enumerate(self.wires)}
        ops = self.operations(jnp.zeros(self.param_shape))
        self._signature = tuple((op.name, tuple(op.wires.tolist())) for op in ops)

    def __repr__(self) -> str:
        return f"Circuit(n={self.n}, param_shape={self.param_shape}, gates={len(self._signature)})"

    def init(self, key, scale: float = 0.5) -> jax.Array:
        """φ ~ N(0, scale²)."""
        return scale * jax.random.normal(key, self.param_shape, dtype=jnp.float64)

    def check_params(self, phi) -> None:
        """Raise ``ValueError`` if ``phi`` does not have shape :attr:`param_shape`."""
        if jnp.shape(phi) != self.param_shape:
            raise ValueError(f"circuit parameters must have shape {self.param_shape}, got {jnp.shape(phi)}")

    def operations(self, phi) -> list:
        """The gates of ``qfunc(phi)``, decomposed until each has a matrix."""
        tape = qml.tape.make_qscript(self.qfunc)(phi)
        for op in tape.operations:
            if isinstance(op, qml.operation.StatePrepBase):
                raise ValueError(f"circuit qfunc must only apply gates; found state preparation {op.name}")
        if not all(op.has_matrix for op in tape.operations):
            (tape,), _ = qml.transforms.decompose(tape, stopping_condition=lambda op: op.has_matrix)
        for op in tape.operations:
            bad = [w for w in op.wires.tolist() if w not in self._pos]
            if bad:
                raise ValueError(f"gate {op.name} acts on wires {bad} outside the circuit's wires {self.wires}")
        return tape.operations

    def _steps(self, phi):
        """Fused gate steps, in order: see :func:`_plan`."""
        ops = self.operations(phi)
        if tuple((op.name, tuple(op.wires.tolist())) for op in ops) != self._signature:
            raise ValueError("the circuit's gate sequence depends on the parameter values; it must be fixed")
        return _plan(ops, [[self._pos[w] for w in op.wires.tolist()] for op in ops], self.n)

    def apply(self, phi, states):
        """U(φ) @ states for a (2ⁿ, C) block of column vectors (or a single 2ⁿ vector)."""
        return self._apply(phi, states, lambda steps: steps)

    def apply_adjoint(self, phi, states):
        """U(φ)† @ states: the fused steps in reverse order, each conjugate-transposed."""
        return self._apply(phi, states, lambda steps: [(k, _adjoint(k, d), w) for k, d, w in reversed(steps)])

    def _apply(self, phi, states, order):
        self.check_params(phi)
        states = jnp.asarray(states, dtype=jnp.complex128)
        vec = states.ndim == 1
        if vec:
            states = states[:, None]
        if states.shape[0] != 2**self.n:
            raise ValueError(f"states must have leading dimension 2^{self.n} = {2**self.n}, got {states.shape}")
        out = self._run(order(self._steps(phi)), states)
        return out[:, 0] if vec else out

    def _run(self, steps, states):
        n, cols = self.n, states.shape[1]
        meta = [(kind, where) for kind, _, where in steps]
        data = [d for _, d, _ in steps]

        def run(data_seg, meta_seg, psi):
            for (kind, where), d in zip(meta_seg, data_seg):
                psi = _APPLY[kind](d, where, psi, n)
            return psi

        if 16 * 2**n * cols <= CHECKPOINT_BYTES or len(steps) < 4:
            psi = run(data, meta, states)
        else:
            seg, psi = math.ceil(math.sqrt(len(steps))), states
            for s in range(0, len(steps), seg):
                m = tuple(meta[s : s + seg])
                psi = jax.checkpoint(lambda ds, p, m=m: run(ds, m, p))(data[s : s + seg], psi)
        return psi

    def unitary(self, phi):
        """U(φ) as a complex128 2ⁿ×2ⁿ matrix (jit-able, differentiable in both modes).

        Leading block steps on distinct blocks (typically the first layer of single-qubit
        gates) act on the identity as a Kronecker product ⊗_b M_b, built in one pass.
        """
        check_dense(self.n, copies=4, what="circuit unitary")
        self.check_params(phi)
        steps = self._steps(phi)
        nblocks = -(-self.n // BLOCK)
        lead = {}
        for kind, m, where in steps:
            if kind != "block" or where[0] // BLOCK in lead:
                break
            lead[where[0] // BLOCK] = m
        u = jnp.ones((1, 1), dtype=jnp.complex128)
        for b in range(nblocks):
            size = min(BLOCK, self.n - b * BLOCK)
            u = jnp.kron(u, lead[b] if b in lead else jnp.eye(2**size, dtype=jnp.complex128))
        return self._run(steps[len(lead) :], u)


jax.tree_util.register_static(Circuit)


def _embed(m, g, local):
    """Left-multiply a block matrix tensor m (2,)*2s by gate tensor g (2,)*2k acting on block positions ``local``."""
    k = len(local)
    out = jnp.tensordot(g, m, axes=(tuple(range(k, 2 * k)), tuple(local)))
    return jnp.moveaxis(out, tuple(range(k)), tuple(local))


def _plan(ops, positions, n):
    """Fuse a gate list into steps (kind, data, where) applied left to right.

    Qubit positions are cut into contiguous blocks of ``BLOCK``. Gates inside one block
    are multiplied into that block's pending 2ˢ×2ˢ matrix (step "block", applied as one
    dense contraction); gates diagonal in the Z basis that span blocks (CZ, IsingZZ
    across a cut, …) or hit a block with nothing pending are multiplied into one pending
    2ⁿ phase vector (step "diag", elementwise); other multi-block gates are steps "gate".
    Invariant: the wires of the pending phase and of the pending block matrices are
    disjoint, so pending pieces commute and are flushed only when a new gate overlaps.
    """
    nblocks = -(-n // BLOCK)
    size = [min(BLOCK, n - b * BLOCK) for b in range(nblocks)]
    steps, blocks, diag, diag_wires = [], {}, None, set()

    def flush_block(b):
        s = size[b]
        steps.append(("block", blocks.pop(b).reshape(2**s, 2**s), (b * BLOCK, s)))

    def flush_diag():
        nonlocal diag
        if diag is not None:
            steps.append(("diag", jnp.broadcast_to(diag, (2,) * n).reshape(-1), None))
        diag = None
        diag_wires.clear()

    for op, pos in zip(ops, positions):
        k, bs = len(pos), {p // BLOCK for p in pos}
        diagonal = op.name in diagonal_in_z_basis
        b = next(iter(bs))
        if len(bs) == 1 and (not diagonal or b in blocks):
            block_wires = set(range(b * BLOCK, b * BLOCK + size[b]))
            if diag_wires & block_wires:  # then b has nothing pending (invariant)
                flush_diag()
            if b not in blocks:
                blocks[b] = jnp.eye(2 ** size[b], dtype=jnp.complex128).reshape((2,) * (2 * size[b]))
            blocks[b] = _embed(blocks[b], op.matrix().reshape((2,) * (2 * k)), [p - b * BLOCK for p in pos])
            continue
        for bb in sorted(bs & set(blocks)):
            flush_block(bb)
        if diagonal:
            d = jnp.diagonal(op.matrix()).reshape((2,) * k)
            order = np.argsort(pos)
            d = jnp.transpose(d, order).reshape([2 if i in pos else 1 for i in range(n)])
            diag = d if diag is None else diag * d
            diag_wires.update(pos)
        else:
            if diag_wires & set(pos):
                flush_diag()
            steps.append(("gate", op.matrix().reshape((2,) * (2 * k)), tuple(pos)))
    for bb in sorted(blocks):
        flush_block(bb)
    flush_diag()
    return steps


def _adjoint(kind, d):
    """Data of the conjugate-transposed step: block matrix, phase vector or gate tensor (2,)*2k."""
    if kind == "block":
        return d.conj().T
    if kind == "diag":
        return d.conj()
    k = d.ndim // 2
    return jnp.transpose(d.conj(), tuple(range(k, 2 * k)) + tuple(range(k)))


def _apply_block(m, where, psi, n):
    """Block matrix on positions [start, start+s): one plain GEMM with the block axis moved to the front.

    (A batched contraction (A, 2ˢ, R) with the block axis in the middle compiles to many tiny
    products on CPU and is far slower than transpose + GEMM + transpose.)
    """
    start, s = where
    if start == 0:
        return (m @ psi.reshape(2**s, -1)).reshape(psi.shape)
    x = jnp.swapaxes(psi.reshape(2**start, 2**s, -1), 0, 1).reshape(2**s, -1)
    y = (m @ x).reshape(2**s, 2**start, -1)
    return jnp.swapaxes(y, 0, 1).reshape(psi.shape)


def _apply_diag(d, where, psi, n):
    return psi * d[:, None]


def _apply_gate(g, pos, psi, n):
    k, cols = len(pos), psi.shape[-1]
    t = jnp.tensordot(g, psi.reshape((2,) * n + (cols,)), axes=(tuple(range(k, 2 * k)), pos))
    return jnp.moveaxis(t, tuple(range(k)), pos).reshape(psi.shape)


_APPLY = {"block": _apply_block, "diag": _apply_diag, "gate": _apply_gate}


_ROTATIONS = {"RX": qml.RX, "RY": qml.RY, "RZ": qml.RZ}


def hardware_efficient(n: int, layers: int = 2, rotations: Sequence[str] = ("RX", "RZ"),
                       entangler: str = "CZ") -> Circuit:
    """Hardware-efficient ansatz on wires 0…n−1, φ of shape (layers, n, len(rotations)).

    Each layer: the single-qubit ``rotations`` (default RX(φ[l,i,0]) then RZ(φ[l,i,1])) on
    every qubit, then the entangler on the open chain: ``"CZ"`` (controlled phase π) on the
    even pairs (0,1), (2,3), … and then the odd pairs (1,2), (3,4), …; or ``"CNOT"``, a
    ladder CNOT(0,1), CNOT(1,2), …, CNOT(n−2,n−1), which spreads correlations along the
    whole chain in one layer. With ``rotations=("RY", "RZ"), entangler="CNOT"`` three layers
    reach D(ρ‖σ_β) ≈ 0.2 on the n = 6 TFIM ring at β = 1, the CZ/RX default only ≈ 0.72.
    """
    if not isinstance(n, int) or n < 1 or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"need integers n >= 1 and layers >= 1, got n={n!r}, layers={layers!r}")
    rotations = tuple(rotations)
    if not rotations or any(r not in _ROTATIONS for r in rotations):
        raise ValueError(f"rotations must be a non-empty sequence of {sorted(_ROTATIONS)}, got {rotations!r}")
    if entangler not in ("CZ", "CNOT"):
        raise ValueError(f"entangler must be 'CZ' or 'CNOT', got {entangler!r}")
    gates = [_ROTATIONS[r] for r in rotations]
    pairs = ([(i, i + 1) for start in (0, 1) for i in range(start, n - 1, 2)] if entangler == "CZ"
             else [(i, i + 1) for i in range(n - 1)])
    two_qubit = qml.CZ if entangler == "CZ" else qml.CNOT

    def qfunc(phi):
        for l in range(layers):
            for i in range(n):
                for r, gate in enumerate(gates):
                    gate(phi[l, i, r], wires=i)
            for pair in pairs:
                two_qubit(wires=list(pair))

    return Circuit(qfunc, range(n), (layers, n, len(gates)))


def tfim_qaoa(graph: nx.Graph, layers: int = 2) -> Circuit:
    """TFIM-structured layers U = Π_l e^{−iγ_l H_zz} e^{−iδ_l H_x}, φ[l] = (γ_l, δ_l), shape (layers, 2).

    H_zz = Σ_{(i,j)∈E} Z_i Z_j, H_x = Σ_i X_i on the graph's sorted nodes; each layer applies
    RX(2δ_l) on every node, then IsingZZ(2γ_l) on every edge (IsingZZ(t) = e^{−i t ZZ/2}).
    A real-time Trotter step of tfim(graph, J, h) over Δt is γ = −JΔt, δ = −hΔt.
    """
    if not isinstance(graph, nx.Graph) or graph.number_of_nodes() == 0:
        raise ValueError("tfim_qaoa needs a non-empty networkx graph")
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be an integer >= 1, got {layers!r}")
    nodes, edges = sorted(graph.nodes), list(graph.edges())

    def qfunc(phi):
        for l in range(layers):
            for v in nodes:
                qml.RX(2 * phi[l, 1], wires=[v])
            for u, v in edges:
                qml.IsingZZ(2 * phi[l, 0], wires=[u, v])

    return Circuit(qfunc, nodes, (layers, 2))


def qhea(n: int, layers: int = 7) -> Circuit:
    r"""The QHBM authors' hardware-efficient ansatz (google/qhbm-library ``baselines/pqc.py``),
    φ of shape (layers, 3n − 1) in cirq's *exponent* units (angle = π·exponent).

    Each layer: on every qubit i, X^{a_i} then Z^{b_i} (cirq powers: RX(πa), RZ(πb) up to a
    global phase), φ[l, 2i] = a_i, φ[l, 2i+1] = b_i; then a parameterized CZ^c
    = diag(1, 1, 1, e^{iπc}) (``qml.ControlledPhaseShift(πc)``) on the open chain's even
    pairs (0,1), (2,3), … and then its odd pairs (1,2), (3,4), …, exponents φ[l, 2n:] in
    that order. The authors initialise every exponent from N(0, 0.1²).
    """
    if not isinstance(n, int) or n < 2 or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"need integers n >= 2 and layers >= 1, got n={n!r}, layers={layers!r}")
    pairs = [(i, i + 1) for start in (0, 1) for i in range(start, n - 1, 2)]

    def qfunc(phi):
        for l in range(layers):
            for i in range(n):
                qml.RX(np.pi * phi[l, 2 * i], wires=i)
                qml.RZ(np.pi * phi[l, 2 * i + 1], wires=i)
            for k, pair in enumerate(pairs):
                qml.ControlledPhaseShift(np.pi * phi[l, 2 * n + k], wires=list(pair))

    return Circuit(qfunc, range(n), (layers, 3 * n - 1))
