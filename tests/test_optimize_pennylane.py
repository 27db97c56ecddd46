"""PennyLane-shaped optimizers in real QNode loops (default.mixed, noise channels, QHBM states)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pennylane as qml
import pytest
from jax.flatten_util import ravel_pytree

import qgeom  # noqa: F401
from qgeom.metrics import bkm
from qgeom.optimize import (
    BKMNaturalGradientOptimizer,
    MirrorDescentOptimizer,
    density_divergence,
    mirror_descent,
    qpngd,
)
from qgeom.quantum import QHBM, Parity, hardware_efficient

DEV = qml.device("default.mixed", wires=2)
H = qml.Z(0) @ qml.Z(1) + 0.5 * qml.X(0) + 0.3 * qml.Y(1)


def _gates(a, b):
    qml.RX(a[0], 0)
    qml.RY(a[1], 1)
    qml.CNOT([0, 1])
    qml.DepolarizingChannel(0.1, wires=0)
    qml.RY(b, 0)


@qml.qnode(DEV, interface="jax")
def rho_qnode(a, b):
    _gates(a, b)
    return qml.density_matrix([0, 1])


@qml.qnode(DEV, interface="jax")
def cost_qnode(a, b):
    _gates(a, b)
    return qml.expval(H)


A0, B0 = jnp.array([0.4, -0.3]), jnp.array(0.2)


@pytest.mark.parametrize(
    "opt",
    [BKMNaturalGradientOptimizer(stepsize=0.1), MirrorDescentOptimizer(stepsize=0.1, inner_steps=10, inner_stepsize=0.02)],
    ids=["bkm", "mirror"],
)
def test_qnode_loop_changes_jax_params_and_lowers_cost(opt):
    a, b = A0, B0
    costs = []
    for _ in range(4):
        (a, b), c = opt.step_and_cost(cost_qnode, a, b, rho_fn=rho_qnode)
        costs.append(float(c))
    assert isinstance(a, jax.Array) and isinstance(b, jax.Array)
    assert float(jnp.abs(a - A0).max()) > 1e-3  # unlike qml.QNGOptimizer with JAX arrays
    final = float(cost_qnode(a, b))
    assert final < costs[0] - 1e-3 and all(np.diff(costs + [final]) < 0)


def test_bkm_optimizer_equals_functional_natural_gradient():
    opt = BKMNaturalGradientOptimizer(stepsize=0.2, damping=0.05)
    new_a, new_b = opt.step(cost_qnode, A0, B0, rho_fn=rho_qnode)

    params = (A0, B0)
    g = np.asarray(jax.jit(lambda q: bkm(lambda p: rho_qnode(*p), q).dense())(params))  # generic BKM, dense
    flat_grad, _ = ravel_pytree(jax.grad(lambda p: cost_qnode(*p))(params))
    expected = np.asarray(ravel_pytree(params)[0]) - 0.2 * np.linalg.solve(g + 0.05 * np.eye(3), np.asarray(flat_grad))
    np.testing.assert_allclose(ravel_pytree((new_a, new_b))[0], expected, rtol=1e-9)


def test_mirror_optimizer_equals_functional_mirror_descent():
    opt = MirrorDescentOptimizer(stepsize=0.3, alpha=0.4, inner_steps=15, inner_stepsize=0.01)
    new = opt.step(cost_qnode, A0, B0, rho_fn=rho_qnode)
    params = (A0, B0)
    tx = mirror_descent(density_divergence(lambda p: rho_qnode(*p)), 0.3, 0.4, 15, 0.01)
    grads = jax.grad(lambda p: cost_qnode(*p))(params)
    expected = optax.apply_updates(params, jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params))
    for x, y in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


def test_qhbm_qnode_step_equals_structured_qpngd():
    """A QHBM written as a QNode (diag(p_θ) prepared, circuit applied): the generic-metric
    PennyLane step equals qpngd's structured block-diagonal step."""
    model = QHBM(Parity(2, 2), hardware_efficient(2, 1))
    params = model.init(jax.random.PRNGKey(4))
    dev = qml.device("default.mixed", wires=2)

    @qml.qnode(dev, interface="jax")
    def rho(theta, phi):
        qml.QubitDensityMatrix(jnp.diag(model.ebm.probabilities(theta)).astype(jnp.complex128), wires=[0, 1])
        model.circuit.qfunc(phi)
        return qml.density_matrix([0, 1])

    h = qml.matrix(H, wire_order=[0, 1])
    cost = lambda theta, phi: jnp.real(jnp.trace(rho(theta, phi) @ h)) - model.entropy({"theta": theta, "phi": phi})  # noqa: E731
    opt = BKMNaturalGradientOptimizer(stepsize=0.3, damping=0.02)
    theta, phi = opt.step(cost, params["theta"], params["phi"], rho_fn=rho)

    tx = qpngd(model, 0.3, damping=0.02, shift=0.0)
    loss = lambda p: cost(p["theta"], p["phi"])  # noqa: E731
    expected = optax.apply_updates(params, jax.jit(lambda p: tx.update(jax.grad(loss)(p), tx.init(p), p)[0])(params))
    np.testing.assert_allclose(theta, expected["theta"], rtol=1e-8)
    np.testing.assert_allclose(phi, expected["phi"], rtol=1e-8)


def test_single_array_and_tuple_params():
    opt = BKMNaturalGradientOptimizer(stepsize=0.1)
    w = jnp.array([0.4, -0.3, 0.2])
    new_w = opt.step(lambda w: cost_qnode(w[:2], w[2]), w, rho_fn=lambda w: rho_qnode(w[:2], w[2]))
    assert isinstance(new_w, jax.Array) and new_w.shape == (3,)
    pair = (A0, B0)
    new_pair, c = opt.step_and_cost(lambda p: cost_qnode(*p), pair, rho_fn=lambda p: rho_qnode(*p))
    assert isinstance(new_pair, tuple) and len(new_pair) == 2
    np.testing.assert_allclose(ravel_pytree(new_pair)[0], new_w, rtol=1e-10)  # same problem, same step
    assert float(c) == pytest.approx(float(cost_qnode(A0, B0)))


def test_nan_cost_is_rejected_and_damping_raised():
    opt = BKMNaturalGradientOptimizer(stepsize=0.1, damping=0.01)
    with pytest.warns(RuntimeWarning, match="step rejected"):
        new, c = opt.step_and_cost(lambda a, b: cost_qnode(a, b) * jnp.nan, A0, B0, rho_fn=rho_qnode)
    np.testing.assert_array_equal(new[0], A0)
    assert np.isnan(float(c)) and opt.damping > 0.01


def test_rho_fn_must_return_a_density_matrix():
    opt = MirrorDescentOptimizer()
    with pytest.raises(ValueError, match="density matrix"):
        opt.step(cost_qnode, A0, B0, rho_fn=cost_qnode)  # an expectation value, not ρ
    with pytest.raises(ValueError, match="rho_fn"):
        opt.step(cost_qnode, A0, B0)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: BKMNaturalGradientOptimizer(stepsize=-0.1), "stepsize"),
        (lambda: BKMNaturalGradientOptimizer(stepsize=float("nan")), "stepsize"),
        (lambda: BKMNaturalGradientOptimizer(damping=-1.0), "damping"),
        (lambda: MirrorDescentOptimizer(alpha=2.0), "alpha"),
        (lambda: MirrorDescentOptimizer(inner_steps=0), "inner_steps"),
        (lambda: MirrorDescentOptimizer(inner_stepsize=0.0), "inner_stepsize"),
    ],
)
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()
