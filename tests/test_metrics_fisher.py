"""Classical Fisher metrics against brute-force enumeration and Monte-Carlo estimates."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import qgeom  # noqa: F401  (float64)
from qgeom.metrics import (
    empirical_fisher,
    fisher,
    fisher_bernoulli,
    fisher_categorical,
    fisher_monte_carlo,
    ggn_gaussian,
)

N, D_IN, HIDDEN, K = 6, 3, 5, 3


@pytest.fixture(scope="module")
def model():
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {
        "w1": jax.random.normal(k1, (D_IN, HIDDEN)),
        "b1": 0.1 * jax.random.normal(k2, (HIDDEN,)),
        "w2": jax.random.normal(k3, (HIDDEN, K)),
    }
    x = jax.random.normal(k4, (N, D_IN))

    def apply(p, x):
        return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]

    return apply, params, x


def flat_logp_jacobian(logp_of_params, params):
    """Jacobian of a log-likelihood table with respect to the raveled parameters (last axis)."""
    flat, unravel = ravel_pytree(params)
    return jax.jacrev(lambda t: logp_of_params(unravel(t)))(flat)


def mc_check(estimate, exact, rows, n_sigma=6.0):
    """|estimate − exact| ≤ n_sigma standard errors, entrywise (standard errors from the per-sample outer products)."""
    outer = rows[:, :, None] * rows[:, None, :]
    se = outer.std(axis=0) / np.sqrt(rows.shape[0])
    assert np.all(np.abs(estimate - exact) <= n_sigma * se + 1e-10), np.max(np.abs(estimate - exact) / (se + 1e-12))


def test_fisher_of_probabilities_is_brute_force():
    """F = Σ_k p_k ∇log p_k ∇log p_kᵀ, with an exactly-impossible outcome contributing nothing."""
    a = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3)))

    def probs(t):
        return jnp.append(jax.nn.softmax(a @ jnp.cos(t) + a @ t), 0.0)

    t = jnp.asarray([0.2, -0.5, 0.9])
    p = probs(t)[:-1]
    g = jax.jacfwd(lambda t: jnp.log(probs(t)[:-1]))(t)
    want = jnp.einsum("k,ki,kj->ij", p, g, g)
    m = fisher(probs, t)
    np.testing.assert_allclose(m.dense(), want, atol=1e-12)
    np.testing.assert_allclose(m.mv(jnp.ones(3)), want @ jnp.ones(3), atol=1e-12)


def test_categorical_fisher_is_enumeration_and_mc(model):
    apply, params, x = model
    m = fisher_categorical(apply, params, x)
    logp = jax.nn.log_softmax(apply(params, x), -1)
    jac = flat_logp_jacobian(lambda p: jax.nn.log_softmax(apply(p, x), -1), params)  # (N, K, P)
    want = jnp.einsum("nk,nki,nkj->ij", jnp.exp(logp), jac, jac) / N
    np.testing.assert_allclose(m.dense(), want, atol=1e-12)
    mc = fisher_monte_carlo(apply, params, x, jax.random.PRNGKey(1), n_samples=2000)
    mc_check(mc.dense(), want, mc.grads)


def test_bernoulli_fisher_is_enumeration_and_mc(model):
    apply, params, x = model
    m = fisher_bernoulli(apply, params, x)
    want = 0.0
    for y in itertools.product([0.0, 1.0], repeat=K):
        y = jnp.asarray(y)

        def ll(p, y=y):
            z = apply(p, x)
            return jnp.sum(y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z), axis=1)

        jac = flat_logp_jacobian(ll, params)  # (N, P)
        want = want + jnp.einsum("n,ni,nj->ij", jnp.exp(ll(params)), jac, jac) / N
    np.testing.assert_allclose(m.dense(), want, atol=1e-12)
    mc = fisher_monte_carlo(apply, params, x, jax.random.PRNGKey(2), n_samples=2000, likelihood="bernoulli")
    mc_check(mc.dense(), want, mc.grads)


def test_gaussian_ggn_is_mc_fisher(model):
    """Fisher of N(f(x), s²I): JᵀJ/(N s²) — checked against samples y ∼ N(f(x), s²I)."""
    apply, params, x = model
    sigma = 0.7
    m = ggn_gaussian(apply, params, x, sigma=sigma)
    jac = flat_logp_jacobian(lambda p: apply(p, x), params).reshape(N * K, -1)
    np.testing.assert_allclose(m.dense(), jac.T @ jac / (N * sigma**2), atol=1e-12)
    mc = fisher_monte_carlo(apply, params, x, jax.random.PRNGKey(3), n_samples=2000, likelihood="gaussian", sigma=sigma)
    mc_check(mc.dense(), m.dense(), mc.grads)


def test_empirical_fisher_uses_labels_and_is_not_the_fisher(model):
    apply, params, x = model
    y = jnp.asarray([0, 1, 2, 0, 1, 2])

    def logp(p, x, y):
        return jnp.take_along_axis(jax.nn.log_softmax(apply(p, x), -1), y[:, None], 1)[:, 0]

    emp = empirical_fisher(logp, params, x, y)
    want = 0.0
    for n in range(N):
        g = ravel_pytree(jax.grad(lambda p: logp(p, x[n : n + 1], y[n : n + 1])[0])(params))[0]
        want = want + jnp.outer(g, g) / N
    np.testing.assert_allclose(emp.dense(), want, atol=1e-12)
    exact = fisher_categorical(apply, params, x).dense()
    assert np.abs(emp.dense() - exact).max() > 0.1 * np.abs(exact).max()


def test_fisher_bad_inputs(model):
    apply, params, x = model
    with pytest.raises(ValueError, match="summing"):
        fisher(lambda t: jnp.asarray([0.5, 0.6]) * t, jnp.asarray(1.0))
    with pytest.raises(ValueError, match="negative"):
        fisher(lambda t: jnp.asarray([1.5, -0.5]) * t, jnp.asarray(1.0))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        fisher_categorical(lambda p, x: apply(p, x)[0], params, x)
    with pytest.raises(ValueError, match="likelihood"):
        fisher_monte_carlo(apply, params, x, jax.random.PRNGKey(0), likelihood="poisson")
    with pytest.raises(ValueError, match="sigma"):
        ggn_gaussian(apply, params, x, sigma=0.0)
    m = fisher_categorical(apply, params, x)
    with pytest.raises(ValueError, match="shape"):
        m.mv({**params, "w2": jnp.ones((K, HIDDEN))})
    with pytest.raises(ValueError, match="damping"):
        m.solve(params, -1.0)
