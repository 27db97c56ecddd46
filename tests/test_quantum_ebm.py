"""Energy-based models: brute-force enumeration, closed forms and sampling statistics."""

import itertools

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pennylane as qml
import pytest

import qgeom  # noqa: F401
from qgeom.quantum import Bernoulli, Ising, Parity, basis_bits, bits_to_index


def brute_energies(subsets, theta, n):
    """E(x) = Σ_b θ_b Π_{i∈b} (1 − 2 x_i) by explicit loops over bit strings."""
    out = []
    for bits in itertools.product([0, 1], repeat=n):  # big-endian order
        s = [1 - 2 * b for b in bits]
        out.append(sum(t * np.prod([s[i] for i in b]) for t, b in zip(theta, subsets)))
    return np.array(out)


@pytest.mark.parametrize(
    "model", [Bernoulli(3), Parity(4, 2), Parity(3, 3), Ising(nx.cycle_graph(4)), Ising(nx.star_graph(3))], ids=repr
)
def test_exact_quantities_vs_brute_force(model):
    theta = model.init(jax.random.PRNGKey(0))
    e = brute_energies(model.subsets, np.asarray(theta), model.n)
    np.testing.assert_allclose(model.energies(theta), e, atol=1e-13)
    log_z = np.log(np.sum(np.exp(-e)))
    assert abs(model.log_partition(theta) - log_z) < 1e-12
    np.testing.assert_allclose(model.probabilities(theta), np.exp(-e - log_z), atol=1e-13)
    # operator form K_θ = Σ θ_b Z^b has diagonal E_θ
    k = qml.matrix(model.operator(theta), wire_order=range(model.n))
    np.testing.assert_allclose(np.diag(k).real, e, atol=1e-12)
    assert np.allclose(k, np.diag(np.diag(k)))


def test_bernoulli_closed_form_and_gradient():
    m = Bernoulli(5)
    theta = m.init(jax.random.PRNGKey(1))
    assert abs(m.log_partition(theta) - np.sum(np.log(2 * np.cosh(np.asarray(theta))))) < 1e-12
    # ∂ log Z / ∂θ_i = −E_p[s_i] = −tanh θ_i
    g = jax.grad(lambda t: jax.scipy.special.logsumexp(-m.energies(t)))(theta)
    np.testing.assert_allclose(g, np.tanh(theta), atol=1e-12)
    assert Parity(5, 2).param_shape == (15,)
    assert Ising(nx.cycle_graph(5)).param_shape == (10,)


@pytest.mark.parametrize("model", [Bernoulli(4), Ising(nx.cycle_graph(4))], ids=repr)
def test_exact_sampling_frequencies(model):
    theta = model.init(jax.random.PRNGKey(2))
    shots = 40_000
    x = model.sample(theta, jax.random.PRNGKey(3), shots)
    assert x.shape == (shots, 4)
    freq = np.bincount(np.asarray(bits_to_index(x)), minlength=16) / shots
    p = np.asarray(model.probabilities(theta))
    # 5 standard errors of a multinomial frequency
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / shots) + 1e-12)


def test_mcmc_sampling_large_ising_ring_correlations():
    # 24-spin ring (beyond exact sampling), zero field, coupling θ_ij = −K: p ∝ e^{K Σ s_i s_{i+1}},
    # exact ⟨s_i s_{i+1}⟩ = (t + t^{N−1}) / (1 + t^N), t = tanh K (transfer matrix)
    n, k = 24, 0.5
    model = Ising(nx.cycle_graph(n))
    theta = jnp.concatenate([jnp.zeros(n), jnp.full(n, -k)])
    x = model.sample(theta, jax.random.PRNGKey(4), 2000, sweeps=30)
    s = 1 - 2 * np.asarray(x)
    t = np.tanh(k)
    corr = np.mean(s * np.roll(s, -1, axis=1))
    # tolerance: 0.03 ≈ 6 standard errors of 48k bond samples (correlation length ~1.3 sites)
    assert abs(corr - (t + t ** (n - 1)) / (1 + t**n)) < 0.03
    assert abs(s.mean()) < 0.05


def test_basis_bits_big_endian():
    np.testing.assert_array_equal(basis_bits(3)[6], [1, 1, 0])
    np.testing.assert_array_equal(bits_to_index(basis_bits(4)), np.arange(16))


def test_bad_parameters():
    with pytest.raises(ValueError, match="shape"):
        Bernoulli(3).energies(jnp.zeros(4))
    with pytest.raises(ValueError, match="order"):
        Parity(3, 4)
    with pytest.raises(ValueError, match="GiB"):
        Parity(40, 1).energies(jnp.zeros(40))
