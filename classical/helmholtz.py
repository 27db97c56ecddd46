"""Helmholtz machines: wake-sleep (WS), reweighted wake-sleep (RWS) and natural RWS (NRWS).

A Helmholtz machine pairs a generative SBN p(x, h) = p(h_L) Π p(h_{l−1} | h_l) with a
recognition SBN q(h | x) = Π q(h_l | h_{l−1}) (see ``classical.sbn``); ``sizes`` =
[n_visible, n_1, …, n_L] (the NRWS paper's MNIST net: [784, 200, 100, 10]).

* **WS** (Hinton, Dayan, Frey & Neal 1995): wake, h ∼ q(h|x), ascend log p(x, h) in p;
  sleep, (x, h) ∼ p, ascend log q(h|x) in q.
* **RWS** (Bornschein & Bengio 2015): K samples h_k ∼ q(h|x), normalized importance
  weights w̃_k ∝ p(x, h_k)/q(h_k|x); p ascends Σ_k w̃_k log p(x, h_k); q ascends
  ½[Σ_k (w̃_k − 1/K) log q(h_k|x)] (wake, baseline 1/K) + ½ log q(h|x) on dreams (sleep;
  ``sleep_balance`` = ½ as in the NRWS reference code).
* **NRWS** (Várady, Volpi, Malagò & Ay 2022, Neural Networks 155:574–591; reference code
  rist-ro/argo ``core/optimizers``): each net's RWS gradient is replaced per unit by
  (1 + α)(F_u + αI)⁻¹ g_u with the exact unit-wise Fisher F_u = E[q_u(1 − q_u) h̄ h̄ᵀ]
  (``classical.sbn.UnitwiseFisher``, Woodbury on the samples). Following the reference
  code, each Fisher is estimated on the *other* phase's samples — the generative net's on
  the B·K dreams (x, h) ∼ p, the recognition net's on the B·K wake samples x ∼ data,
  h ∼ q(h|x) — i.e. under that network's own model distribution; the (1 + α) factor
  makes α → ∞ the plain gradient; when α > 100 the natural step is skipped (plain
  gradient). α is a constant (default 0.1, the value in the reference Caltech config) or
  a schedule ``alpha(step)``.

Defaults from the reference MNIST configuration: K = 5, plain SGD with learning rate
0.01 (batch 32 is the caller's), Glorot-normal weights, biases 0.1, probabilities
clipped to [1e-3, 1 − 1e-3]. Every trainer: ``init(key) -> state``,
``step(state, x, key) -> (state, info)`` with ``info["loss"]`` the negative K-sample
importance-weighted bound on the batch (its mean log p(x) lower bound, negated).

``log_likelihood`` estimates log p(x) by importance sampling with q(h|x) as proposal,
log p̂(x) = log (1/K) Σ_k p(x, h_k)/q(h_k|x), with the delta-method standard error
sd(w)/(√K · mean(w)) per example.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from classical.sbn import log_prob, sample, sbn_fisher

METHODS = ("ws", "rws", "nrws")


class HMState(NamedTuple):
    params: dict  # {"p": [prior (1, n_L), W_L (n_L+1, n_{L-1}), …], "q": [V_1 (n_0+1, n_1), …]}
    opt_state: Any
    count: jax.Array


def init_params(key, sizes, dtype=jnp.float32, bias=0.1):
    """Glorot-normal weights, biases ``bias`` (reference code); see the module docstring for the layout."""
    sizes = [int(s) for s in sizes]
    keys = iter(jax.random.split(key, 2 * len(sizes)))

    def mat(n_in, n_out):
        w = jax.random.normal(next(keys), (n_in, n_out), dtype) * float(np.sqrt(2.0 / (n_in + n_out)))
        return jnp.concatenate([w, jnp.full((1, n_out), bias, dtype)], axis=0)

    gen = [jnp.full((1, sizes[-1]), bias, dtype)]
    gen += [mat(sizes[i + 1], sizes[i]) for i in reversed(range(len(sizes) - 1))]
    rec = [mat(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)]
    return {"p": gen, "q": rec}


def _empty(n, dtype):
    return jnp.zeros((n, 0), dtype)


def _as_gen(rec_layers):
    """Recognition-order layers [x, h_1, …, h_L] → generative order [∅, h_L, …, x]."""
    return [_empty(rec_layers[0].shape[0], rec_layers[0].dtype)] + rec_layers[::-1]


def log_weights(params, x, key, num_samples, clip):
    """log p(x, h_k) − log q(h_k|x) for h_k ∼ q(h|x), shape (N, K)."""
    n = x.shape[0]
    xr = jnp.repeat(x, num_samples, axis=0)
    rec = sample(params["q"], xr, key, clip)
    lw = log_prob(params["p"], _as_gen(rec), clip) - log_prob(params["q"], rec, clip)
    return lw.reshape(n, num_samples)


def log_likelihood(params, x, key, num_samples=1000, chunk=100, clip=1e-3):
    """Importance-sampling estimate of log p(x) per example and its delta-method standard error."""
    if num_samples < 2 or num_samples % chunk:
        raise ValueError(f"num_samples must be >= 2 and a multiple of chunk={chunk}, got {num_samples}")
    keys = jax.random.split(key, num_samples // chunk)
    lw = jax.lax.map(lambda k: log_weights(params, x, k, chunk, clip), keys)  # (C, N, chunk)
    lw = jnp.moveaxis(lw, 0, 1).reshape(x.shape[0], num_samples)
    m = jnp.max(lw, axis=1, keepdims=True)
    w = jnp.exp(lw - m)
    mean = jnp.mean(w, axis=1)
    se = jnp.std(w, axis=1, ddof=1) / (np.sqrt(num_samples) * mean)
    return jnp.log(mean) + m[:, 0], se


class HelmholtzMachine:
    """WS / RWS / NRWS trainer of a Helmholtz machine with the optax-like ``init``/``step``."""

    def __init__(self, sizes, method="nrws", optimizer=None, *, num_samples=5, alpha=0.1,
                 alpha_skip=100.0, sleep_balance=0.5, clip_probs=1e-3, dtype=jnp.float32):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"sizes must list >= 2 positive layer widths (visible first), got {sizes}")
        if not (isinstance(num_samples, (int, np.integer)) and num_samples >= 1):
            raise ValueError(f"num_samples (K) must be a positive integer, got {num_samples!r}")
        if not callable(alpha) and not (np.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha (damping) must be > 0 or a schedule, got {alpha!r}")
        if not 0.0 < clip_probs < 0.5 or not 0.0 <= sleep_balance <= 1.0:
            raise ValueError("need 0 < clip_probs < 0.5 and 0 <= sleep_balance <= 1")
        self.sizes, self.method = [int(s) for s in sizes], method
        self.opt = optax.sgd(0.01) if optimizer is None else optimizer
        self.k = 1 if method == "ws" else int(num_samples)
        self.alpha = alpha if callable(alpha) else (lambda count: alpha)
        self.alpha_skip, self.balance, self.clip, self.dtype = alpha_skip, sleep_balance, clip_probs, dtype

    def init(self, key) -> HMState:
        params = init_params(key, self.sizes, self.dtype)
        return HMState(params, self.opt.init(params), jnp.zeros((), jnp.int32))

    def _natural(self, g, ws, layers, alpha):
        fisher = sbn_fisher(ws, layers, self.clip)
        nat = [(1.0 + alpha) * x for x in fisher.solve(g, alpha)]
        return jax.tree.map(lambda a, b: jnp.where(alpha > self.alpha_skip, a, b), g, nat)

    def gradients(self, params, x, key):
        """Ascent directions for (p, q) and the batch's K-sample bound (before any Fisher)."""
        n, clip, k = x.shape[0], self.clip, self.k
        kw, ks = jax.random.split(key)
        rec = sample(params["q"], jnp.repeat(x, k, axis=0), kw, clip)
        rec = [jax.lax.stop_gradient(h) for h in rec]
        gen_order = _as_gen(rec)
        lw = (log_prob(params["p"], gen_order, clip) - log_prob(params["q"], rec, clip)).reshape(n, k)
        wt = jax.lax.stop_gradient(jax.nn.softmax(lw, axis=1)).reshape(-1)
        bound = jnp.mean(jax.nn.logsumexp(lw, axis=1) - np.log(k))
        g_p = jax.grad(lambda p: jnp.sum(wt * log_prob(p, gen_order, clip)) / n)(params["p"])
        dreams = sample(params["p"], _empty(n * k, x.dtype), ks, clip)  # [∅, h_L, …, x]
        g_sleep = jax.grad(lambda q: jnp.mean(log_prob(q, dreams[:0:-1], clip)))(params["q"])
        if self.method == "ws":
            g_q = g_sleep
        else:
            g_wake = jax.grad(lambda q: jnp.sum((wt - 1.0 / k) * log_prob(q, rec, clip)) / n)(params["q"])
            g_q = jax.tree.map(lambda a, b: self.balance * a + (1.0 - self.balance) * b, g_wake, g_sleep)
        return {"p": g_p, "q": g_q}, bound, rec, dreams

    def step(self, state: HMState, x, key):
        params = state.params
        x = jnp.asarray(x, self.dtype)
        grads, bound, rec, dreams = self.gradients(params, x, key)
        if self.method == "nrws":
            alpha = jnp.asarray(self.alpha(state.count), self.dtype)
            grads = {"p": self._natural(grads["p"], params["p"], dreams, alpha),
                     "q": self._natural(grads["q"], params["q"], rec, alpha)}
        updates, opt_state = self.opt.update(jax.tree.map(jnp.negative, grads), state.opt_state, params)
        new = optax.apply_updates(params, updates)
        finite = jnp.isfinite(bound) & jnp.isfinite(optax.tree_utils.tree_norm(new))
        return HMState(new, opt_state, state.count + 1), {"loss": -bound, "finite": finite}
