"""First-order baselines from optax: SGD with the Sutskever et al. (2013) momentum schedule, and Adam.

Sutskever, Martens, Dahl & Hinton 2013 ("On the importance of initialization and momentum
in deep learning", eq. 5): μ_t = min(1 − 2^(−1 − log₂(⌊t/250⌋ + 1)), μ_max).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def sutskever_momentum(mu_max=0.99):
    """The schedule t ↦ min(1 − 2^(−1 − log₂(⌊t/250⌋ + 1)), μ_max) (= min(1 − 1/(2(⌊t/250⌋+1)), μ_max))."""
    if not 0 <= mu_max < 1:
        raise ValueError(f"mu_max must be in [0, 1), got {mu_max!r}")

    def schedule(t):
        k = jnp.floor(jnp.asarray(t, jnp.float32) / 250.0) + 1.0
        return jnp.minimum(1.0 - 2.0 ** (-1.0 - jnp.log2(k)), mu_max).astype(jnp.float32)

    return schedule


def sgd_sutskever(learning_rate, mu_max=0.99, nesterov=True):
    """optax SGD whose momentum follows ``sutskever_momentum(mu_max)`` (via ``optax.inject_hyperparams``).

    The paper uses Nesterov momentum; the state's ``hyperparams["momentum"]`` shows the current μ_t.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    return optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate, momentum=sutskever_momentum(mu_max),
                                               nesterov=nesterov)


def adam(learning_rate, **kwargs):
    """optax Adam (a thin alias so experiments name every method from one place)."""
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    return optax.adam(learning_rate, **kwargs)
