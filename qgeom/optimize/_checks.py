"""Input validation shared by the optimizers (ValueError before any computation)."""

from __future__ import annotations

import math

import jax
import numpy as np


def check_positive(name, value, allow_zero=False):
    """Raise ``ValueError`` unless ``value`` is a finite number > 0 (or >= 0 with ``allow_zero``).

    A traced value (a hyperparameter injected by ``optax.inject_hyperparams`` and updated
    inside ``jit``) is returned unchanged: it was checked when it entered the state.
    """
    if isinstance(value, jax.core.Tracer):
        return value
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def check_count(name, value, minimum=1):
    """Raise ``ValueError`` unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_alpha(alpha):
    """Raise ``ValueError`` unless 0 <= alpha <= 1."""
    a = check_positive("alpha", alpha, allow_zero=True)
    if not isinstance(a, jax.core.Tracer) and a > 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    return a
