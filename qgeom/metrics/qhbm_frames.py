r"""Frames of a circuit, and matrix-free products with the QHBM circuit BKM block from them.

A single-qubit gate g on wire w has the generator T_g = −V_g†H_gV_g = F† O_g F (in the model's
eigenframe) for any prefix F of the circuit taken after the last multi-qubit gate on w and
before g, with the 2×2 O_g = −L†H_gL (L the single-qubit gates on w in between; gates on other
wires commute with O_g). ``_frames`` picks as few such frame points as one sweep allows
(interval stabbing: a new frame only when the current one lies before a multi-qubit gate on
g's wire) — one per layer of a hardware-efficient ansatz.

``frame_mv`` multiplies the circuit block G_ij = Σ_kl W_kl Re[(T_i)_kl (T_j)_lk] by a vector
with two sweeps of conjugations X ↦ R X R† by the circuit segments R between frames (fused
simulations of the segment on a 2ⁿ×2ⁿ block, never a 2ⁿ×2ⁿ product): a Horner sweep back
builds T_v = Σ_g v_g T_g, a sweep forward reads Tr(T_g (W ⊙ T_v)) off single-qubit
reductions. With L frames that is 4(L − 1) segment simulations (≈ 4 circuit simulations) per
product, against ≈ 6 for the autodiff product of ``qhbm_lowrank`` (tangent, adjoint simulation
and the reverse pass of both).

Tried and dropped (README, "Exact QHBM metric"): the dense block from frame pairs. W has rank
≤ 4 (W_kl = a_k + a_l − p_kℓ_l − ℓ_kp_l, ℓ = log p, a = pℓ), so
G_ij = Re[2Tr(D_aT_iT_j) − Tr(D_pT_iD_ℓT_j) − Tr(D_ℓT_iD_pT_j)], each term a Gram product of
the stacks O_iY† and (O_jY')ᵀ with Y = F_{f'}D_uF_f† from segment simulations: 4.8× fewer
flops than the generator algorithm at n = 10, but memory-bound on the stacks (m_f matrices of
4ⁿ entries per term and frame pair) and 1.6–2.2× slower at n = 8–10.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from qgeom.metrics.qhbm import _gate_generators, angle_jacobian
from qgeom.quantum.circuits import _adjoint, _plan


def _frames(ops, gens, pos_of):
    """Frame points and local operators of every parameterized gate, or None.

    Returns (points, members): ``points[f]`` is the index of the first gate after frame f's
    prefix; ``members[f]`` lists (gate number, wire position, 2×2 O_g = −L†H_gL). None if some
    parameterized gate acts on several qubits (the generator algorithm handles those).
    """
    last_multi = {}  # wire position -> index of its last multi-qubit gate
    local = {}  # wire position -> product of the single-qubit gates on it since the current frame point
    points, members, g = [], [], 0
    for idx, op in enumerate(ops):
        pos = [pos_of[w] for w in op.wires.tolist()]
        if len(pos) > 1:
            if op.num_params:
                return None
            for w in pos:
                last_multi[w] = idx
            continue
        (w,) = pos
        if op.num_params and (not points or points[-1] <= last_multi.get(w, -1)):
            points.append(idx)  # new frame: prefix = gates before idx
            members.append([])
            local = {}
        if points:  # a wire hit by a multi-qubit gate since the frame point goes stale, unused: its next
            # parameterized gate opens a new frame (and empties ``local``) first
            local[w] = jnp.asarray(op.matrix(), dtype=jnp.complex128) @ local.get(w, jnp.eye(2, dtype=jnp.complex128))
        if op.num_params:
            lmat = local[w]
            members[-1].append((g, w, -(lmat.conj().T @ gens[g] @ lmat)))
            g += 1
    return points, members


def _local_indices(n):
    """Per wire w (row-major, wire 0 the most significant bit): bit_w(k) and k with bit w flipped, (n, 2ⁿ)."""
    k = np.arange(2**n)
    shifts = n - 1 - np.arange(n)[:, None]
    return (k >> shifts) & 1, k ^ (1 << shifts)


def frame_mv(circuit, phi, weights):
    """``v ↦ G v`` in gate space from frames (Horner sweep back, conjugation sweep forward), or None.

    T_v = Σ_g v_g T_g = F_0†(O_0(v) + R_0†(O_1(v) + R_1†(…)R_1)R_0)F_0, O_f(v) = Σ_{g∈f} v_g O_g
    a sum of single-qubit operators; then (Gv)_g = Tr(T_g M) = Tr(O_g F_f M F_f†) with
    M = W ⊙ T_v (W symmetric, so Σ_kl W_kl (T_g)_kl (T_v)_lk = Tr(T_g M)), read off the
    single-qubit reductions of F_f M F_f† while M is conjugated forward frame by frame.
    Each conjugation is two fused simulations of a circuit segment on a 2ⁿ×2ⁿ block; with L
    frames that is 4(L − 1) segment simulations per product (≈ 4 simulations of the circuit).
    Returns ``mv(v_flat) -> G_φ v_flat`` (chain rule through the gate angles' Jacobian), or None
    when a parameterized gate acts on several qubits or has no single generator.
    """
    found = _gate_generators(circuit, phi)
    if found is None:
        return None
    ops, gens, pos_of = found
    n, d = circuit.n, 2**circuit.n
    framed = _frames(ops, gens, pos_of)
    if framed is None:
        return None
    points, members = framed
    jac = angle_jacobian(circuit, phi)
    positions = [[pos_of[w] for w in op.wires.tolist()] for op in ops]
    bounds = [0] + list(points)
    fwd = [_plan(ops[lo:hi], positions[lo:hi], n) for lo, hi in zip(bounds[:-1], bounds[1:])]
    adj = [[(k, _adjoint(k, m), w) for k, m, w in reversed(steps)] for steps in fwd]
    bits, flips = _local_indices(n)
    rows = np.arange(d)

    def sandwich(steps, x):  # S X S† for a Hermitian X, S the steps' product: two simulations
        if not steps:
            return x
        return circuit._run(steps, circuit._run(steps, x).conj().T)

    def local_sum(f, vg):  # Σ_{g∈f} v_g O_g as a dense 2ⁿ×2ⁿ matrix
        ops_w = {}
        for g, w, o in members[f]:
            ops_w[w] = ops_w.get(w, 0.0) + vg[g] * o
        diag = sum(o[bits[w], bits[w]] for w, o in ops_w.items())
        x = jnp.zeros((d, d), jnp.complex128).at[rows, rows].set(diag)
        for w, o in ops_w.items():
            x = x.at[rows, flips[w]].add(o[bits[w], 1 - bits[w]])
        return x

    def readout(f, m):  # Tr(O_g m) for g in frame f, from the single-qubit reductions of m
        diag = jnp.real(jnp.diagonal(m))
        vals = []
        for _, w, o in members[f]:
            off = m[rows, flips[w]]  # m[k, k ⊕ e_w]
            on_k = [diag[bits[w] == s].sum() for s in (0, 1)]
            off_k = [off[bits[w] == s].sum() for s in (0, 1)]  # ρ_w[s, 1−s]
            vals.append(jnp.real(o[0, 0] * on_k[0] + o[1, 1] * on_k[1] + o[0, 1] * off_k[1] + o[1, 0] * off_k[0]))
        return vals

    order = np.concatenate([[m[0] for m in members[f]] for f in range(len(points))]).astype(int)
    inv = np.argsort(order)

    def mv(v):
        vg = jac @ v
        x = local_sum(len(points) - 1, vg)
        for f in range(len(points) - 2, -1, -1):
            x = local_sum(f, vg) + sandwich(adj[f + 1], x)
        m = sandwich(fwd[0], weights * sandwich(adj[0], x))  # F_0 (W ⊙ T_v) F_0†
        out = []
        for f in range(len(points)):
            if f:
                m = sandwich(fwd[f], m)
            out += readout(f, m)
        return jac.T @ jnp.stack(out)[inv]

    return mv
