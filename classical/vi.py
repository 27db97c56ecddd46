"""Gaussian variational inference: QBVI (natural gradient, black box), BBVI, reparameterization VI.

Model: a log-likelihood ``loglik(theta, batch) -> scalar`` and a Gaussian prior
N(prior_mean, diag(prior_var)) handled in closed form; the variational family is
q = N(μ, Σ), full or diagonal. Every trainer has the optax-like shape
``init(mean) -> state`` and ``step(state, batch, key) -> (state, info)`` (``info``:
``elbo``, the estimate E_q[log p(batch | θ)] − KL(q ‖ prior) on the step's samples, and
``finite``), plus ``mean_cov(state)`` and ``sample(state, key, num)``.

**QBVI** (Magris, Shabani & Iosifidis 2022, "Quasi black-box variational inference with
natural gradients for Bayesian learning", arXiv 2205.11568) as its reference code
``VBLab/VB/QBVI/QBVI.m`` computes it. With precision P = Σ⁻¹ and θ_s = μ + a_s ∼ q:

* score features B_μ = P a (= ∇_μ log q) and B_P = P − P a aᵀ P (= −2 ∇_Σ log q), f_s = log p(batch | θ_s);
  Y = mean_s B_s (f_s − c) with a per-coordinate control variate c = Cov(f B, B)/Var(B)
  taken from the *previous* iteration's samples (lagged, so Y stays unbiased; c = 0 at first);
* ELBO gradients, prior in closed form: ĝ_μ = P₀(μ₀ − μ) + Y_μ = ∇_μ L and ĝ_P = P₀ − P + Y_P = −2∇_Σ L;
  first iteration: Y clipped to norm 10 (``GradClipInit``), (ĝ_μ, ĝ_P) to norm 100, later
  to 5000 (``NgClip``); momentum m = ĝ at first, then m ← 0.4 m + 0.6 ĝ (``GradWeight``);
* natural-coordinate update (the natural gradient, no Fisher formed):
  P ← P + β m_P (i.e. Σ⁻¹ ← Σ⁻¹ − 2β∇_Σ L), then μ ← μ + β Σ m_μ with the new Σ;
  with ``xi`` > 0 (default 4, the reference example) the precision step is the
  positivity-preserving retraction P ← C exp((β/ξ) C⁻¹ m_P C⁻ᵀ) Cᵀ, P = CCᵀ, which for a
  diagonal P is the reference's p ← p ∘ exp((β/ξ) Σ ∘ m_p). With ``xi = 0`` a
  proposal P that is not positive definite is refused: μ and P stay, ``info["refused"]``;
* β = 0.08, constant for 1000 iterations then β·1000/t; S = 25 samples; initial Σ = 0.01·I.
Differences from the reference: i.i.d. Gaussian draws instead of randomized Sobol points,
and the full-covariance retraction above (the reference code is diagonal only).

**BBVI** (Ranganath, Gerrish & Blei 2014): the same score-function estimator and
control variate, chain-ruled to the Euclidean gradient in (μ, ρ) — ρ = log σ (diagonal)
or the Cholesky factor of Σ with log-diagonal (full) — and any optax optimizer.
**ReparamVI** (Kingma & Welling 2014; Titsias & Lázaro-Gredilla 2014): the same (μ, ρ),
gradient of the reparameterized ELBO through ``loglik`` (needs model gradients), optax Adam.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qgeom.metrics.gaussian import _check_spd


class QBVIState(NamedTuple):
    mean: jax.Array
    prec: jax.Array  # (n,) diagonal or (n, n) full precision Σ⁻¹
    momentum: tuple
    cv: jax.Array  # lagged control-variate coefficients, one per feature
    count: jax.Array


class EuclidState(NamedTuple):
    params: dict  # {"mean": (n,), "rho": (n,) log σ or (n, n) lower Cholesky with log diagonal}
    opt_state: Any
    cv: jax.Array
    count: jax.Array


def _check_prior(dim, prior_mean, prior_var):
    m, v = np.broadcast_to(np.asarray(prior_mean, float), (dim,)), np.broadcast_to(np.asarray(prior_var, float), (dim,))
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(v)) and np.all(v > 0)):
        raise ValueError("prior_mean must be finite and prior_var finite and > 0 (scalar or one per parameter)")
    return jnp.asarray(m), jnp.asarray(v)


def _check_mean(mean, dim):
    mean = jnp.asarray(mean, jnp.float64)
    if mean.shape != (dim,):
        raise ValueError(f"initial mean must be a vector of length {dim}, got shape {mean.shape}")
    if not isinstance(mean, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(mean))):
        raise ValueError("initial mean has non-finite entries")
    return mean


def kl_to_prior(mean, cov, prior_mean, prior_var):
    """KL(N(mean, cov) ‖ N(prior_mean, diag(prior_var))); ``cov`` (n,) diagonal or (n, n)."""
    var = cov if cov.ndim == 1 else jnp.diagonal(cov)
    logdet = jnp.sum(jnp.log(cov)) if cov.ndim == 1 else jnp.linalg.slogdet(cov)[1]
    d = mean - prior_mean
    return 0.5 * (jnp.sum((var + d**2) / prior_var) - mean.shape[0] + jnp.sum(jnp.log(prior_var)) - logdet)


class _Gaussian:
    """Shared set-up: the model, the prior, the family, S, and the score-function estimator."""

    def __init__(self, loglik, dim, *, prior_mean, prior_var, diagonal, num_samples):
        if not callable(loglik):
            raise ValueError("loglik must be a callable loglik(theta, batch) -> scalar")
        if not (isinstance(dim, (int, np.integer)) and dim >= 1):
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not (isinstance(num_samples, (int, np.integer)) and num_samples >= 2):
            raise ValueError(f"num_samples must be an integer >= 2 (the control variate needs a variance), got {num_samples!r}")
        self.loglik, self.dim, self.diagonal, self.num_samples = loglik, int(dim), bool(diagonal), int(num_samples)
        self.prior_mean, self.prior_var = _check_prior(self.dim, prior_mean, prior_var)
        self.num_features = self.dim + (self.dim if diagonal else self.dim**2)

    def _lik(self, thetas, batch):
        return jax.vmap(lambda t: self.loglik(t, batch))(thetas)

    def score_estimate(self, a, pa, f, prec, cv):
        """Y = mean_s B_s (f_s − c) and the next lagged c from features B = (P a, P − P a aᵀ P)."""
        if self.diagonal:
            bp = prec - pa**2
        else:
            bp = (prec - pa[:, :, None] * pa[:, None, :]).reshape(a.shape[0], -1)
        feats = jnp.concatenate([pa, bp], axis=1)
        y = jnp.mean(feats * (f[:, None] - cv), axis=0)
        af = feats * f[:, None]
        cov = jnp.mean(af * feats, axis=0) - jnp.mean(af, axis=0) * jnp.mean(feats, axis=0)
        var = jnp.var(feats, axis=0)
        new_cv = jnp.where(var > 0, cov / jnp.where(var > 0, var, 1.0), 0.0)
        yp = y[self.dim :] if self.diagonal else y[self.dim :].reshape(self.dim, self.dim)
        return y[: self.dim], yp, new_cv

    def elbo_grads(self, mean, prec, y_mu, y_p):
        """(∇_μ L, −2∇_Σ L) with the prior's terms in closed form."""
        g_mu = (self.prior_mean - mean) / self.prior_var + y_mu
        p0 = 1.0 / self.prior_var
        g_p = (p0 - prec if self.diagonal else jnp.diag(p0) - prec) + y_p
        return g_mu, g_p


