"""Compiled circuits vs PennyLane's own matrices, finite differences and both AD modes."""

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pennylane as qml
import pytest

import qgeom  # noqa: F401
import qgeom.quantum.circuits as circuits_mod
from qgeom.quantum import Circuit, hardware_efficient, tfim_qaoa


def _custom(phi):
    qml.RX(phi[0], wires="a")
    qml.CNOT(wires=["c", "a"])
    qml.Toffoli(wires=["b", "a", "c"])
    qml.CRY(phi[1], wires=["a", "c"])
    qml.SWAP(wires=["b", "a"])
    qml.Rot(phi[2], phi[3], phi[4], wires="b")
    qml.MultiRZ(phi[5], wires=["a", "b", "c"])
    qml.StronglyEntanglingLayers(phi[6:].reshape(1, 3, 3), wires=["c", "b", "a"])  # template: decomposed


CIRCUITS = {
    "hardware_efficient": hardware_efficient(5, 2),
    "hardware_efficient_cnot": hardware_efficient(5, 2, rotations=("RY", "RZ"), entangler="CNOT"),
    "tfim_qaoa_ring": tfim_qaoa(nx.cycle_graph(4), 3),
    "tfim_qaoa_grid": tfim_qaoa(nx.grid_2d_graph(2, 2), 2),
    "custom": Circuit(_custom, ["a", "b", "c"], (15,)),
}


@pytest.mark.parametrize("name", CIRCUITS)
def test_unitary_matches_qml_matrix(name):
    c = CIRCUITS[name]
    phi = c.init(jax.random.PRNGKey(0), scale=1.0)
    u = jax.jit(c.unitary)(phi)
    np.testing.assert_allclose(u, qml.matrix(c.qfunc, wire_order=c.wires)(phi), atol=1e-13)
    np.testing.assert_allclose(u @ u.conj().T, np.eye(2**c.n), atol=1e-13)
    # a block of columns equals U @ block
    cols = jnp.asarray(np.random.default_rng(0).normal(size=(2**c.n, 3)) + 0j)
    np.testing.assert_allclose(c.apply(phi, cols), u @ cols, atol=1e-13)
    np.testing.assert_allclose(c.apply_adjoint(phi, cols), u.conj().T @ cols, atol=1e-13)


def _scalar(c):
    h = jnp.asarray(np.random.default_rng(1).normal(size=(2**c.n,)))
    return jax.jit(lambda phi: jnp.sum(h * jnp.abs(c.unitary(phi)[:, 1]) ** 2))


@pytest.mark.parametrize("name", ["hardware_efficient", "hardware_efficient_cnot", "custom"])
def test_gradient_vs_finite_differences_and_forward_mode(name):
    c = CIRCUITS[name]
    f = _scalar(c)
    phi = c.init(jax.random.PRNGKey(2), scale=1.0)
    g = jax.jit(jax.grad(f))(phi)
    eps = 1e-6
    flat = np.asarray(phi).ravel()
    fd = np.zeros_like(flat)
    for k in range(flat.size):
        d = np.zeros_like(flat)
        d[k] = eps
        fd[k] = (f((flat + d).reshape(phi.shape)) - f((flat - d).reshape(phi.shape))) / (2 * eps)
    np.testing.assert_allclose(np.asarray(g).ravel(), fd, atol=1e-8)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(f))(phi), g, atol=1e-12)


def test_checkpointed_path_same_values_and_gradients(monkeypatch):
    c = hardware_efficient(4, 3)
    h = jnp.asarray(np.random.default_rng(1).normal(size=(2**c.n,)))

    def f(phi):
        return jnp.sum(h * jnp.abs(c.unitary(phi)[:, 1]) ** 2)

    phi = c.init(jax.random.PRNGKey(3))
    v, g = jax.jit(jax.value_and_grad(f))(phi)
    monkeypatch.setattr(circuits_mod, "CHECKPOINT_BYTES", 0)
    v2, g2 = jax.jit(jax.value_and_grad(f))(phi)
    assert abs(v - v2) < 1e-13
    np.testing.assert_allclose(g, g2, atol=1e-13)


def test_tfim_qaoa_layer_is_trotter_step():
    # one layer with γ = −JΔt, δ = −hΔt equals e^{iJΔt H_zz} e^{ihΔt H_x} (exact: each part commutes internally)
    g = nx.cycle_graph(3)
    J, h, dt = 0.8, 0.6, 0.3
    c = tfim_qaoa(g, 1)
    hzz = qml.matrix(qml.sum(*[qml.Z(i) @ qml.Z(j) for i, j in g.edges]), wire_order=range(3))
    hx = qml.matrix(qml.sum(*[qml.X(i) for i in range(3)]), wire_order=range(3))
    import scipy.linalg

    ref = scipy.linalg.expm(1j * J * dt * hzz) @ scipy.linalg.expm(1j * h * dt * hx)
    np.testing.assert_allclose(c.unitary(jnp.array([[-J * dt, -h * dt]])), ref, atol=1e-13)


def test_bad_circuits_raise():
    c = hardware_efficient(3, 1)
    with pytest.raises(ValueError, match="shape"):
        c.unitary(jnp.zeros((2, 3, 2)))

    def prep(phi):
        qml.BasisState(jnp.array([1, 0]), wires=[0, 1])
        qml.RX(phi[0], wires=0)

    with pytest.raises(ValueError, match="state preparation"):
        Circuit(prep, [0, 1], (1,))
    with pytest.raises(ValueError, match="outside"):
        Circuit(lambda phi: qml.RX(phi[0], wires=5), [0, 1], (1,))
    with pytest.raises(ValueError, match="GiB"):
        hardware_efficient(20, 1).unitary(jnp.zeros((1, 20, 2)))


@pytest.mark.parametrize("kwargs, match", [(dict(rotations=("RW",)), "rotations"), (dict(rotations=()), "rotations"),
                                           (dict(entangler="iSWAP"), "entangler")])
def test_hardware_efficient_rejects_unknown_gates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hardware_efficient(3, 1, **kwargs)
