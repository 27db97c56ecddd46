"""Frame sweeps (``qgeom.metrics.qhbm_frames``) and the flop count of the exact QHBM metric.

* ``circuit_bkm_mv`` through the frame sweeps vs the dense circuit block of ``qhbm_bkm``
  (per-gate generators and one Gram product: a different algorithm), on a circuit whose
  frames are not layer starts: a
  non-parameterized prefix, single-qubit gates before and after CNOTs on the same wire, a
  non-parameterized gate inside a run, and parameters shared between gates (chain rule);
* circuits with a multi-qubit parameterized gate fall back to the autodiff product (tangent of
  the simulated U), against the same dense block;
* ``exact_bkm_flops`` counts n(L − 1) run products for an L-layer hardware-efficient ansatz.
"""

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pennylane as qml
import pytest

import qgeom  # noqa: F401  (float64)
from qgeom.metrics import qhbm_bkm
from qgeom.metrics.qhbm import angle_jacobian, exact_bkm_flops
from qgeom.metrics.qhbm_frames import _frames, frame_mv
from qgeom.metrics.qhbm_lowrank import circuit_bkm_mv
from qgeom.quantum import QHBM, Circuit, Parity, hardware_efficient, tfim_qaoa

EPS = np.finfo(float).eps


def _tangled(phi):
    qml.Hadamard(0)
    qml.CNOT([0, 1])
    qml.RY(phi[0], wires=1)
    qml.RX(phi[1], wires=0)
    qml.CNOT([1, 2])
    qml.S(wires=1)
    qml.RZ(phi[2], wires=1)
    qml.RY(2.0 * phi[0], wires=2)  # φ₀ in two gates
    qml.CNOT([2, 0])
    qml.RX(phi[3], wires=0)
    qml.Hadamard(2)
    qml.RY(phi[4], wires=2)
    qml.RZ(phi[1], wires=1)


@pytest.mark.parametrize("make", [lambda: Circuit(_tangled, range(3), (5,)), lambda: tfim_qaoa(nx.cycle_graph(3), 2)],
                         ids=["frames", "multi-qubit-fallback"])
def test_frame_product_equals_dense_block(make):
    model = QHBM(Parity(3, 2), make())
    params = model.init(jax.random.PRNGKey(4))
    g = np.asarray(jax.jit(lambda p: qhbm_bkm(model, p).blocks["phi"].dense())(params))
    vs = jax.random.normal(jax.random.PRNGKey(5), (3,) + params["phi"].shape)
    got = np.asarray(jax.jit(jax.vmap(lambda v: circuit_bkm_mv(model, params)(v)))(vs)).reshape(3, -1)
    flat = np.asarray(vs).reshape(3, -1)
    # forward computations of G v: rounding ≲ (gates + P) ε ‖G‖ ‖v‖
    tol = 100 * 20 * EPS * np.linalg.norm(g, 2) * np.linalg.norm(flat, axis=1, keepdims=True)
    assert np.all(np.abs(got - flat @ g) <= tol)


def test_frames_of_the_tangled_circuit():
    circuit = Circuit(_tangled, range(3), (5,))
    phi = jnp.arange(5.0)
    from qgeom.metrics.qhbm import _gate_generators

    ops, gens, _ = _gate_generators(circuit, phi)
    points, members = _frames(ops, gens, {w: w for w in range(3)})
    # frame at gate 2 (RY on 1, after CNOT(0,1)), RX on 0 joins; RZ on 1 follows CNOT(1,2): frame
    # at 6 (S(1) before it goes into the prefix), RY on 2 joins; RX on 0 follows CNOT(2,0): frame
    # at 9, RY on 2 (H(2) absorbed into its O) and RZ on 1 join
    assert points == [2, 6, 9]
    assert [[m[0] for m in f] for f in members] == [[0, 1], [2, 3], [4, 5, 6]]
    assert frame_mv(tfim_qaoa(nx.cycle_graph(3), 1), jnp.ones((1, 2)), jnp.ones((8, 8))) is None
    assert angle_jacobian(circuit, phi).shape == (7, 5)


def test_exact_flops_count_runs():
    for n, layers in [(3, 2), (5, 3)]:
        circuit = hardware_efficient(n, layers, rotations=("RY", "RZ"), entangler="CNOT")
        cost = exact_bkm_flops(circuit, circuit.init(jax.random.PRNGKey(0)))
        d, g = 2**n, 2 * n * layers
        assert cost["run_products"] == n * (layers - 1) and cost["generators"] == g
        assert cost["flops"] == 6 * d**3 * n * (layers - 1) + 4 * g * g * d * d