def _clip(tree, max_norm):
    norm = optax.tree_utils.tree_norm(tree)
    return jax.tree.map(lambda x: x * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-300)), tree)


def natural_step(mean, prec, g_mu, g_p, beta, xi=0.0):
    """One QBVI update in natural coordinates from (∇_μ L, −2∇_Σ L) = (g_mu, g_p).

    ``xi = 0``: P ← P + β g_p, μ ← μ + β P_new⁻¹ g_mu — exactly the natural-gradient step
    λ ← λ + β F_λ⁻¹ ∇_λ L in the natural parameters λ = (Σ⁻¹μ, −½Σ⁻¹). ``xi > 0``: the
    exponential retraction P ← C exp((β/ξ) C⁻¹ g_p C⁻ᵀ) Cᵀ (P = CCᵀ), positive definite
    by construction. Returns (mean, prec, proposal_is_positive_definite).
    """
    if prec.ndim == 1:
        new_p = prec * jnp.exp(beta / xi * g_p / prec) if xi > 0 else prec + beta * g_p
        ok = jnp.all(new_p > 0) & jnp.all(jnp.isfinite(new_p))
        return mean + beta * g_mu / new_p, new_p, ok
    if xi > 0:
        c = jnp.linalg.cholesky(prec)
        m = jax.scipy.linalg.solve_triangular(c, jax.scipy.linalg.solve_triangular(c, g_p, lower=True).T, lower=True)
        s, q = jnp.linalg.eigh(0.5 * (m + m.T))
        new_p = c @ (q * jnp.exp(beta / xi * s)) @ q.T @ c.T
        new_p = 0.5 * (new_p + new_p.T)
    else:
        new_p = prec + beta * g_p
    chol = jnp.linalg.cholesky(new_p)
    ok = jnp.all(jnp.isfinite(chol))
    return mean + beta * jax.scipy.linalg.cho_solve((chol, True), g_mu), new_p, ok


