"""SBN Fisher, Woodbury solve, IS log-likelihood and RWS gradients against enumeration of all states."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import qgeom  # noqa: F401  (float64)
from classical.helmholtz import HelmholtzMachine, init_params, log_likelihood
from classical.sbn import UnitwiseFisher, log_prob, sbn_fisher

CLIP = 1e-12  # no clipping is active at these weights: the Fisher formula is exact


def states(n):
    return jnp.asarray(list(itertools.product([0.0, 1.0], repeat=n)))


def gen_enumeration(sizes, params):
    """All joint states of the generative SBN in its layer order [∅, h_L, …, x] with p(s)."""
    widths = sizes[::-1]
    joint = states(sum(widths))
    cuts = np.cumsum(widths)[:-1]
    layers = [jnp.zeros((joint.shape[0], 0))] + jnp.split(joint, cuts, axis=1)
    return layers, jnp.exp(log_prob(params["p"], layers, CLIP))


@pytest.mark.parametrize("sizes", [[10, 4], [5, 3, 2]])
def test_unitwise_fisher_is_the_exact_fisher(sizes):
    """Per-unit blocks E_p[q(1−q)h̄h̄ᵀ] = the exact Fisher of p(x, h), cross-unit blocks 0."""
    params = init_params(jax.random.PRNGKey(0), sizes, jnp.float64, bias=0.3)
    params["p"] = [w * 2.0 for w in params["p"]]  # a less uniform model
    layers, prob = gen_enumeration(sizes, params)
    assert abs(float(prob.sum()) - 1.0) < 1e-12
    flat, unravel = ravel_pytree(params["p"])

    @jax.jit
    def both():
        def score(s):
            return jax.grad(lambda f: log_prob(unravel(f), [h[s][None] for h in layers], CLIP)[0])(flat)

        g = jax.vmap(score)(jnp.arange(prob.shape[0]))
        return (g * prob[:, None]).T @ g, sbn_fisher(params["p"], layers, CLIP, weights=prob).dense()

    f_exact, f_units = both()
    # sums of 2^14 positive terms of size ≤ 1 in float64
    np.testing.assert_allclose(f_units, f_exact, rtol=0, atol=1e-12)
    assert float(jnp.abs(f_exact).max()) > 0.05  # not a trivially small matrix


@pytest.mark.parametrize("n", [5, 12])  # N < d: Woodbury path; N ≥ d: per-unit Cholesky
def test_woodbury_solve_equals_dense_solve(n):
    d, u = 8, 3
    rng = np.random.default_rng(n)
    h = jnp.asarray(np.concatenate([rng.integers(0, 2, (n, d - 1)), np.ones((n, 1))], axis=1), jnp.float64)
    q = rng.uniform(0.05, 0.95, (n, u))
    fm = UnitwiseFisher(h, jnp.asarray(q * (1 - q) / n))
    v = jnp.asarray(rng.normal(size=(d, u)))
    g = np.asarray(fm.dense())
    np.testing.assert_allclose(ravel_pytree(fm.mv(v))[0], g @ np.ravel(v), rtol=1e-12, atol=1e-14)
    for alpha in (0.1, 1.0):  # cond(F + αI) ≤ 1 + ‖F‖/α ≲ 20
        want = np.linalg.solve(g + alpha * np.eye(d * u), np.ravel(v))
        np.testing.assert_allclose(np.ravel(fm.solve(v, alpha)), want, rtol=1e-11, atol=1e-12)
    if n < d:
        with pytest.raises(ValueError, match="damping"):
            fm.solve(v, 0.0)


@pytest.fixture(scope="module")
def tiny():
    """Generative [10, 4] SBN with an unrelated recognition net, and 4 data points."""
    sizes = [10, 4]
    params = init_params(jax.random.PRNGKey(1), sizes, jnp.float64, bias=0.2)
    hs = states(4)

    def exact_log_px(x):
        layers = [jnp.zeros((16, 0)), hs, jnp.broadcast_to(x, (16, 10))]
        return jax.nn.logsumexp(log_prob(params["p"], layers, CLIP))

    x = (jax.random.uniform(jax.random.PRNGKey(2), (4, 10)) < 0.5).astype(jnp.float64)
    return sizes, params, x, exact_log_px


def test_importance_sampling_converges_to_exact_log_likelihood(tiny):
    _, params, x, exact_log_px = tiny
    est, se = jax.jit(lambda p, xx, k: log_likelihood(p, xx, k, 10_000, chunk=1000, clip=CLIP))(
        params, x, jax.random.PRNGKey(3))
    exact = jax.vmap(exact_log_px)(x)
    # bias of log-mean ≈ −se²/2 ≪ se; tolerance 5 delta-method standard errors
    np.testing.assert_array_less(np.abs(est - exact), 5 * np.asarray(se))
    assert float(se.max()) < 0.05  # the check has teeth


@pytest.mark.slow
def test_rws_generative_gradient_is_the_log_likelihood_gradient(tiny):
    """Σ_k w̃_k ∇_p log p(x, h_k) → ∇_p log p(x) (exact by enumeration) as K grows."""
    sizes, params, x, exact_log_px = tiny
    hm = HelmholtzMachine(sizes, "rws", num_samples=4000, clip_probs=CLIP, dtype=jnp.float64)
    flat, unravel = ravel_pytree(params["p"])

    def exact_grad(f):
        p = dict(params, p=unravel(f))
        return jnp.mean(jax.vmap(lambda xx: jax.nn.logsumexp(
            log_prob(p["p"], [jnp.zeros((16, 0)), states(4), jnp.broadcast_to(xx, (16, 10))], CLIP)))(x))

    want = jax.jit(jax.grad(exact_grad))(flat)
    reps = 8
    got = jax.jit(jax.vmap(lambda k: ravel_pytree(hm.gradients(params, x, k)[0]["p"])[0]))(
        jax.random.split(jax.random.PRNGKey(4), reps))
    se = got.std(0, ddof=1) / np.sqrt(reps)
    # self-normalized IS bias is O(1/K) = 2.5e-4, below the MC error here
    np.testing.assert_array_less(np.abs(got.mean(0) - want), 5 * se + 1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ws", "rws", "nrws"])
def test_training_improves_the_exact_likelihood(tiny, method):
    """A few hundred steps on 4 patterns raise the exact mean log p(x) (enumerated)."""
    sizes, _, x, _ = tiny
    hm = HelmholtzMachine(sizes, method, optax.sgd(0.05), clip_probs=1e-3, dtype=jnp.float64)

    def exact_ll(p):
        layers = [jnp.zeros((16, 0)), states(4)]
        return jnp.mean(jax.vmap(lambda xx: jax.nn.logsumexp(
            log_prob(p["p"], layers + [jnp.broadcast_to(xx, (16, 10))], 1e-3)))(x))

    @jax.jit
    def run(key):
        st = hm.init(key)
        before = exact_ll(st.params)
        st, infos = jax.lax.scan(lambda s, k: hm.step(s, x, k), st, jax.random.split(key, 300))
        return before, exact_ll(st.params), infos["finite"].all()

    before, after, finite = run(jax.random.PRNGKey(5))
    assert bool(finite)
    assert float(after) > float(before) + 1.0, (float(before), float(after))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="method"):
        HelmholtzMachine([4, 2], "nope")
    with pytest.raises(ValueError, match="alpha"):
        HelmholtzMachine([4, 2], alpha=-1.0)
    with pytest.raises(ValueError, match="sizes"):
        HelmholtzMachine([4])
    with pytest.raises(ValueError, match="num_samples"):
        log_likelihood(init_params(jax.random.PRNGKey(0), [4, 2]), jnp.zeros((1, 4)), jax.random.PRNGKey(0), 150)
