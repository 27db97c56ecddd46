"""Benchmark: generic ``bkm(rho_fn, θ).dense()`` against ``jax.hessian`` of the relative entropy.

Family (100 parameters at every n, full rank for every θ):

    ρ(θ) = e^{−H(θ)} / Tr e^{−H(θ)},   H(θ) = Σ_k θ_k P_k

over 100 distinct random 1- to 3-local Pauli words P_k (θ_k ∼ N(0, 0.3²)), assembled by a
scatter-add of each word's signed permutation and diagonalized once per evaluation; at n = 4
H is checked against PennyLane's ``qml.dot`` of Pauli words. Both methods see the same ``rho_fn``:

* ours: ``jax.jit(lambda t: bkm(rho_fn, t).dense())`` — one eigh, one jacfwd of ρ, one
  weighted contraction;
* reference: ``jax.jit(jax.hessian(θ' ↦ D(ρ_θ ‖ ρ_θ')))`` at θ' = θ with
  D = Tr ρ(log ρ − log σ), logarithms by eigh.

Timings: ``time.perf_counter`` around ``block_until_ready``, after a warm-up (compile) call,
median of repeats. A method is skipped at a size where its time extrapolated from the previous
size (×8 per qubit) exceeds ``--budget`` seconds. Ends with ``bkm_vs_hessian_speedup_n8=<ratio>``.

Then the QHBM-structured BKM metric (``--qhbm-qubits``; model: order-2 parity EBM + 3 layers of
RY, RZ and a CNOT ladder, the studies' ``cx3``; VQT on the TFIM ring, J = h = 1, β = 1), all timed
side by side in one run:

* ``qhbm_bkm(...).dense()`` (exact; single-qubit gates share one half-size product per wire and
  run), its two phases (the per-gate generators; the weighted Gram product), and a roofline:
  the GEMM flops of the algorithm (``exact_bkm_flops``) over this process's measured float64
  GEMM rate at the run-product shape (2ⁿ × 2ⁿ⁻¹ × 2ⁿ⁺¹) — a lower bound on its CPU time. Against
  the per-gate reference, one 2ⁿ×2ⁿ product V_g†(H_g V_g) per gate (the previous algorithm, kept
  here as ``per_gate_reference``; up to ``--reference-max-n``);
* ``qhbm_bkm_nystrom`` of rank ``--rank`` (``--power-iters``, ``--oversample``; matrix-free products
  by the frame sweeps), next to the same Nyström with the autodiff product (``autodiff_mv``, up to
  ``--reference-max-n``); its error ‖G − Ĝ‖₂/‖G‖₂ against the exact block next to the optimal
  λ_{k+1}/‖G‖₂ (n ≤ 8);
* one jitted training step — VQT loss and gradient plus the optimizer update — for Adam and for
  QPNGD (``natural_gradient``, ``refresh_every = --refresh-every``) with the exact and the Nyström
  metric; a QPNGD step is timed as the mean over ``refresh_every`` consecutive steps (one refresh).
  Ratios to the Adam step are printed, and the smallest refresh period k₂ with a QPNGD step
  ≤ 2× Adam's: a step costs s + M/k (M: the metric, from the table; s: the rest of the step,
  from the measured mean), so k₂ = M/(2·Adam − s). Ends with ``qpngd_over_adam_n<n>=<exact>,<nystrom>``.

Times are CPU seconds of this process (``time.process_time``, all threads; robust to other jobs
sharing the machine) next to wall seconds; the 1-minute load average is printed.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import optax

import qgeom  # noqa: F401  (float64)
from qgeom.linalg import cmatmul
from qgeom.metrics import bkm, qhbm_bkm
from qgeom.metrics.lowrank import nystrom
from qgeom.metrics.qhbm import (
    _apply_gate,
    _gate_generators,
    _per_gate_generators,
    circuit_bkm_matrix,
    exact_bkm_flops,
)
from qgeom.metrics.qhbm_lowrank import _bkm_weights, qhbm_bkm_nystrom
from qgeom.optimize.natural import natural_gradient
from qgeom.quantum import QHBM, Parity, hardware_efficient, tfim, vqt_loss

N_PARAMS = 100


def pauli_action(word: str):
    """(perm, phase) with P|x⟩ = phase(x)|perm(x)⟩ for a Pauli word over n wires (wire 0 = most significant bit)."""
    n = len(word)
    x = np.arange(2**n)
    bits = (x[:, None] >> (n - 1 - np.arange(n))) & 1  # (D, n), big-endian
    flip = np.array([c in "XY" for c in word])
    perm = x ^ int("".join("1" if f else "0" for f in flip), 2)
    phase = np.ones(2**n, complex)
    for i, c in enumerate(word):
        if c == "Z":
            phase *= (-1.0) ** bits[:, i]
        elif c == "Y":
            phase *= 1j * (-1.0) ** bits[:, i]
    return perm, phase


def random_words(n, count, rng):
    """``count`` distinct random Pauli words with support size 1–3 (wire 0 first)."""
    words = set()
    while len(words) < count:
        k = int(rng.integers(1, 4))
        w = ["I"] * n
        for i in rng.choice(n, k, replace=False):
            w[i] = str(rng.choice(list("XYZ")))
        words.add("".join(w))
    return sorted(words)


def make_family(n, seed=0):
    """(rho_fn, θ, words): ρ(θ) = e^{−H(θ)}/Z, H(θ) = Σ_k θ_k P_k over N_PARAMS random Pauli words.

    H is assembled by a scatter-add of the words' (permutation, phase) actions, so no stack of
    4ⁿ-entry Pauli matrices is held; ρ = V softmax(−w) V† from one eigh.
    """
    rng = np.random.default_rng(seed)
    words = random_words(n, N_PARAMS, rng)
    actions = [pauli_action(w) for w in words]
    dim = 2**n
    rows = jnp.asarray(np.stack([a[0] for a in actions]))  # P_k|x⟩ = phase_k(x)|perm_k(x)⟩
    cols = jnp.asarray(np.broadcast_to(np.arange(dim), rows.shape))
    phases = jnp.asarray(np.stack([a[1] for a in actions]))

    def rho_fn(theta):
        vals = theta[:, None] * phases
        h = jnp.zeros((dim, dim), jnp.complex128).at[rows, cols].add(vals)
        w, v = jnp.linalg.eigh(h)
        return (v * jax.nn.softmax(-w)) @ v.conj().T

    theta = jnp.asarray(rng.normal(0.0, 0.3, N_PARAMS))
    return rho_fn, theta, words


def check_against_pennylane(n=4):
    """H(θ) from the scatter equals PennyLane's Σ θ_k P_k (``qml.pauli.string_to_pauli_word`` + ``qml.matrix``)."""
    import pennylane as qml

    rho_fn, theta, words = make_family(n, seed=1)
    ops = [qml.pauli.string_to_pauli_word(w, wire_map={i: i for i in range(n)}) for w in words]
    h = qml.matrix(qml.dot(list(np.asarray(theta)), ops), wire_order=range(n))
    w, v = np.linalg.eigh(h)
    want = (v * np.exp(-w)) @ v.conj().T
    np.testing.assert_allclose(rho_fn(theta), want / np.trace(want), atol=1e-12)