class QBVI(_Gaussian):
    """Quasi black-box natural-gradient Gaussian VI (defaults: the reference code's)."""

    def __init__(self, loglik, dim, *, prior_mean=0.0, prior_var=1.0, diagonal=True, num_samples=25,
                 learning_rate=0.08, step_adaptive=1000, momentum=0.4, xi=4.0, init_var=0.01,
                 grad_clip_init=10.0, ng_clip=(100.0, 5000.0)):
        super().__init__(loglik, dim, prior_mean=prior_mean, prior_var=prior_var, diagonal=diagonal,
                         num_samples=num_samples)
        if not (learning_rate > 0 and 0 <= momentum < 1 and xi >= 0 and init_var > 0 and step_adaptive >= 1):
            raise ValueError("need learning_rate > 0, 0 <= momentum < 1, xi >= 0, init_var > 0, step_adaptive >= 1")
        self.beta, self.step_adaptive, self.momentum, self.xi = learning_rate, step_adaptive, momentum, xi
        self.init_var, self.grad_clip_init, self.ng_clip = init_var, grad_clip_init, ng_clip

    def init(self, mean, cov=None) -> QBVIState:
        """State at N(mean, cov); ``cov`` defaults to ``init_var``·I (``ValueError`` if not SPD)."""
        mean = _check_mean(mean, self.dim)
        if cov is None:
            cov = jnp.full((self.dim,), self.init_var) if self.diagonal else self.init_var * jnp.eye(self.dim)
        cov = jnp.asarray(cov, jnp.float64)
        if cov.shape != ((self.dim,) if self.diagonal else (self.dim, self.dim)):
            raise ValueError(f"cov has shape {cov.shape}, expected the {'diagonal' if self.diagonal else 'full'} family's")
        _check_spd(cov, "initial covariance")
        prec = 1.0 / cov if self.diagonal else jnp.linalg.inv(cov)
        zero = (jnp.zeros_like(mean), jnp.zeros_like(prec))
        return QBVIState(mean, prec, zero, jnp.zeros(self.num_features), jnp.zeros((), jnp.int32))

    def mean_cov(self, state):
        return state.mean, (1.0 / state.prec if self.diagonal else jnp.linalg.inv(state.prec))

    def sample(self, state, key, num):
        z = jax.random.normal(key, (num, self.dim))
        if self.diagonal:
            return state.mean + z / jnp.sqrt(state.prec)
        c = jnp.linalg.cholesky(state.prec)  # θ = μ + C⁻ᵀ z has covariance (CCᵀ)⁻¹
        return state.mean + jax.scipy.linalg.solve_triangular(c.T, z.T, lower=False).T

    def step(self, state: QBVIState, batch, key):
        thetas = self.sample(state, key, self.num_samples)
        a = thetas - state.mean
        pa = a * state.prec if self.diagonal else a @ state.prec
        f = self._lik(thetas, batch)
        y_mu, y_p, cv = self.score_estimate(a, pa, f, state.prec, state.cv)
        first = state.count == 0
        y_mu, y_p = _clip((y_mu, y_p), jnp.where(first, self.grad_clip_init, jnp.inf))
        g = _clip(self.elbo_grads(state.mean, state.prec, y_mu, y_p), jnp.where(first, *self.ng_clip))
        m = jax.tree.map(lambda mo, gi: jnp.where(first, gi, self.momentum * mo + (1 - self.momentum) * gi),
                         state.momentum, g)
        t = state.count + 1
        beta = self.beta * jnp.minimum(1.0, self.step_adaptive / t)
        mean, prec, ok = natural_step(state.mean, state.prec, m[0], m[1], beta, self.xi)
        mean, prec = jnp.where(ok, mean, state.mean), jnp.where(ok, prec, state.prec)
        elbo = jnp.mean(f) - kl_to_prior(*self.mean_cov(state), self.prior_mean, self.prior_var)
        new = QBVIState(mean, prec, m, cv, t)
        finite = jnp.isfinite(elbo) & jnp.all(jnp.isfinite(mean)) & jnp.all(jnp.isfinite(prec))
        return new, {"elbo": elbo, "refused": ~ok, "finite": finite}


