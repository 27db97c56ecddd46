"""QBVI, BBVI and reparameterization VI on Bayesian linear regression, whose posterior is exact.

y = Xθ + ε, ε ∼ N(0, s²), prior θ ∼ N(0, v₀I): the posterior is N(m, Λ⁻¹) with
Λ = I/v₀ + XᵀX/s², m = Λ⁻¹Xᵀy/s²; the ELBO is a closed-form function of (μ, Σ)
(E_q‖y − Xθ‖² = ‖y − Xμ‖² + tr(XΣXᵀ)), so autodiff gives its exact gradients.
Monte-Carlo tolerances are 5 standard errors computed here from independent chains
or replicate steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import qgeom  # noqa: F401  (float64)
from classical.vi import BBVI, QBVI, ReparamVI, natural_step
from qgeom.metrics.gaussian import gaussian_fisher

N, D, S2, V0 = 40, 2, 1.0, 1.0


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D))
    y = x @ np.array([0.5, -1.0]) + rng.normal(size=N)
    lam = np.eye(D) / V0 + x.T @ x / S2  # cond ~ 1.3: a well-conditioned posterior
    cov = np.linalg.inv(lam)
    x, y = jnp.asarray(x), jnp.asarray(y)

    def loglik(theta, batch):
        return -0.5 * jnp.sum((y - x @ theta) ** 2) / S2

    def elbo(mean, cov):
        """Closed-form ELBO (up to the constant of ``loglik``) for q = N(mean, cov); 1-D cov = diagonal."""
        cov = jnp.diag(cov) if cov.ndim == 1 else cov
        e_ll = -0.5 * (jnp.sum((y - x @ mean) ** 2) + jnp.trace(x @ cov @ x.T)) / S2
        kl = 0.5 * (jnp.trace(cov) / V0 + mean @ mean / V0 - D + D * np.log(V0) - jnp.linalg.slogdet(cov)[1])
        return e_ll - kl

    return loglik, elbo, cov @ np.asarray(x.T @ y) / S2, cov, lam


def _chains(method, key, chains, steps):
    def run(k):
        def body(st, kk):
            st, info = method.step(st, None, kk)
            m, c = method.mean_cov(st)
            return st, (m, c, info["refused"])

        _, out = jax.lax.scan(body, method.init(jnp.zeros(D)), jax.random.split(k, steps))
        return out

    return jax.jit(jax.vmap(run))(jax.random.split(key, chains))


def _within_se(samples, exact, k=5.0):
    """Chain averages agree with ``exact`` to k standard errors (computed across chains)."""
    se = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
    np.testing.assert_array_less(np.abs(samples.mean(0) - exact), k * se + 1e-12)


@pytest.mark.parametrize("diagonal", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_qbvi_converges_to_the_gaussian_optimum(problem, diagonal):
    loglik, _, mean, cov, lam = problem
    q = QBVI(loglik, D, prior_var=V0, diagonal=diagonal, step_adaptive=200)
    chains, steps = 20, 1000
    ms, cs, refused = _chains(q, jax.random.PRNGKey(1), chains, steps)
    assert not refused.any()
    ms, cs = np.asarray(ms[:, steps // 2 :].mean(1)), np.asarray(cs[:, steps // 2 :].mean(1))
    _within_se(ms, mean)
    # full: the exact posterior covariance; diagonal: the mean-field optimum Σ_ii = 1/Λ_ii
    _within_se(cs, cov if not diagonal else 1.0 / np.diag(lam))


def test_natural_step_is_the_fisher_preconditioned_gradient(problem):
    """λ' = λ + β F_λ⁻¹∇_λL in natural parameters λ = (Σ⁻¹μ, −½Σ⁻¹), with F⁻¹∇ from the
    closed-form Gaussian Fisher in (μ, Σ) pushed forward to λ (exact in β, not first order)."""
    _, elbo, _, _, _ = problem
    mean, cov, beta = jnp.array([0.3, -0.2]), jnp.array([[0.5, 0.1], [0.1, 0.3]]), 0.3

    def natural(m, c):
        p = jnp.linalg.inv(c)
        return p @ m, -0.5 * p

    @jax.jit
    def both():
        g_mu, g_sig = jax.grad(elbo, argnums=(0, 1))(mean, cov)
        g_sig = 0.5 * (g_sig + g_sig.T)
        m1, p1, ok = natural_step(mean, jnp.linalg.inv(cov), g_mu, -2.0 * g_sig, beta, xi=0.0)
        nat = gaussian_fisher(mean, cov).solve({"cov": g_sig, "mean": g_mu}, 0.0)
        lam0, dlam = jax.jvp(natural, (mean, cov), (nat["mean"], nat["cov"]))
        full = (ok, (p1 @ m1, -0.5 * p1), (lam0[0] + beta * dlam[0], lam0[1] + beta * dlam[1]))
        # diagonal family: the GaussianFisherDiag solve gives (σ²∇_μ, 2σ⁴∇_σ²)
        var = jnp.diagonal(cov)
        gm, gv = jax.grad(elbo, argnums=(0, 1))(mean, var)
        m2, p2, _ = natural_step(mean, 1.0 / var, gm, -2.0 * gv, beta)
        nd = gaussian_fisher(mean, var).solve({"mean": gm, "var": gv}, 0.0)
        ref = (mean / var + beta * (nd["mean"] / var - nd["var"] * mean / var**2), -0.5 / var + beta * nd["var"] / (2 * var**2))
        return full, ((p2 * m2, -0.5 * p2), ref)

    (ok, got, ref), (got_d, ref_d) = both()
    assert ok
    for a, b in zip(got + got_d, ref + ref_d):  # entries O(1), cond(Σ) ~ 3: 1e-12 is 1e4 ε
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def _one_step_grads(method, params, key, reps):
    """ELBO gradient the method applied in one optax.sgd(1) step, for ``reps`` fresh keys."""
    st = method.init(jnp.zeros(D))
    st = st._replace(params=params, opt_state=method.opt.init(params))
    step = jax.jit(jax.vmap(lambda k: method.step(st, None, k)[0].params))
    new = step(jax.random.split(key, reps))
    return jax.tree.map(lambda a, b: np.asarray(a - b), new, params)


@pytest.mark.parametrize("kind", ["bbvi", "reparam"])
@pytest.mark.parametrize("diagonal", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_baseline_gradients_are_unbiased(problem, kind, diagonal):
    loglik, elbo, _, _, _ = problem
    cls = BBVI if kind == "bbvi" else ReparamVI
    method = cls(loglik, D, optax.sgd(1.0), prior_var=V0, diagonal=diagonal, num_samples=2000)
    rho = jnp.array([-0.6, -0.9]) if diagonal else jnp.array([[-0.6, 0.0], [0.2, -0.9]])
    params = {"mean": jnp.array([0.3, -0.5]), "rho": rho}
    st0 = method.init(jnp.zeros(D))
    exact = jax.jit(jax.grad(lambda p: elbo(*method.mean_cov(st0._replace(params=p)))))(params)
    got = _one_step_grads(method, params, jax.random.PRNGKey(3), reps=16)
    for k in ("mean", "rho"):
        mask = np.tril(np.ones((D, D))) if (k == "rho" and not diagonal) else 1.0
        _within_se(got[k] * mask, np.asarray(exact[k]) * mask)


def test_non_positive_definite_proposals_are_refused(problem):
    loglik, *_ = problem
    # a huge plain step on P = 100 I towards the posterior precision ≈ 40 overshoots below 0
    plain = QBVI(loglik, D, prior_var=V0, diagonal=False, xi=0.0, learning_rate=5.0)
    st = plain.init(jnp.zeros(D))
    new, info = jax.jit(plain.step)(st, None, jax.random.PRNGKey(0))
    assert bool(info["refused"])
    np.testing.assert_array_equal(new.prec, st.prec)
    np.testing.assert_array_equal(new.mean, st.mean)
    # the exponential retraction (ξ > 0) keeps the same step positive definite
    g_p = jnp.diag(1.0 / V0 - jnp.diagonal(st.prec)) - 0.5 * st.prec  # pushes P towards −P/2
    _, p_plain, ok_plain = natural_step(st.mean, st.prec, jnp.zeros(D), g_p, 5.0, xi=0.0)
    _, p_retr, ok_retr = natural_step(st.mean, st.prec, jnp.zeros(D), g_p, 5.0, xi=4.0)
    assert not bool(ok_plain) and bool(ok_retr) and np.linalg.eigvalsh(np.asarray(p_retr))[0] > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_samples": 1}, "num_samples"), ({"prior_var": -1.0}, "prior_var"), ({"learning_rate": 0.0}, "learning_rate")],
)
def test_bad_settings_are_refused(problem, kwargs, match):
    with pytest.raises(ValueError, match=match):
        QBVI(problem[0], D, **kwargs)


def test_bad_initial_state_is_refused(problem):
    q = QBVI(problem[0], D, diagonal=False)
    with pytest.raises(ValueError, match="positive definite"):
        q.init(jnp.zeros(D), jnp.array([[1.0, 0.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="length"):
        q.init(jnp.zeros(D + 1))
    with pytest.raises(ValueError, match="non-finite"):
        q.init(jnp.array([0.0, np.nan]))
