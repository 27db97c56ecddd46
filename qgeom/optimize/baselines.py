"""First-order baselines from optax, in the same extra-args shape as the geometric optimizers."""

from __future__ import annotations

import optax

from qgeom.optimize._checks import check_positive


def _wrap(tx):
    tx = optax.with_extra_args_support(tx)
    update = tx.update

    def wrapped(updates, state, params=None, **extra):
        return update(updates, state, params, **extra)

    wrapped.extra_grad_evals = 0
    return optax.GradientTransformationExtraArgs(tx.init, wrapped)


def gd(learning_rate):
    """Plain gradient descent θ ← θ − η∇L (``optax.sgd``)."""
    return _wrap(optax.sgd(check_positive("learning_rate", learning_rate)))


def adam(learning_rate, **kwargs):
    """Adam (``optax.adam``; keyword arguments b1, b2, eps, ... passed through)."""
    return _wrap(optax.adam(check_positive("learning_rate", learning_rate), **kwargs))
