"""Benchmark: VQT loss + gradient, our jitted QHBM simulator vs the PennyLane formulation.

Problem: TFIM ring H = −Σ Z_i Z_{i+1} − h Σ X_i (h = 0.8), β = 1, Bernoulli EBM,
2-layer hardware-efficient circuit; loss L = β Tr(ρH) − S(ρ) and its gradient in all
parameters, jitted.

* ours: ``jax.jit(jax.value_and_grad(vqt_loss(QHBM(...), H, β)))`` — U built gate by gate
  on the (2,)*n × 2ⁿ tensor, H applied as Pauli groups (flips × phases) to U's columns;
* PennyLane: a ``default.qubit`` QNode (JAX interface) that prepares |x⟩ with
  ``qml.BasisState``, applies the same qfunc and returns ``qml.expval(H)``, vmapped over
  the 2ⁿ basis states, weighted by p_θ, minus the same entropy, jitted as a whole —
  the best formulation a user would write with PennyLane alone.

Both losses are evaluated at the same parameters and must agree (printed). Timings:
``time.perf_counter`` around ``block_until_ready`` after a warm-up (compile) call,
minimum over repeats (robust to other processes sharing the CPU), both measured in
this run. n = 10 and 12 are ours alone; the peak
resident memory of the process is printed after them. Ends with
``vqt_speedup_vs_pennylane_n8=<ratio>``.
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import networkx as nx
import pennylane as qml

import qgeom  # noqa: F401  (float64)
from qgeom.quantum import QHBM, Bernoulli, basis_bits, hardware_efficient, tfim, vqt_loss

BETA, H_FIELD, LAYERS = 1.0, 0.8, 2


def timed(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return min(times)


def problem(n):
    H = tfim(nx.cycle_graph(n), J=1.0, h=H_FIELD)
    model = QHBM(Bernoulli(n), hardware_efficient(n, LAYERS))
    return H, model, model.init(jax.random.PRNGKey(n))


def pennylane_loss(model, H):
    n = model.n
    dev = qml.device("default.qubit", wires=n)

    @qml.qnode(dev, interface="jax")
    def energy(phi, bits):
        qml.BasisState(bits, wires=range(n))
        model.circuit.qfunc(phi)
        return qml.expval(H)

    states = basis_bits(n)

    def loss(params):
        p = model.probabilities(params)
        e = jax.vmap(energy, in_axes=(None, 0))(params["phi"], states)
        return BETA * jnp.sum(p * e) - model.entropy(params)

    return loss


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", type=int, nargs="*", default=[4, 6, 8])
    ap.add_argument("--alone", type=int, nargs="*", default=[10, 12])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)

    print(f"{'n':>3} {'ours [ms]':>11} {'PennyLane [ms]':>15} {'speedup':>8} {'|ΔL|':>9}")
    speedup = {}
    for n in args.compare:
        H, model, params = problem(n)
        ours = jax.jit(jax.value_and_grad(vqt_loss(model, H, BETA)))
        ref = jax.jit(jax.value_and_grad(pennylane_loss(model, H)))
        t_ours, t_ref = timed(ours, (params,), args.repeats), timed(ref, (params,), max(3, args.repeats // 4))
        (l1, g1), (l2, g2) = ours(params), ref(params)
        gerr = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))
        speedup[n] = t_ref / t_ours
        print(f"{n:>3} {1e3 * t_ours:>11.3f} {1e3 * t_ref:>15.3f} {speedup[n]:>8.1f} {abs(l1 - l2):>9.1e}  (max |Δgrad| {gerr:.1e})")
    for n in args.alone:
        H, model, params = problem(n)
        ours = jax.jit(jax.value_and_grad(vqt_loss(model, H, BETA)))
        t = timed(ours, (params,), max(2, args.repeats // 10))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{n:>3} {1e3 * t:>11.1f} {'—':>15} {'—':>8}  (peak RSS so far {rss:.2f} GiB)")
    if 8 in speedup:
        print(f"vqt_speedup_vs_pennylane_n8={speedup[8]:.1f}")


if __name__ == "__main__":
    main()
