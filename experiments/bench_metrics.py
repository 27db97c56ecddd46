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
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import qgeom  # noqa: F401  (float64)
from qgeom.metrics import bkm

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qubits", type=int, nargs="+", default=[4, 6, 8, 10])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=600.0, help="skip a method at a size where its time, extrapolated from the previous size, exceeds this (s)")
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


if __name__ == "__main__":
    main()
