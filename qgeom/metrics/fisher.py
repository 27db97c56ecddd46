"""Classical Fisher information metrics.

For a model p(y|x, θ) the Fisher metric is F = E_x E_{y∼p(·|x,θ)}[∇log p ∇log pᵀ].
When the model is a network output z = f(θ, x) followed by an exponential-family
likelihood in its natural parameter, F = E_x[J_xᵀ H(z) J_x] with J_x = ∂z/∂θ and H the
Hessian of −log p in z (Martens, "New insights and perspectives on the natural
gradient method", JMLR 2020) — the generalized Gauss–Newton (GGN) form, so ``mv`` needs one
JVP and one VJP and no P×P matrix:

* categorical logits z:  H = diag(p) − p pᵀ, p = softmax(z);
* Bernoulli logits z:    H = diag(σ(z)(1 − σ(z)));
* Gaussian mean z, fixed variance s²:  H = I/s² (the GGN of the squared error).

Batch averages are means over the N inputs. ``fisher_monte_carlo`` (targets sampled
from the model) and ``empirical_fisher`` (data labels — NOT a Fisher in general; see
Kunstner, Balles & Hennig 2019, "Limitations of the empirical Fisher approximation")
return the outer-product metric of per-example gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from qgeom.metrics.base import Metric, check_like, pytree_dataclass
from qgeom.metrics.lowrank import GradientWindow

_KINDS = ("probs", "categorical", "bernoulli", "gaussian")


@pytree_dataclass
class OutputFisher(Metric):
    """F = mean_x J_xᵀ H(z_x) J_x for outputs z = fn(params[, inputs]) and an output Hessian ``kind``.

    ``kind`` ∈ {"probs" (z = probabilities, H = diag(1/p)), "categorical", "bernoulli",
    "gaussian"}; ``stats`` holds what H needs at the current parameters (p, softmax,
    sigmoid, or 1/s²). ``fn`` is static (hashed by identity); ``inputs`` may be None.
    """

    params: object
    inputs: object
    stats: jax.Array
    fn: object = None
    kind: str = "probs"
    batched: bool = False

    meta_fields = ("fn", "kind", "batched")

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")

    def _like(self):
        return self.params

    def _out(self, p):
        return self.fn(p) if self.inputs is None else self.fn(p, self.inputs)

    def _count(self):
        return self.stats.shape[0] if self.batched else 1

    def _apply_h(self, u):
        """H(z)·u for an output-shaped tangent u."""
        st = self.stats
        if self.kind == "probs":
            pos = st > 0
            return jnp.where(pos, u / jnp.where(pos, st, 1.0), 0.0)
        if self.kind == "categorical":
            return st * u - st * jnp.sum(st * u, axis=-1, keepdims=True)
        if self.kind == "bernoulli":
            return st * (1.0 - st) * u
        return st * u  # gaussian: st = 1/s²

    def mv(self, v):
        check_like(v, self.params, "v")
        _, lin = jax.linearize(self._out, self.params)
        u = lin(v)
        (out,) = jax.linear_transpose(lin, self.params)(self._apply_h(u).astype(u.dtype))
        return jax.tree_util.tree_map(lambda t: t / self._count(), out)

    def jacobian(self):
        """J = ∂z/∂θ with the flattened parameter axis last: shape z.shape + (P,)."""
        flat, unravel = ravel_pytree(self.params)
        out_size = self.stats.size
        jac = jax.jacfwd if flat.size <= out_size else jax.jacrev
        return jac(lambda t: self._out(unravel(t)))(flat)

    def dense(self):
        j = self.jacobian()
        hj = jax.vmap(self._apply_h, in_axes=-1, out_axes=-1)(j)
        nd = j.ndim - 1
        axes = tuple(range(nd))
        return jnp.tensordot(j, hj, axes=(axes, axes)) / self._count()


def _check_probs(p):
    try:
        pc = np.asarray(p)
    except (TypeError, jax.errors.TracerArrayConversionError):
        return
    if pc.ndim != 1:
        raise ValueError(f"probs_fn must return a 1-D probability vector, got shape {pc.shape}")
    if not np.all(np.isfinite(pc)):
        raise ValueError("probs_fn returned non-finite probabilities")
    if np.min(pc) < -1e-12:
        raise ValueError(f"probs_fn returned a negative probability {np.min(pc):.3g}")
    if abs(np.sum(pc) - 1.0) > 1e-6:
        raise ValueError(f"probs_fn returned probabilities summing to {np.sum(pc):.8g}, not 1")


def fisher(probs_fn, params):
    """Exact Fisher of a categorical distribution p = probs_fn(params) (shape (K,)).

    F = Σ_k p_k ∇log p_k ∇log p_kᵀ = Jᵀ diag(1/p) J with J = ∂p/∂θ (Amari 2016, "Information
    Geometry and Its Applications"); outcomes with p_k = 0 contribute nothing (their gradient
    vanishes too for a smooth nonnegative p). ``mv`` is one JVP and one VJP.
    """
    p = probs_fn(params)
    _check_probs(p)
    return OutputFisher(params, None, p, fn=probs_fn, kind="probs", batched=False)


def _check_batch(z, name):
    if jnp.ndim(z) < 1:
        raise ValueError(f"{name} must return an array with a leading batch axis, got shape {jnp.shape(z)}")


def fisher_categorical(logits_fn, params, x):
    """Fisher of p(y|x) = softmax(logits_fn(params, x)) averaged over the batch x.

    F = (1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n, J_n = ∂z_n/∂θ, z = logits_fn(params, x) of
    shape (N, K).
    """
    z = logits_fn(params, x)
    if jnp.ndim(z) != 2:
        raise ValueError(f"logits_fn must return (N, K) logits, got shape {jnp.shape(z)}")
    return OutputFisher(params, x, jax.nn.softmax(z, axis=-1), fn=logits_fn, kind="categorical", batched=True)


def fisher_bernoulli(logits_fn, params, x):
    """Fisher of independent Bernoulli outputs with logits z = logits_fn(params, x) (shape (N, ...)).

    F = (1/N) Σ_n J_nᵀ diag(σ(z_n)(1 − σ(z_n))) J_n (e.g. sigmoid cross-entropy autoencoders).
    """
    z = logits_fn(params, x)
    _check_batch(z, "logits_fn")
    return OutputFisher(params, x, jax.nn.sigmoid(z), fn=logits_fn, kind="bernoulli", batched=True)


def ggn_gaussian(mean_fn, params, x, sigma=1.0):
    """Fisher of y ∼ N(mean_fn(params, x), s²I) = the Gauss–Newton matrix (1/(N s²)) Σ_n J_nᵀ J_n."""
    z = mean_fn(params, x)
    _check_batch(z, "mean_fn")
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    stats = jnp.full(jnp.shape(z), 1.0 / sigma**2, dtype=jnp.result_type(z))
    return OutputFisher(params, x, stats, fn=mean_fn, kind="gaussian", batched=True)


def _log_likelihood(likelihood, z, y, sigma):
    if likelihood == "categorical":
        return jnp.take_along_axis(jax.nn.log_softmax(z, -1), y[..., None], -1)[..., 0]
    if likelihood == "bernoulli":
        ll = y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z)
        return jnp.sum(ll.reshape(ll.shape[0], -1), axis=1)
    r = ((y - z) / sigma).reshape(z.shape[0], -1)
    return -0.5 * jnp.sum(r**2, axis=1)


def _per_example_grads(logp1, params, *batch):
    """(M, P) per-example gradients of ``logp1(params, *example)`` mapped over the leading axis of ``batch``."""
    flat, unravel = ravel_pytree(params)
    return jax.vmap(jax.grad(lambda t, *ex: logp1(unravel(t), *ex)), (None,) + (0,) * len(batch))(flat, *batch)


def _one(tree):
    """Add a batch axis of size one to every leaf."""
    return jax.tree_util.tree_map(lambda a: a[None], tree)


def fisher_monte_carlo(fn, params, x, key, n_samples=1, likelihood="categorical", sigma=1.0):
    """Monte-Carlo Fisher: targets sampled from the model, F̂ = (1/(N S)) Σ_{n,s} g_{ns} g_{nsᵀ}.

    g_{ns} = ∇θ log p(y_{ns}|x_n) with y_{ns} ∼ p(·|x_n, θ), S = ``n_samples``; the
    likelihood on z = fn(params, x) is "categorical" (logits), "bernoulli" (logits) or
    "gaussian" (mean, std ``sigma``). Unbiased for the exact Fisher; returned as a
    ``GradientWindow`` (rank ≤ N·S, ``solve`` by Woodbury).
    """
    if likelihood not in ("categorical", "bernoulli", "gaussian"):
        raise ValueError(f"likelihood must be 'categorical', 'bernoulli' or 'gaussian', got {likelihood!r}")
    if not (isinstance(n_samples, (int, np.integer)) and n_samples >= 1):
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    z = jax.lax.stop_gradient(fn(params, x))
    _check_batch(z, "fn")
    keys = jax.random.split(key, n_samples)
    if likelihood == "categorical":
        ys = jax.vmap(lambda k: jax.random.categorical(k, z, axis=-1))(keys)
    elif likelihood == "bernoulli":
        ys = jax.vmap(lambda k: jax.random.bernoulli(k, jax.nn.sigmoid(z)).astype(z.dtype))(keys)
    else:
        ys = jax.vmap(lambda k: z + sigma * jax.random.normal(k, z.shape, z.dtype))(keys)

    xs = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n_samples,) + a.shape).reshape((-1,) + a.shape[1:]), x)
    ys = ys.reshape((-1,) + ys.shape[2:])

    def logp1(p, xi, yi):
        return _log_likelihood(likelihood, fn(p, _one(xi)), _one(yi), sigma)[0]

    return GradientWindow(_per_example_grads(logp1, params, xs, ys), params)


def empirical_fisher(logp_fn, params, x, y):
    """Empirical "Fisher" (1/N) Σ_n ∇log p(y_n|x_n) ∇log p(y_n|x_n)ᵀ with DATA labels y.

    ``logp_fn(params, x, y)`` returns the (N,) per-example log-likelihoods. This is the
    uncentered covariance of the data gradients, not a Fisher (it ignores the model's
    own distribution over y; Kunstner et al. 2019). Returned as a ``GradientWindow``.
    """
    ll = logp_fn(params, x, y)
    if jnp.ndim(ll) != 1:
        raise ValueError(f"logp_fn must return per-example log-likelihoods of shape (N,), got {jnp.shape(ll)}")
    grads = _per_example_grads(lambda p, xi, yi: logp_fn(p, _one(xi), _one(yi))[0], params, x, y)
    return GradientWindow(grads, params)