def hessian_reference(rho_fn):
    """θ ↦ ∂²/∂θ'² D(ρ_θ ‖ ρ_θ') at θ' = θ by ``jax.hessian`` (logarithms by eigh)."""

    def logm(r):
        w, v = jnp.linalg.eigh(r)
        return (v * jnp.log(w)) @ v.conj().T

    def hess(params):
        rho = rho_fn(params)

        def rel(tp):
            return jnp.real(jnp.trace(rho @ (logm(rho) - logm(rho_fn(tp)))))

        return jax.hessian(rel)(params)

    return hess


def timed(fn, arg, repeats, slow=30.0):
    """(median seconds over ``repeats`` calls after one warm-up/compile call, output).

    If the warm-up call alone took longer than ``slow`` seconds, a single timed call is made.
    """
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(arg))
    if time.perf_counter() - t0 > slow:
        repeats = 1
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(arg))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _skip_note(n, what, predicted, budget):
    return f"{n:>3} {2**n:>5}   {what} skipped: predicted ~{predicted:.0f} s > budget {budget:.0f} s (dim³ scaling)"


def per_gate_reference(model, params):
    """Circuit BKM block by the previous algorithm: one product T_g = −V_g†(H_g V_g) per gate."""
    circuit, phi = model.circuit, params["phi"]
    ops, gens, pos_of = _gate_generators(circuit, phi)
    n, d = circuit.n, 2**circuit.n
    v = jnp.eye(d, dtype=jnp.complex128).reshape((2,) * n + (d,))
    prefixes, h_prefixes, it = [], [], iter(gens)
    for op in ops:
        pos = tuple(pos_of[w] for w in op.wires.tolist())
        v = _apply_gate(op.matrix(), pos, v)
        if op.num_params == 1:
            prefixes.append(v.reshape(d, d))
            h_prefixes.append(_apply_gate(next(it), pos, v).reshape(d, d))
    per_gate = -cmatmul(jnp.stack(prefixes).conj(), jnp.stack(h_prefixes), "gki,gkl->gil")
    log_p = jax.nn.log_softmax(-model.ebm.energies(params["theta"]))
    return circuit_bkm_matrix(per_gate, log_p)  # cx3: one gate per parameter, J = I


