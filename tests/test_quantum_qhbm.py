"""QHBM: closed forms, dense linear algebra, PennyLane default.mixed, sampling statistics."""

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pennylane as qml
import pytest
import scipy.linalg

import qgeom  # noqa: F401
from qgeom.quantum import (
    QHBM,
    Bernoulli,
    Circuit,
    Ising,
    Parity,
    bits_to_index,
    entropy,
    hamiltonian_matrix,
    hardware_efficient,
    tfim,
    tfim_qaoa,
    vqt_loss,
)
from qgeom.quantum.qhbm import PreparedObservable


def ry_layer(n):
    def qfunc(phi):
        for i in range(n):
            qml.RY(phi[i], wires=i)

    return Circuit(qfunc, range(n), (n,))


def test_product_state_closed_forms():
    # ρ = ⊗_i RY(φ_i) diag(p_i) RY(φ_i)†, p_i(s) ∝ e^{−θ_i s}: ⟨Z_i⟩ = −tanh θ_i cos φ_i, ⟨X_i⟩ = −tanh θ_i sin φ_i,
    # S = Σ_i [log 2cosh θ_i − θ_i tanh θ_i]
    n = 3
    model = QHBM(Bernoulli(n), ry_layer(n))
    params = model.init(jax.random.PRNGKey(0))
    a, b = np.array([0.5, -1.2, 0.8]), np.array([1.1, 0.3, -0.7])
    H = qml.Hamiltonian(list(a) + list(b), [qml.Z(i) for i in range(n)] + [qml.X(i) for i in range(n)])
    th, ph = np.asarray(params["theta"]), np.asarray(params["phi"])
    m = -np.tanh(th)
    energy = np.sum(m * (a * np.cos(ph) + b * np.sin(ph)))
    ent = np.sum(np.log(2 * np.cosh(th)) - th * np.tanh(th))
    assert abs(jax.jit(lambda p: model.expectation(p, H))(params) - energy) < 1e-12
    assert abs(jax.jit(model.entropy)(params) - ent) < 1e-12
    beta = 0.7
    g = jax.jit(jax.grad(vqt_loss(model, H, beta)))(params)
    sech2 = 1 / np.cosh(th) ** 2
    g_theta = beta * (-sech2) * (a * np.cos(ph) + b * np.sin(ph)) + th * sech2  # −∂S/∂θ = θ sech²θ
    g_phi = beta * m * (-a * np.sin(ph) + b * np.cos(ph))
    np.testing.assert_allclose(g["theta"], g_theta, atol=1e-12)
    np.testing.assert_allclose(g["phi"], g_phi, atol=1e-12)


MODELS = {
    "bernoulli_hea": QHBM(Bernoulli(3), hardware_efficient(3, 2)),
    "parity_qaoa": QHBM(Parity(4, 2), tfim_qaoa(nx.cycle_graph(4), 2)),
    "ising_hea": QHBM(Ising(nx.path_graph(5)), hardware_efficient(5, 1)),
}


@pytest.mark.parametrize("name", MODELS)
def test_operators_vs_dense_linear_algebra(name):
    model = MODELS[name]
    params = model.init(jax.random.PRNGKey(1))
    rho = np.asarray(model.density_matrix(params))
    assert abs(np.trace(rho) - 1) < 1e-12 and np.allclose(rho, rho.conj().T, atol=1e-14)
    np.testing.assert_allclose(model.log_density_matrix(params), scipy.linalg.logm(rho), atol=1e-9)
    k = np.asarray(model.modular_hamiltonian(params))
    np.testing.assert_allclose(
        scipy.linalg.expm(-k) / np.exp(model.log_partition(params)), rho, atol=1e-12
    )
    assert abs(model.entropy(params) - entropy(rho)) < 1e-10
    H = tfim(nx.cycle_graph(model.n), 0.9, 0.6) + 0.4 * qml.Y(0) @ qml.Y(2)
    Hm = np.asarray(hamiltonian_matrix(H, model.wires))
    ref = np.trace(rho @ Hm).real
    assert abs(model.expectation(params, H) - ref) < 1e-12
    assert abs(model.expectation(params, Hm) - ref) < 1e-12


def test_pauli_path_equals_dense_path():
    model = QHBM(Parity(6, 2), hardware_efficient(6, 2))
    params = model.init(jax.random.PRNGKey(2))
    H = tfim(nx.cycle_graph(6), 1.0, 0.7) + 0.3 * qml.Y(0) @ qml.Y(3) + 0.2 * qml.X(1) @ qml.Z(2) @ qml.Y(5)
    from qgeom.quantum import pauli_tables

    flips, d = pauli_tables(H, model.wires)
    pauli = PreparedObservable(flips, jnp.asarray(d), None)
    dense = model.prepare(hamiltonian_matrix(H, model.wires))
    ep, gp = jax.jit(jax.value_and_grad(lambda p: model.expectation(p, pauli)))(params)
    ed, gd = jax.jit(jax.value_and_grad(lambda p: model.expectation(p, dense)))(params)
    assert abs(ep - ed) < 1e-12
    for x, y in zip(jax.tree.leaves(gp), jax.tree.leaves(gd)):
        np.testing.assert_allclose(x, y, atol=1e-12)


@pytest.mark.parametrize("name", ["bernoulli_hea", "parity_qaoa"])
def test_density_matrix_vs_pennylane_default_mixed(name):
    model = MODELS[name]
    params = model.init(jax.random.PRNGKey(3))
    dev = qml.device("default.mixed", wires=model.wires)

    @qml.qnode(dev)
    def rho_qnode(p, phi):
        qml.QubitDensityMatrix(jnp.diag(p).astype(jnp.complex128), wires=model.wires)
        model.circuit.qfunc(phi)
        return qml.density_matrix(wires=model.wires)

    ref = rho_qnode(model.probabilities(params), params["phi"])
    np.testing.assert_allclose(model.density_matrix(params), ref, atol=1e-12)


def test_sample_frequencies_match_diagonal():
    model = MODELS["bernoulli_hea"]
    params = model.init(jax.random.PRNGKey(4))
    shots = 40_000
    x = model.sample(params, jax.random.PRNGKey(5), shots)
    freq = np.bincount(np.asarray(bits_to_index(x)), minlength=8) / shots
    diag = np.real(np.diag(model.density_matrix(params)))
    assert np.all(np.abs(freq - diag) < 5 * np.sqrt(diag * (1 - diag) / shots) + 1e-12)


def test_bad_inputs_raise():
    model = MODELS["bernoulli_hea"]
    params = model.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="keys"):
        model.probabilities({"theta": params["theta"]})
    with pytest.raises(ValueError, match="shape"):
        model.unitary({"theta": params["theta"], "phi": jnp.zeros(3)})
    with pytest.raises(ValueError, match="wires"):
        model.expectation(params, qml.Z(7))
    with pytest.raises(ValueError, match="Hermitian"):
        model.expectation(params, qml.Hamiltonian([1j], [qml.X(0)]))
    with pytest.raises(ValueError, match="dimension"):
        model.expectation(params, jnp.eye(4))
    with pytest.raises(ValueError, match="bits"):
        QHBM(Bernoulli(4), hardware_efficient(3, 1))
