"""VQT and QMHL losses: variational bound, relative-entropy identity, finite differences, shadow estimator statistics."""

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
import scipy.linalg
from jax.flatten_util import ravel_pytree

import qgeom  # noqa: F401
from qgeom.quantum import (
    QHBM,
    Bernoulli,
    Circuit,
    Ising,
    Parity,
    gibbs_state,
    hardware_efficient,
    log_partition,
    measure_shadows,
    qmhl_loss,
    relative_entropy,
    tfim,
    vqt_loss,
)


def finite_difference_grad(f, params, eps=1e-6):
    flat, unravel = ravel_pytree(params)
    f = jax.jit(f)
    out = np.zeros(flat.size)
    for k in range(flat.size):
        d = jnp.zeros_like(flat).at[k].set(eps)
        out[k] = (f(unravel(flat + d)) - f(unravel(flat - d))) / (2 * eps)
    return out


def test_ising_ebm_identity_circuit_is_exact_at_h0():
    # H = −J Σ ZZ is diagonal: σ_β ∝ e^{βJ Σ s_i s_j} is an Ising EBM with couplings θ_ij = −βJ, fields 0
    g = nx.cycle_graph(5)
    J, beta = 0.8, 1.3
    H = tfim(g, J=J, h=0.0)
    model = QHBM(Ising(g), Circuit(lambda phi: None, sorted(g.nodes), (0,)))
    params = {"theta": jnp.concatenate([jnp.zeros(5), jnp.full(5, -beta * J)]), "phi": jnp.zeros(0)}
    loss = vqt_loss(model, H, beta)
    assert abs(loss(params) + log_partition(H, beta)) < 1e-10
    np.testing.assert_allclose(model.density_matrix(params), gibbs_state(H, beta), atol=1e-12)


def test_vqt_bound_identity_and_gradient():
    g = nx.cycle_graph(3)
    H, beta = tfim(g, 1.0, 0.8), 0.9
    model = QHBM(Parity(3, 2), hardware_efficient(3, 2))
    loss = jax.jit(vqt_loss(model, H, beta))
    log_z = log_partition(H, beta)
    sigma = gibbs_state(H, beta)
    for seed in range(4):
        params = model.init(jax.random.PRNGKey(seed))
        value = loss(params)
        rho = model.density_matrix(params)
        assert abs(value - (relative_entropy(rho, sigma) - log_z)) < 1e-10
        assert value > -log_z
    g_ad = ravel_pytree(jax.jit(jax.grad(loss))(params))[0]
    np.testing.assert_allclose(g_ad, finite_difference_grad(loss, params), atol=1e-7)


def test_qmhl_exact_value_and_gradient():
    g = nx.path_graph(3)
    sigma = np.asarray(gibbs_state(tfim(g, 1.0, 1.2), 1.1))
    model = QHBM(Parity(3, 2), hardware_efficient(3, 2))
    loss = jax.jit(qmhl_loss(model, sigma))
    params = model.init(jax.random.PRNGKey(7))
    rho = np.asarray(model.density_matrix(params))
    assert abs(loss(params) + np.trace(sigma @ scipy.linalg.logm(rho)).real) < 1e-9
    g_ad = ravel_pytree(jax.jit(jax.grad(loss))(params))[0]
    np.testing.assert_allclose(g_ad, finite_difference_grad(loss, params), atol=1e-7)


@pytest.fixture(scope="module")
def shadow_problem():
    g = nx.path_graph(2)
    sigma = np.asarray(gibbs_state(tfim(g, 1.0, 0.9), 1.0))
    model = QHBM(Bernoulli(2), hardware_efficient(2, 1))
    params = model.init(jax.random.PRNGKey(11))
    return sigma, model, params


def test_shadow_estimate_converges_with_stated_tolerance(shadow_problem):
    sigma, model, params = shadow_problem
    shots = 100_000
    data = measure_shadows(sigma, jax.random.PRNGKey(0), shots)
    exact = qmhl_loss(model, sigma)(params)
    est = qmhl_loss(model, data, estimator="unbiased")(params)
    # per-snapshot values ℓ_s = Tr(σ̂_s O), O = −log ρ: their std gives the standard error of the mean
    o = -np.asarray(model.log_density_matrix(params))
    ell = np.real(np.einsum("sab,ba->s", np.asarray(data.snapshots()), o))
    assert abs(ell.mean() - est) < 1e-10  # the estimator is the mean of snapshot values
    se = ell.std() / np.sqrt(shots)
    assert abs(est - exact) < 5 * se  # 5 standard errors
    # and the state estimate itself: entries within 5 standard errors (|snapshot entries| ≤ 2^n·(3/2)^n·…)
    np.testing.assert_allclose(data.unbiased_estimate(), sigma, atol=5 * 2.5 / np.sqrt(shots) * 2)


def test_shadow_loss_and_gradient_are_unbiased(shadow_problem):
    sigma, model, params = shadow_problem
    exact_loss = qmhl_loss(model, sigma)
    exact_v, exact_g = exact_loss(params), ravel_pytree(jax.grad(exact_loss)(params))[0]
    reps, shots = 200, 200
    values, grads = [], []
    for r in range(reps):
        loss = qmhl_loss(model, measure_shadows(sigma, jax.random.PRNGKey(100 + r), shots), estimator="unbiased")
        values.append(loss(params))
        grads.append(ravel_pytree(jax.grad(loss)(params))[0])
    values, grads = np.array(values), np.array(grads)
    # the mean over independent data sets is within 5 standard errors of the exact value/gradient
    assert abs(values.mean() - exact_v) < 5 * values.std() / np.sqrt(reps)
    assert np.all(np.abs(grads.mean(0) - exact_g) < 5 * grads.std(0) / np.sqrt(reps) + 1e-12)


def test_bad_inputs_raise():
    model = QHBM(Bernoulli(2), hardware_efficient(2, 1))
    H = tfim(nx.path_graph(2))
    for beta in (0.0, -2.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="beta"):
            vqt_loss(model, H, beta)
    with pytest.raises(ValueError, match="wires"):
        vqt_loss(model, tfim(nx.path_graph(3)), 1.0)
    with pytest.raises(ValueError, match="trace"):
        qmhl_loss(model, 2 * np.eye(4) / 4)
    with pytest.raises(ValueError, match="positive"):
        qmhl_loss(model, np.diag([1.5, -0.5, 0, 0]))
    with pytest.raises(ValueError, match="shape"):
        qmhl_loss(model, np.eye(8) / 8)
    with pytest.raises(ValueError, match="GiB"):
        vqt_loss(QHBM(Bernoulli(16), hardware_efficient(16, 1)), tfim(nx.cycle_graph(16)), 1.0)