class _Euclid(_Gaussian):
    """(μ, ρ) parameterization shared by BBVI and ReparamVI; ``optimizer=None`` is the
    subclass's ``default_optimizer()``."""

    def __init__(self, loglik, dim, optimizer=None, *, prior_mean=0.0, prior_var=1.0, diagonal=True,
                 num_samples=25, init_var=0.01):
        super().__init__(loglik, dim, prior_mean=prior_mean, prior_var=prior_var, diagonal=diagonal,
                         num_samples=num_samples)
        if not init_var > 0:
            raise ValueError(f"init_var must be > 0, got {init_var}")
        self.opt = self.default_optimizer() if optimizer is None else optimizer
        self.init_var = init_var

    def _chol(self, rho):
        """σ (diagonal) or the lower Cholesky factor L of Σ = LLᵀ (log-parameterized diagonal)."""
        if self.diagonal:
            return jnp.exp(rho)
        return jnp.tril(rho, -1) + jnp.diag(jnp.exp(jnp.diagonal(rho)))

    def init(self, mean) -> EuclidState:
        mean = _check_mean(mean, self.dim)
        half_log = 0.5 * jnp.log(self.init_var)
        rho = jnp.full((self.dim,), half_log) if self.diagonal else half_log * jnp.eye(self.dim)
        params = {"mean": mean, "rho": rho}
        return EuclidState(params, self.opt.init(params), jnp.zeros(self.num_features), jnp.zeros((), jnp.int32))

    def mean_cov(self, state):
        ell = self._chol(state.params["rho"])
        return state.params["mean"], (ell**2 if self.diagonal else ell @ ell.T)

    def sample(self, state, key, num):
        z = jax.random.normal(key, (num, self.dim))
        ell = self._chol(state.params["rho"])
        return state.params["mean"] + (z * ell if self.diagonal else z @ ell.T)

    def _apply(self, state, grads, cv, elbo):
        """Ascent on the ELBO with the optax optimizer (optax minimizes: gradients negated)."""
        neg = jax.tree.map(jnp.negative, grads)
        updates, opt_state = self.opt.update(neg, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(elbo) & (optax.tree_utils.tree_norm(params) < jnp.inf)
        return EuclidState(params, opt_state, cv, state.count + 1), {"elbo": elbo, "finite": finite}


class BBVI(_Euclid):
    """Score-function (black-box) VI with QBVI's estimator, Euclidean gradient in (μ, ρ), optax."""

    @staticmethod
    def default_optimizer():
        return optax.sgd(0.01)

    def step(self, state: EuclidState, batch, key):
        mean, cov = self.mean_cov(state)
        thetas = self.sample(state, key, self.num_samples)
        a = thetas - mean
        prec = 1.0 / cov if self.diagonal else jnp.linalg.inv(cov)
        f = self._lik(thetas, batch)
        y_mu, y_p, cv = self.score_estimate(a, a * prec if self.diagonal else a @ prec, f, prec, state.cv)
        g_mu, g_p = self.elbo_grads(mean, prec, y_mu, y_p)
        g_sigma = -0.5 * g_p  # ∇_Σ L
        ell = self._chol(state.params["rho"])
        if self.diagonal:  # Σ = e^{2ρ}: ∇_ρ = 2 Σ ∇_Σ
            g_rho = 2.0 * cov * g_sigma
        else:  # Σ = LLᵀ: ∇_L = 2 sym(∇_Σ) L, lower part; the diagonal is log-parameterized
            g_l = jnp.tril(2.0 * (0.5 * (g_sigma + g_sigma.T)) @ ell)
            g_rho = g_l - jnp.diag(jnp.diagonal(g_l)) + jnp.diag(jnp.diagonal(g_l) * jnp.diagonal(ell))
        elbo = jnp.mean(f) - kl_to_prior(mean, cov, self.prior_mean, self.prior_var)
        return self._apply(state, {"mean": g_mu, "rho": g_rho}, cv, elbo)


class ReparamVI(_Euclid):
    """Reparameterization-gradient VI: θ = μ + L z, autodiff of the ELBO, optax Adam by default."""

    @staticmethod
    def default_optimizer():
        return optax.adam(0.01)

    def step(self, state: EuclidState, batch, key):
        z = jax.random.normal(key, (self.num_samples, self.dim))

        def elbo(params):
            ell = self._chol(params["rho"])
            thetas = params["mean"] + (z * ell if self.diagonal else z @ ell.T)
            cov = ell**2 if self.diagonal else ell @ ell.T
            kl = kl_to_prior(params["mean"], cov, self.prior_mean, self.prior_var)
            return jnp.mean(self._lik(thetas, batch)) - kl

        value, grads = jax.value_and_grad(elbo)(state.params)
        return self._apply(state, grads, state.cv, value)
