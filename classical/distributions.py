"""Predictive distributions p(y | f(x)) at a network's output f(x): negative log-likelihood,
sampling (for the true Fisher) and the Hessian of the NLL in output space (for GGN products).

For all three the NLL Hessian H(f) does not depend on y, and the Fisher equals the
generalized Gauss–Newton matrix JᵀHJ (Martens & Grosse 2015 §3; Martens 2020 §9):

* ``Categorical``: f = logits, y integer labels, NLL = logsumexp(f) − f_y, H = diag(p) − ppᵀ;
* ``Bernoulli``:   f = logits, y ∈ [0, 1] per output, NLL = Σ softplus(f) − y f, H = diag(p(1 − p));
* ``Gaussian``:    f = mean, unit variance, y real, NLL = ½‖f − y‖² (constants dropped), H = I.

Every method works on one batch: ``out`` is (N, ...) and per-example results are (N,).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


class Distribution:
    """Base class; subclasses define ``nll``, ``sample``, ``hessian_quad`` and ``check_targets``."""

    name = "distribution"

    def __repr__(self):
        return f"{type(self).__name__}()"

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))

    def mean_nll(self, out, y):
        """Batch-mean negative log-likelihood (the training loss)."""
        return jnp.mean(self.nll(out, y))

    def check_targets(self, out_shape, y) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _flat(x):
    return x.reshape(x.shape[0], -1)


class Categorical(Distribution):
    """Softmax over the last axis of ``out`` (logits); targets are integer class labels."""

    name = "categorical"

    def nll(self, out, y):
        logp = jax.nn.log_softmax(out, axis=-1)
        return -jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), axis=-1)[:, 0]

    def sample(self, key, out):
        return jax.random.categorical(key, out, axis=-1)

    def hessian_quad(self, out, u, v):
        """Per-example uᵀ H v with H = diag(p) − ppᵀ."""
        p = jax.nn.softmax(out, axis=-1)
        return jnp.sum(p * u * v, -1) - jnp.sum(p * u, -1) * jnp.sum(p * v, -1)

    def check_targets(self, out_shape, y):
        if y.shape != out_shape[:1] or not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(
                f"categorical targets must be integer labels of shape {out_shape[:1]}, got {y.dtype} {y.shape}")


class Bernoulli(Distribution):
    """Independent sigmoid units on every entry of ``out`` (logits); targets in [0, 1]."""

    name = "bernoulli"

    def nll(self, out, y):
        return jnp.sum(_flat(jax.nn.softplus(out) - y * out), axis=-1)

    def sample(self, key, out):
        return jax.random.bernoulli(key, jax.nn.sigmoid(out)).astype(out.dtype)

    def hessian_quad(self, out, u, v):
        p = jax.nn.sigmoid(out)
        return jnp.sum(_flat(p * (1 - p) * u * v), axis=-1)

    def check_targets(self, out_shape, y):
        if y.shape != tuple(out_shape):
            raise ValueError(f"bernoulli targets must have the output shape {tuple(out_shape)}, got {y.shape}")


class Gaussian(Distribution):
    """Unit-variance Gaussian with mean ``out``: the squared-error loss ½‖f − y‖²."""

    name = "gaussian"

    def nll(self, out, y):
        return 0.5 * jnp.sum(_flat((out - y) ** 2), axis=-1)

    def sample(self, key, out):
        return out + jax.random.normal(key, out.shape, out.dtype)

    def hessian_quad(self, out, u, v):
        return jnp.sum(_flat(u * v), axis=-1)

    def check_targets(self, out_shape, y):
        if y.shape != tuple(out_shape):
            raise ValueError(f"gaussian targets must have the output shape {tuple(out_shape)}, got {y.shape}")


DISTRIBUTIONS = {"categorical": Categorical, "bernoulli": Bernoulli, "gaussian": Gaussian}


def get_distribution(output) -> Distribution:
    """A ``Distribution`` from an instance or one of the names in ``DISTRIBUTIONS``."""
    if isinstance(output, Distribution):
        return output
    if output not in DISTRIBUTIONS:
        raise ValueError(f"unsupported output distribution {output!r}; choose one of {sorted(DISTRIBUTIONS)}")
    return DISTRIBUTIONS[output]()
