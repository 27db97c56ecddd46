"""Exact thermodynamics vs QuTiP (QuTiP's fidelity is the square root of ours) and closed forms."""

import jax
import networkx as nx
import numpy as np
import pytest
import scipy.linalg

import qgeom  # noqa: F401
from qgeom.quantum import (
    entropy,
    fidelity,
    free_energy,
    gibbs_state,
    hamiltonian_matrix,
    log_partition,
    relative_entropy,
    tfim,
    thermal_energy,
    thermal_entropy,
    trace_distance,
)

qutip = pytest.importorskip("qutip")


def random_rho(seed, n, rank=None):
    rng = np.random.default_rng(seed)
    d = 2**n
    a = rng.normal(size=(d, rank or d)) + 1j * rng.normal(size=(d, rank or d))
    rho = a @ a.conj().T
    return rho / np.trace(rho)


def test_gibbs_state_and_thermodynamics_vs_qutip():
    H = tfim(nx.cycle_graph(4), J=1.0, h=0.6)
    beta = 1.7
    hq = qutip.Qobj(np.asarray(hamiltonian_matrix(H)))
    ref = (-beta * hq).expm()
    z = ref.tr()
    ref = ref / z
    sigma = gibbs_state(H, beta)
    np.testing.assert_allclose(sigma, ref.full(), atol=1e-10)
    assert abs(log_partition(H, beta) - np.log(z)) < 1e-10
    assert abs(free_energy(H, beta) + np.log(z) / beta) < 1e-10
    assert abs(thermal_energy(H, beta) - qutip.expect(hq, ref)) < 1e-10
    assert abs(thermal_entropy(H, beta) - qutip.entropy_vn(ref)) < 1e-10
    assert abs(entropy(sigma) - qutip.entropy_vn(ref)) < 1e-10


def test_log_partition_stable_at_large_beta():
    H = tfim(nx.path_graph(3), 1.0, 0.5)
    w = np.linalg.eigvalsh(np.asarray(hamiltonian_matrix(H)))
    beta = 2000.0  # e^{-βE0} overflows float64; logsumexp does not
    expected = -beta * w[0] + np.log(np.sum(np.exp(-beta * (w - w[0]))))
    assert np.isclose(log_partition(H, beta), expected, rtol=1e-12)
    assert np.all(np.isfinite(gibbs_state(H, beta)))


@pytest.mark.parametrize("seed", [0, 1])
def test_distances_vs_qutip(seed):
    rho, sigma = random_rho(seed, 3), random_rho(seed + 10, 3)
    qr, qs = qutip.Qobj(rho), qutip.Qobj(sigma)
    assert abs(entropy(rho) - qutip.entropy_vn(qr)) < 1e-10
    assert abs(relative_entropy(rho, sigma) - qutip.entropy_relative(qr, qs)) < 1e-10
    assert abs(fidelity(rho, sigma) - qutip.fidelity(qr, qs) ** 2) < 1e-10  # ours is squared
    assert abs(trace_distance(rho, sigma) - qutip.tracedist(qr, qs)) < 1e-10


def test_rank_deficient_states():
    pure = random_rho(3, 2, rank=1)
    mixed = random_rho(4, 2)
    assert abs(entropy(pure)) < 1e-10
    # F(pure, σ) = ⟨ψ|σ|ψ⟩
    w, v = np.linalg.eigh(pure)
    psi = v[:, -1]
    assert abs(fidelity(pure, mixed) - np.real(psi.conj() @ mixed @ psi)) < 1e-10
    # D(pure‖σ) = −⟨ψ|log σ|ψ⟩; D(σ‖pure) = ∞ (support not contained)
    d = -np.real(psi.conj() @ scipy.linalg.logm(mixed) @ psi)
    assert abs(relative_entropy(pure, mixed) - d) < 1e-10
    assert relative_entropy(mixed, pure) == np.inf


def test_jit_in_beta():
    Hm = hamiltonian_matrix(tfim(nx.path_graph(3), 1.0, 0.5))
    f = jax.jit(lambda b: log_partition(Hm, b))
    # d log Z/dβ = −E
    assert abs(jax.grad(f)(0.8) + thermal_energy(Hm, 0.8)) < 1e-12


def test_bad_inputs_raise():
    H = tfim(nx.path_graph(2))
    for beta in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="beta"):
            gibbs_state(H, beta)
    rho = random_rho(0, 1)
    with pytest.raises(ValueError, match="trace"):
        entropy(2 * rho)
    with pytest.raises(ValueError, match="Hermitian"):
        entropy(rho + np.array([[0, 1], [0, 0]]))
    with pytest.raises(ValueError, match="positive"):
        fidelity(np.diag([1.5, -0.5]), rho)
    with pytest.raises(ValueError, match="square"):
        trace_distance(np.ones((2, 3)), rho)
