r"""Parameterized circuits: PennyLane qfuncs compiled to a jit-able, differentiable unitary.

A :class:`Circuit` wraps ``qfunc(phi)`` (any PennyLane quantum function that only
applies gates) with its wires and parameter shape. The gate list is recorded
with ``qml.tape.make_qscript`` (operators without a matrix are decomposed; the
structure must not depend on the parameter values). :meth:`Circuit.apply` then
multiplies a (2ⁿ, C) block of state vectors by U(φ) gate by gate — each gate's
small matrix ``op.matrix()`` contracted into the state tensor of shape
(2,)*n + (C,), so a k-qubit gate costs O(2ᵏ·2ⁿ·C), and runs of gates diagonal in
the Z basis (RZ, CZ, IsingZZ, PhaseShift, …) are fused into one elementwise
phase. The unitary is ``apply(phi, I)`` — O(G·4ⁿ), never a 2ⁿ×2ⁿ matmul per gate.

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
        """Gate steps: ("diag", full 2ⁿ phase tensor) for fused diagonal runs, ("gate", matrix, positions)."""
        ops = self.operations(phi)
        if tuple((op.name, tuple(op.wires.tolist())) for op in ops) != self._signature:
            raise ValueError("the circuit's gate sequence depends on the parameter values; it must be fixed")
        n, steps, diag = self.n, [], None
        for op in ops:
            pos = [self._pos[w] for w in op.wires.tolist()]
            k = len(pos)
            if op.name in diagonal_in_z_basis:
                d = jnp.diagonal(op.matrix()).reshape((2,) * k)
                order = np.argsort(pos)
                d = jnp.transpose(d, order).reshape([2 if i in pos else 1 for i in range(n)])
                diag = d if diag is None else diag * d
            else:
                if diag is not None:
                    steps.append(("diag", diag))
                    diag = None
                order = tuple(int(i) for i in np.argsort(pos))
                g = jnp.transpose(op.matrix().reshape((2,) * (2 * k)), order + tuple(k + i for i in order))
                steps.append(("gate", g, tuple(sorted(pos))))
        if diag is not None:
            steps.append(("diag", diag))
        return steps

    def apply(self, phi, states):
        """U(φ) @ states for a (2ⁿ, C) block of column vectors (or a single 2ⁿ vector)."""
        self.check_params(phi)
        states = jnp.asarray(states, dtype=jnp.complex128)
        vec = states.ndim == 1
        if vec:
            states = states[:, None]
        if states.shape[0] != 2**self.n:
            raise ValueError(f"states must have leading dimension 2^{self.n} = {2**self.n}, got {states.shape}")
        n, cols = self.n, states.shape[1]
        steps = self._steps(phi)
        kinds = [s[0] for s in steps]
        wires_of = [s[2] if s[0] == "gate" else None for s in steps]
        data = [s[1] for s in steps]

        def run(data_seg, kinds_seg, wires_seg, psi):
            for kind, d, pos in zip(kinds_seg, data_seg, wires_seg):
                if kind == "diag":
                    psi = psi * d[..., None]
                else:
                    psi = _apply_gate(d, pos, psi)
            return psi

        psi = states.reshape((2,) * n + (cols,))
        if 16 * 2**n * cols <= CHECKPOINT_BYTES or len(steps) < 4:
            psi = run(data, kinds, wires_of, psi)
        else:
            seg = math.ceil(math.sqrt(len(steps)))
            for s in range(0, len(steps), seg):
                ks, ws = tuple(kinds[s : s + seg]), tuple(wires_of[s : s + seg])
                psi = jax.checkpoint(lambda ds, p, ks=ks, ws=ws: run(ds, ks, ws, p))(data[s : s + seg], psi)
        out = psi.reshape(2**n, cols)
        return out[:, 0] if vec else out

    def unitary(self, phi):
        """U(φ) as a complex128 2ⁿ×2ⁿ matrix (jit-able, differentiable in both modes)."""
        check_dense(self.n, copies=4, what="circuit unitary")
        return self.apply(phi, jnp.eye(2**self.n, dtype=jnp.complex128))


jax.tree_util.register_static(Circuit)


def _apply_gate(g, pos, psi):
    """Apply a k-qubit gate (tensor (2,)*2k, sorted positions ``pos``) to psi of shape (2,)*n + (C,).

    For k ≤ 2 the contraction is written as 2ᵏ elementwise linear combinations of
    slices (fusable, memory-bound); larger gates use ``tensordot``.
    """
    k, n = len(pos), psi.ndim - 1
    if k > 2:
        psi = jnp.tensordot(g, psi, axes=(tuple(range(k, 2 * k)), pos))
        return jnp.moveaxis(psi, tuple(range(k)), pos)
    # shape (2^{p_1}, 2, 2^{p_2-p_1-1}, 2, …, rest): gate axes at 1, 3, …
    bounds = (-1,) + pos + (n,)
    shape = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        shape += [2 ** (b - a - 1), 2] if b < n else [2 ** (b - a - 1) * psi.shape[-1]]
    x = psi.reshape(shape)
    axes = [1 + 2 * t for t in range(k)]
    slices = {}
    for bits in np.ndindex(*(2,) * k):
        idx = [slice(None)] * len(shape)
        for ax, bit in zip(axes, bits):
            idx[ax] = bit
        slices[bits] = x[tuple(idx)]
    outs = {a: sum(g[a + b] * slices[b] for b in slices) for a in slices}

    def stack(prefix, t):
        if t == k:
            return outs[prefix]
        return jnp.stack([stack(prefix + (bit,), t + 1) for bit in (0, 1)], axis=axes[t] - t)

    return stack((), 0).reshape(psi.shape)


def hardware_efficient(n: int, layers: int = 2) -> Circuit:
    """Hardware-efficient ansatz on wires 0…n−1, φ of shape (layers, n, 2).

    Each layer: RX(φ[l,i,0]) then RZ(φ[l,i,1]) on every qubit, then CZ (controlled phase π)
    on the even pairs (0,1), (2,3), … and then the odd pairs (1,2), (3,4), … (open chain).
    """
    if not isinstance(n, int) or n < 1 or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"need integers n >= 1 and layers >= 1, got n={n!r}, layers={layers!r}")

    def qfunc(phi):
        for l in range(layers):
            for i in range(n):
                qml.RX(phi[l, i, 0], wires=i)
                qml.RZ(phi[l, i, 1], wires=i)
            for start in (0, 1):
                for i in range(start, n - 1, 2):
                    qml.CZ(wires=[i, i + 1])

    return Circuit(qfunc, range(n), (layers, n, 2))


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
    nodes, edges = sorted(graph.nodes), list(graph.edges)

    def qfunc(phi):
        for l in range(layers):
            for v in nodes:
                qml.RX(2 * phi[l, 1], wires=[v])
            for u, v in edges:
                qml.IsingZZ(2 * phi[l, 0], wires=[u, v])

    return Circuit(qfunc, nodes, (layers, 2))
