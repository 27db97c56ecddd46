"""Structured metrics of a quantum Hamiltonian-based model (QHBM).

A QHBM is ρ(θ, φ) = U(φ) diag(p_θ) U(φ)†, p_θ(x) ∝ e^{−E_θ(x)}. With the generators
T_j = i U†∂_{φ_j}U of the circuit in the model's eigenframe, ∂_{φ_j}ρ = U i[D, T_j] U†
(D = diag p) has zero diagonal there while ∂_θρ = U diag(∂_θp) U† is diagonal, so the
Bogoliubov–Kubo–Mori metric G_ij = Σ_kl (log p_k − log p_l)/(p_k − p_l) Re[(∂_iρ)_kl (∂_jρ)_lk]
is exactly block-diagonal (Sbahi et al. 2022, "Provably efficient variational generative
modeling of quantum many-body systems via quantum-probabilistic information geometry"):

* EBM block: the classical Fisher of p_θ, Cov_{x∼p}(∇_θE(x), ∇_θE(x));
* circuit block: G_ij = Σ_kl (p_k − p_l)(log p_k − log p_l) Re[(T_i)_kl (T_j)_lk]
  (insert (∂_iρ')_kl = i(p_k − p_l)(T_i)_kl into the BKM formula).

Everything comes from one sweep through the circuit (per-gate generators T_g = −V_g†H_gV_g,
V_g the gates up to g; single-qubit gates of one run on a wire share one half-size product,
see ``_per_gate_generators``), the energies' Jacobian and log p_θ = −E_θ − log Z_θ (exact,
never log of an underflowed p): no eigendecomposition, no matrix logarithm. The weights (p_k − p_l)(log p_k − log p_l) ≥ 0,
so the circuit block is assembled as Re(M M†) with M_i = √W ⊙ T_i — one matrix product.

``qhbm_fubini_study`` is the comparison metric of the Fubini–Study QNG baseline (see its
docstring for the exact convention). ``qhbm_bkm_sampled`` estimates the same BKM blocks
from measurement shots (EBM samples and the parameter-shift rule).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pennylane as qml

from qgeom.linalg import cmatmul
from qgeom.metrics.base import BlockDiagonal, DenseMetric


def _check_qhbm_params(params):
    if not isinstance(params, dict) or set(params) != {"theta", "phi"}:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"QHBM parameters must be a dict with keys ['phi', 'theta'], got {got}")


def _energy_jacobian(ebm, theta):
    """(2ⁿ, P_θ) Jacobian of all energies, and log p_θ (exact log-softmax of −E)."""
    energies = ebm.energies(theta)
    jac = jax.jacfwd(ebm.energies)(theta).reshape(energies.shape[0], -1)
    return jac, jax.nn.log_softmax(-energies)


def ebm_fisher_matrix(ebm, theta):
    """Classical Fisher of p_θ ∝ e^{−E_θ}: Cov_p(∇_θE, ∇_θE), a (P_θ × P_θ) matrix."""
    jac, log_p = _energy_jacobian(ebm, theta)
    p = jnp.exp(log_p)
    centred = jac - p @ jac
    return (centred * p[:, None]).T @ centred


def _gate_generators(circuit, phi):
    """(ops, per-gate generator matrices H_g (gate = e^{iθ_g H_g}, PennyLane's ``qml.generator``),
    {wire: position in ``circuit.wires``}) or None.

    None when some gate has several parameters or no generator (then ``jacfwd`` is used).
    """
    ops = circuit.operations(phi)
    gens = []
    for op in ops:
        if op.num_params > 1:
            return None
        if op.num_params == 1:
            try:
                g = qml.generator(op, format="observable")
            except (qml.operation.GeneratorUndefinedError, NotImplementedError, TypeError, ValueError):
                return None
            gens.append(np.asarray(qml.matrix(g, wire_order=op.wires), dtype=np.complex128))
    return ops, gens, {w: i for i, w in enumerate(circuit.wires)}


def _apply_gate(mat, pos, t):
    """Apply a k-qubit matrix on tensor axes ``pos`` of a (2,)*n + (cols,) tensor."""
    k = len(pos)
    t = jnp.tensordot(jnp.asarray(mat).reshape((2,) * (2 * k)), t, axes=(tuple(range(k, 2 * k)), tuple(pos)))
    return jnp.moveaxis(t, tuple(range(k)), tuple(pos))


def angle_jacobian(circuit, phi):
    """J_gj = ∂θ_g/∂φ_j, (parameterized gates, P_φ), by reverse mode (every gate has one parameter)."""

    def angles(ph):
        return jnp.stack([jnp.asarray(op.data[0], dtype=jnp.float64) for op in circuit.operations(ph)
                          if op.num_params == 1])

    return jax.jacrev(angles)(phi).reshape(-1, jnp.size(phi))


def _per_gate_generators(circuit, phi):
    """Per-gate generators T_g = −V_g† H_g V_g, shape (G, 2ⁿ, 2ⁿ), and J_gj = ∂θ_g/∂φ_j, or None.

    None when some gate has several parameters or no PennyLane generator. One sweep through the
    circuit keeps the prefix V (gates so far). A single-qubit gate g on wire w sees
    V_g = X·L_g·F_w, with F_w the prefix right after the last multi-qubit gate on w (identity
    before any), L_g the single-qubit gates on w since then and X gates on other wires, which
    commute with H_g. So V_g† H_g V_g = F_w† O_g F_w with the 2×2 O_g = L_g† H_g L_g, and
    F† O F = Σ_ab (O_g)_ab F_a† F_b (F_a: rows of F with bit w = a; F_1†F_1 = I − F_0†F_0).
    Every parameterized gate of one run on w thus shares the two half-size products
    F_0†[F_0, F_1] — one 2ⁿ×2ⁿ complex product per (wire, run) instead of one per gate, none
    while F_w is still the identity. Multi-qubit parameterized gates (IsingZZ, …) take one
    product V_g†(H_g V_g) each.
    """
    found = _gate_generators(circuit, phi)
    if found is None:
        return None
    ops, gens, pos_of = found
    n, d = circuit.n, 2**circuit.n

    jac = angle_jacobian(circuit, phi)  # (gates, P_φ)
    eye = jnp.eye(d, dtype=jnp.complex128)
    v = eye.reshape((2,) * n + (d,))
    frame, local = [None] * n, [jnp.eye(2, dtype=jnp.complex128)] * n
    pending, per_gate = [[] for _ in range(n)], [None] * len(gens)

    def flush(w):
        if not pending[w]:
            return
        if frame[w] is None:  # F = I: T_g is O_g on wire w
            for g, o in pending[w]:
                per_gate[g] = -_apply_gate(o, (w,), eye.reshape((2,) * n + (d,))).reshape(d, d)
        else:
            rows = frame[w].reshape(2**w, 2, 2 ** (n - w - 1), d)
            f0, f1 = rows[:, 0].reshape(d // 2, d), rows[:, 1].reshape(d // 2, d)
            c = cmatmul(f0.conj().T, jnp.concatenate([f0, f1], axis=1), gauss=True)
            c00, c01 = c[:, :d], c[:, d:]
            for g, o in pending[w]:
                per_gate[g] = -(o[1, 1] * eye + (o[0, 0] - o[1, 1]) * c00 + o[0, 1] * c01 + o[1, 0] * c01.conj().T)
        pending[w] = []

    it = iter(range(len(gens)))
    for op in ops:
        pos = tuple(pos_of[w] for w in op.wires.tolist())
        mat = op.matrix()
        if len(pos) == 1:
            (w,) = pos
            v = _apply_gate(mat, pos, v)
            local[w] = jnp.asarray(mat, dtype=jnp.complex128) @ local[w]
            if op.num_params == 1:
                g = next(it)
                pending[w].append((g, local[w].conj().T @ gens[g] @ local[w]))
            continue
        for w in pos:
            flush(w)
        v = _apply_gate(mat, pos, v)
        if op.num_params == 1:
            g = next(it)
            prefix = v.reshape(d, d)
            per_gate[g] = -cmatmul(prefix.conj().T, _apply_gate(gens[g], pos, v).reshape(d, d))
        for w in pos:
            frame[w], local[w] = v.reshape(d, d), jnp.eye(2, dtype=jnp.complex128)
    for w in range(n):
        flush(w)
    return jnp.stack(per_gate), jac


def circuit_generators(circuit, phi):
    """T_j = i U†∂_{φ_j}U for every circuit parameter (ravel order): shape (P_φ, 2ⁿ, 2ⁿ). Hermitian.

    Fast path (every gate has at most one parameter and a PennyLane generator H_g, gate
    = e^{iθ_g H_g}): with V_g the product of the gates up to and including gate g,
    i U†∂_{θ_g}U = −V_g† H_g V_g, from one sweep through the circuit (see
    ``_per_gate_generators`` for how single-qubit gates share products); the chain rule through
    J_gj = ∂θ_g/∂φ_j (reverse-mode Jacobian of the gate angles) gives T_j = Σ_g J_gj T_g.
    Otherwise: one ``jax.jacfwd`` of ``circuit.unitary`` (P_φ tangents), ≈ 4× slower at n = 6.
    """
    found = _per_gate_generators(circuit, phi)
    if found is None:
        u = circuit.unitary(phi)
        d = u.shape[0]
        jac = jax.jacfwd(circuit.unitary)(phi).reshape(d, d, -1)
        return 1j * jnp.einsum("ki,klp->pil", u.conj(), jac)
    per_gate, jac = found
    d = per_gate.shape[-1]
    return cmatmul(jac.T, per_gate.reshape(per_gate.shape[0], -1)).reshape(-1, d, d)


def circuit_bkm_matrix(gens, log_p):
    """Circuit block Σ_kl (p_k − p_l)(log p_k − log p_l) Re[(T_i)_kl (T_j)_lk] from generators."""
    p = jnp.exp(log_p)
    w = (p[:, None] - p[None, :]) * (log_p[:, None] - log_p[None, :])
    m = gens.reshape(gens.shape[0], -1)
    s = jnp.sqrt(jnp.maximum(w, 0.0)).reshape(-1)
    mr, mi = m.real * s, m.imag * s  # Re(M M†) = M_r M_rᵀ + M_i M_iᵀ: two real GEMMs (no concatenated copy)
    return mr @ mr.T + mi @ mi.T


def exact_bkm_flops(circuit, phi):
    """Floating-point operations of the GEMMs of ``qhbm_bkm``'s circuit block (fast path), or None.

    Mirrors ``_per_gate_generators``: a (wire, run) product F₀†[F₀, F₁] is three real GEMMs
    (2ⁿ × 2ⁿ⁻¹ × 2ⁿ⁺¹, Gauss), 6·8ⁿ flops; a multi-qubit parameterized gate's product four real
    2ⁿ-cubed GEMMs, 8·8ⁿ; the Gram product over the G gate generators 4G²·4ⁿ. Everything else
    (the prefix sweep, forming each T_g, the weights) is O(G·4ⁿ) memory traffic, not counted.
    Returns a dict with the counts and ``flops``.
    """
    found = _gate_generators(circuit, phi)
    if found is None:
        return None
    ops, gens, pos_of = found
    n, d = circuit.n, 2**circuit.n
    framed, pending = [False] * n, [0] * n
    runs = multi = 0
    for op in ops:
        pos = [pos_of[w] for w in op.wires.tolist()]
        if len(pos) == 1:
            pending[pos[0]] += op.num_params == 1
            continue
        for w in pos:
            runs += bool(pending[w]) and framed[w]
            pending[w], framed[w] = 0, True
        multi += op.num_params == 1
    runs += sum(bool(pending[w]) and framed[w] for w in range(n))
    g = len(gens)
    flops = 6 * d**3 * runs + 8 * d**3 * multi + 4 * g * g * d * d
    return {"run_products": runs, "gate_products": multi, "generators": g, "flops": flops}


def qhbm_bkm(model, params):
    """Exact BKM metric of a QHBM as ``BlockDiagonal({"theta": Fisher, "phi": circuit})``.

    ``model`` exposes ``ebm.energies(theta)`` (all 2ⁿ energies) and ``circuit.unitary(phi)``;
    ``params = {"theta": ..., "phi": ...}``. The (θ, φ) cross block is exactly zero. Equal to
    the generic ``qgeom.metrics.bkm`` of ``model.density_matrix`` and to the Hessian of
    φ', θ' ↦ D(ρ_{θφ} ‖ ρ_{θ'φ'}) at the diagonal (tests/test_qhbm_metric.py). Cost: one
    2ⁿ×2ⁿ complex product per (wire, run of single-qubit gates after its first multi-qubit
    gate) plus one per multi-qubit parameterized gate (three real GEMMs each), and one
    (G × 4ⁿ)·(4ⁿ × G) real Gram product over the G per-gate generators. Measured (cx3 ansatz,
    order-2 parity EBM): 2.3× (n = 8) and 2.4× (n = 9) less CPU time than one product per gate
    (``qgeom bench-metrics``).
    For products without forming the block see ``qgeom.metrics.qhbm_lowrank``.
    """
    _check_qhbm_params(params)
    theta, phi = params["theta"], params["phi"]
    f_theta = ebm_fisher_matrix(model.ebm, theta)
    _, log_p = _energy_jacobian(model.ebm, theta)
    found = _per_gate_generators(model.circuit, phi)
    if found is not None and found[1].shape[0] <= found[1].shape[1]:  # G ≤ P_φ: Jᵀ G_gates J
        per_gate, jac = found
        g_phi = jac.T @ circuit_bkm_matrix(per_gate, log_p) @ jac
    else:
        g_phi = circuit_bkm_matrix(circuit_generators(model.circuit, phi), log_p)
    return BlockDiagonal({"theta": DenseMetric(f_theta, theta), "phi": DenseMetric(g_phi, phi)})


def qhbm_fubini_study(model, params):
    """Fubini–Study comparison metric of a QHBM: identity on θ, p-averaged FS on φ.

    Convention (documented choice; the Fubini–Study metric is the pure-state one):
    G^FS_ij(φ) = Σ_x p_θ(x) Re(⟨∂_iψ_x|∂_jψ_x⟩ − ⟨∂_iψ_x|ψ_x⟩⟨ψ_x|∂_jψ_x⟩),
    ψ_x = U(φ)|x⟩, i.e. Σ_x p_x (Re(T_i T_j)_xx − (T_i)_xx (T_j)_xx). For p concentrated on
    one basis state this is PennyLane's full ``qml.metric_tensor(approx=None)`` of the
    circuit on that input (tests check it). The EBM block is the identity (plain gradient
    on θ): the FS geometry says nothing about the classical part.
    """
    _check_qhbm_params(params)
    theta, phi = params["theta"], params["phi"]
    p = model.ebm.probabilities(theta)
    gens = circuit_generators(model.circuit, phi)
    diag = jnp.real(jnp.diagonal(gens, axis1=1, axis2=2))  # (P, d): (T_i)_xx
    prod = jnp.real(jnp.einsum("ixy,jyx->ijx", gens, gens))  # Re(T_i T_j)_xx (T Hermitian)
    g_phi = prod @ p - (diag * p) @ diag.T
    eye = jnp.eye(jnp.size(theta), dtype=g_phi.dtype)
    return BlockDiagonal({"theta": DenseMetric(eye, theta), "phi": DenseMetric(g_phi, phi)})


def qhbm_bkm_sampled(model, params, key, shots, shift=np.pi / 2):
    """Shot-based estimate of the QHBM BKM metric (same blocks as ``qhbm_bkm``).

    * EBM block: sample covariance (ddof = 1) of ∇_θE(x) over ``shots`` samples x ∼ p_θ.
    * circuit block: G_ij = −∂_{φ_i}∂_{φ'_j} f(φ, φ')|_{φ'=φ}, f = Tr[ρ_{θφ} K_{θφ'}],
      K_{θφ'} = U(φ') diag(E_θ) U(φ')† (log ρ = −K − log Z, and ∂'f = 0 on the diagonal
      gives −∂'∂'f = ∂∂'f). f is measured by preparing ρ_{θφ} (x ∼ p_θ, then U(φ)), applying
      U(φ')†, measuring y in the computational basis and averaging E_θ(y) (the shot counts
      are drawn as one multinomial per shifted pair); the mixed derivative uses the two-term
      parameter-shift rule in both arguments, Σ_{s,s'=±1} s s' f(φ + s·r e_i, φ' + s'·r e_j)
      / (4 sin² r) with r = ``shift`` (default π/2) — valid when every parameter enters one gate whose generator
      has two eigenvalues one apart (Pauli rotations, phase shifts), not for gates like
      e^{−iγ H_zz} with many-valued generators.
    ``shots=None`` uses exact expectations (checks the shift rule itself). Each of the
    4 P_φ² shifted expectations uses ``shots`` fresh shots; the standard error of each
    entry is ~ max|E|/√shots.
    """
    _check_qhbm_params(params)
    if shots is not None and (int(shots) != shots or shots < 2):
        raise ValueError(f"shots must be an integer >= 2 or None, got {shots}")
    theta, phi = params["theta"], params["phi"]
    ebm, circuit = model.ebm, model.circuit
    energies = ebm.energies(theta)
    log_p = jax.nn.log_softmax(-energies)
    k_theta, k_phi = jax.random.split(key)

    if shots is None:
        f_theta = ebm_fisher_matrix(ebm, theta)
    else:
        bits = ebm.sample(theta, k_theta, int(shots))
        grads = jax.vmap(lambda b: jax.grad(lambda t: ebm.energy(t, b))(theta))(bits)
        grads = grads.reshape(grads.shape[0], -1)
        centred = grads - grads.mean(0)
        f_theta = centred.T @ centred / (grads.shape[0] - 1)

    flat_phi = phi.reshape(-1)
    n_phi = flat_phi.shape[0]
    shifts = jnp.concatenate([jnp.eye(n_phi) * shift, -jnp.eye(n_phi) * shift])  # (2P, P)
    unitaries = jax.vmap(lambda d: circuit.unitary((flat_phi + d).reshape(phi.shape)))(shifts)
    # overlap[a, b] = U(φ' shifted b)† U(φ shifted a); outcome y of input x has probability |overlap_yx|²,
    # so measuring ρ_{θφ_a} after U(φ'_b)† gives y with q_ab(y) = Σ_x p_x |overlap_ab,yx|².
    overlap = jnp.einsum("bky,akx->abyx", unitaries.conj(), unitaries)
    q = jnp.einsum("abyx,x->aby", jnp.abs(overlap) ** 2, jnp.exp(log_p))
    if shots is None:
        f = q @ energies
    else:
        counts = jax.random.multinomial(k_phi, int(shots), q / q.sum(-1, keepdims=True))
        f = counts @ energies / int(shots)

    plus, minus = slice(0, n_phi), slice(n_phi, 2 * n_phi)
    mixed = (f[plus, plus] - f[plus, minus] - f[minus, plus] + f[minus, minus]) / (4.0 * np.sin(shift) ** 2)
    g_phi = -mixed
    g_phi = 0.5 * (g_phi + g_phi.T)
    return BlockDiagonal({"theta": DenseMetric(f_theta, theta), "phi": DenseMetric(g_phi, phi)})
