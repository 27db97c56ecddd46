"""Argument checks and small helpers shared by the gradient-only transformations."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qgeom.optimize._checks import check_positive


def check_beta(name, value, allow_one=False):
    """``ValueError`` unless 0 ≤ value < 1 (or ≤ 1 with ``allow_one``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (0.0 <= v < 1.0 or (allow_one and v == 1.0)):
        raise ValueError(f"{name} must be in [0, {'1]' if allow_one else '1)'}, got {value!r}")


def check_learning_rate(learning_rate):
    """A positive number or a schedule (callable of the step count)."""
    if not callable(learning_rate):
        check_positive("learning_rate", learning_rate)


def learning_rate_at(learning_rate, count):
    """The learning rate at step ``count`` (schedules are called, numbers returned)."""
    return learning_rate(count) if callable(learning_rate) else learning_rate


def check_matching(grads, reference, what="grads"):
    """``ValueError`` unless ``grads`` has the tree structure and leaf shapes of ``reference``."""
    sg, sr = jax.tree_util.tree_structure(grads), jax.tree_util.tree_structure(reference)
    if sg != sr:
        raise ValueError(f"{what} has tree structure {sg}, but the optimizer state was built for {sr}")
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(reference)):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(f"{what} has a leaf of shape {jnp.shape(a)} where the parameters have "
                             f"{jnp.shape(b)}")