def timed_cpu(fn, args, repeats=2):
    """(cpu seconds, wall seconds, output): minimum over ``repeats`` calls after a warm-up call."""
    out = jax.block_until_ready(fn(*args))
    cpu, wall = [], []
    for _ in range(repeats):
        c, t = time.process_time(), time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - t)
    return min(cpu), min(wall), out


def autodiff_mv(model, params):
    """G_φ·v by autodiff (the previous product): tangent of the simulated U, U† by the reversed simulation, reverse pass."""
    circuit, phi = model.circuit, params["phi"]
    w = _bkm_weights(model.ebm, params["theta"])
    _, tangent = jax.linearize(circuit.unitary, phi)
    return jax.grad(lambda v: 0.5 * jnp.sum(w * jnp.abs(circuit.apply_adjoint(phi, tangent(v))) ** 2))


def gemm_rate(n, repeats=3):
    """Float64 GEMM flops per CPU second of this process at the run-product shape 2ⁿ × 2ⁿ⁻¹ × 2ⁿ⁺¹."""
    d = 2**n
    rng = np.random.default_rng(0)
    a, b = jnp.asarray(rng.normal(size=(d, d // 2))), jnp.asarray(rng.normal(size=(d // 2, 2 * d)))
    cpu, _, _ = timed_cpu(jax.jit(jnp.matmul), (a, b), repeats)
    return 2.0 * d**3 / cpu


def qhbm_problem(n):
    model = QHBM(Parity(n, 2), hardware_efficient(n, 3, rotations=("RY", "RZ"), entangler="CNOT"))
    return model, model.init(jax.random.PRNGKey(n)), vqt_loss(model, tfim(nx.cycle_graph(n)), 1.0)


def train_steps(loss, opt, steps):
    """Jitted ``steps`` consecutive optimizer steps (value, gradient, update) from (params, state)."""
    vg = jax.value_and_grad(loss)

    @jax.jit
    def run(params, state):
        def body(carry, _):
            p, st = carry
            value, grads = vg(p)
            updates, st = opt.update(grads, st, p, value=value)
            return (optax.apply_updates(p, updates), st), value

        return jax.lax.scan(body, (params, state), None, length=steps)

    return run


def qhbm_section(args):
    """Exact structured BKM (phases, roofline) vs per-gate reference and Nyström; Adam vs amortized QPNGD steps."""
    ny = dict(power_iters=args.power_iters, oversample=args.oversample)
    print(f"\nQHBM BKM (cx3: order-2 parity EBM, 3 RY/RZ/CNOT-ladder layers), load {os.getloadavg()[0]:.1f}; "
          "times in CPU s (wall s)", flush=True)
    print(f"{'n':>3} {'P':>4} {'exact':>15} {'generators':>10} {'Gram':>6} {'GFLOP':>6} {'GF/cpu-s':>8} {'bound':>6} "
          f"{'per-gate ref':>15} {'Nystrom r=' + str(args.rank):>16} {'autodiff mv':>15} {'err/|G|':>8} {'lam/|G|':>8}",
          flush=True)
    key, k = jax.random.PRNGKey(0), args.refresh_every
    results = {}
    for n in args.qhbm_qubits:
        model, params, loss = qhbm_problem(n)
        n_par = sum(x.size for x in jax.tree.leaves(params))
        n_phi = params["phi"].size
        c_ex, w_ex, g = timed_cpu(jax.jit(lambda p, m=model: qhbm_bkm(m, p).dense()), (params,))
        c_gen, _, gens = timed_cpu(jax.jit(lambda p, m=model: _per_gate_generators(m.circuit, p["phi"])[0]), (params,), 1)
        log_p = jax.nn.log_softmax(-model.ebm.energies(params["theta"]))
        c_gram, _, _ = timed_cpu(jax.jit(circuit_bkm_matrix), (gens, log_p), 1)
        del gens
        flops, rate = exact_bkm_flops(model.circuit, params["phi"])["flops"], gemm_rate(n)
        nys = jax.jit(lambda p, m=model: qhbm_bkm_nystrom(m, p, args.rank, key, **ny).blocks["phi"].dense())
        c_ny, w_ny, g_ny = timed_cpu(nys, (params,))
        ref = auto = "—"
        if n <= args.reference_max_n:
            c_ref, w_ref, g_ref = timed_cpu(jax.jit(lambda p, m=model: per_gate_reference(m, p)), (params,), 1)
            assert np.allclose(g_ref, g[:n_phi, :n_phi], atol=1e-9 * np.abs(g_ref).max())
            ref = f"{c_ref:.3f} ({w_ref:.2f})"
            c_au, w_au, g_au = timed_cpu(jax.jit(lambda p, m=model: nystrom(autodiff_mv(m, p), p["phi"], args.rank, key,
                                                                           **ny).dense()), (params,), 1)
            assert np.allclose(g_au, g_ny, atol=1e-9 * np.abs(g_au).max())
            auto = f"{c_au:.3f} ({w_au:.2f})"
        err = lam = ""
        if n <= 8:
            block = np.asarray(g[:n_phi, :n_phi])
            top = np.linalg.norm(block, 2)
            err = f"{np.linalg.norm(block - np.asarray(g_ny), 2) / top:.3f}"
            lam = f"{np.linalg.eigvalsh(block)[::-1][args.rank] / top:.3f}"
        print(f"{n:>3} {n_par:>4} {c_ex:>7.3f} ({w_ex:>5.2f}) {c_gen:>10.3f} {c_gram:>6.3f} {flops / 1e9:>6.1f} "
              f"{rate / 1e9:>8.1f} {flops / rate:>6.2f} {ref:>15} {c_ny:>8.3f} ({w_ny:>5.2f}) {auto:>15} {err:>8} {lam:>8}",
              flush=True)
        results[n] = dict(model=model, params=params, loss=loss, metric={"exact": c_ex, "nystrom": c_ny})

    print(f"\ntraining step (VQT loss + gradient + update), QPNGD refreshed every k = {k} steps; CPU ms (wall ms); "
          "k2: smallest k with a step <= 2x Adam's", flush=True)
    print(f"{'n':>3} {'Adam':>15} {'QPNGD exact':>15} {'ratio':>6} {'k2':>5} {'QPNGD Nystrom':>15} {'ratio':>6} {'k2':>5}",
          flush=True)
    summary = {}
    for n, r in results.items():
        model, params, loss = r["model"], r["params"], r["loss"]
        opts = {
            "adam": optax.adam(1e-2),
            "exact": natural_gradient(lambda p, m=model: qhbm_bkm(m, p), 0.1, refresh_every=k, shift=0.0),
            "nystrom": natural_gradient(lambda p, m=model: qhbm_bkm_nystrom(m, p, args.rank, key, **ny), 0.1,
                                        refresh_every=k, shift=0.0),
        }
        times = {}
        for name, opt in opts.items():
            state = opt.init(params)
            c, w, _ = timed_cpu(train_steps(loss, opt, k), (params, state), 1)
            times[name] = (c / k, w / k)
        ca, wa = times["adam"]
        cells, ratios = [], []
        for name in ("exact", "nystrom"):
            c, w = times[name]
            rest = c - r["metric"][name] / k
            k2 = r["metric"][name] / (2 * ca - rest) if 2 * ca > rest else float("inf")
            cells.append(f"{1e3 * c:>7.1f} ({1e3 * w:>5.0f}) {c / ca:>6.2f} {math.ceil(k2) if k2 < 1e9 else 'never':>5}")
            ratios.append(c / ca)
        summary[n] = ratios
        print(f"{n:>3} {1e3 * ca:>7.1f} ({1e3 * wa:>5.0f}) {cells[0]} {cells[1]}", flush=True)
    for n, (e, y) in summary.items():
        print(f"qpngd_over_adam_n{n}={e:.2f},{y:.2f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qubits", type=int, nargs="*", default=[4, 6, 8, 10], help="generic section sizes (none: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=600.0, help="skip a method at a size where its time, extrapolated from the previous size, exceeds this (s)")
    parser.add_argument("--qhbm-qubits", type=int, nargs="*", default=[6, 8, 9, 10], help="QHBM-structured section sizes (none: skip)")
    parser.add_argument("--rank", type=int, default=8, help="Nyström rank of the circuit block")
    parser.add_argument("--power-iters", type=int, default=1, help="Nyström power (subspace) iterations q")
    parser.add_argument("--oversample", type=int, default=5, help="Nyström oversampling p (rank + p test vectors)")
    parser.add_argument("--refresh-every", type=int, default=20, help="QPNGD metric refresh period k")
    parser.add_argument("--reference-max-n", type=int, default=9, help="largest n for the per-gate reference")
    args = parser.parse_args(argv)

    check_against_pennylane()
    print(f"family: rho = exp(-sum_k theta_k P_k)/Z, {N_PARAMS} random 1-3-local Pauli words (H checked vs PennyLane)", flush=True)
    print(f"{'n':>3} {'dim':>5} {'bkm.dense (s)':>14} {'hessian (s)':>12} {'speedup':>8} {'max|diff|':>10}", flush=True)
    rows = {}
    last = {}  # method -> (n, seconds) of its largest completed size
    for n in args.qubits:
        rho_fn, theta, _ = make_family(n)
        times = {}
        methods = {
            "bkm": lambda: jax.jit(lambda t: bkm(rho_fn, t).dense()),
            "hessian": lambda: jax.jit(hessian_reference(rho_fn)),
        }
        for name, make in methods.items():
            if name in last:  # both methods are dominated by dim³ linear algebra: ×8 per added qubit
                predicted = last[name][1] * 8.0 ** (n - last[name][0])
                if predicted > args.budget:
                    print(_skip_note(n, name, predicted, args.budget), flush=True)
                    continue
            times[name] = timed(make(), theta, args.repeats)
            last[name] = (n, times[name][0])
        if len(times) == 2:
            (t_ours, g), (t_ref, h) = times["bkm"], times["hessian"]
            diff = float(jnp.max(jnp.abs(g - h)))
            print(f"{n:>3} {2**n:>5} {t_ours:>14.4f} {t_ref:>12.4f} {t_ref / t_ours:>8.1f} {diff:>10.2e}", flush=True)
            rows[n] = (t_ours, t_ref)
        elif "bkm" in times:
            print(f"{n:>3} {2**n:>5} {times['bkm'][0]:>14.4f} {'skipped':>12}", flush=True)
    if 8 in rows:
        print(f"bkm_vs_hessian_speedup_n8={rows[8][1] / rows[8][0]:.2f}", flush=True)
    else:
        print("bkm_vs_hessian_speedup_n8=nan", flush=True)
    if args.qhbm_qubits:
        qhbm_section(args)


if __name__ == "__main__":
    main()
