"""M-FAC's dynamic algorithm as an optimizer (Frantar, Kurtic & Alistarh, NeurIPS 2021, arXiv 2107.03356).

The curvature is the empirical Fisher of a sliding window of the last m gradients (a ring
buffer G, m × d, initialised to zeros),

    F̂ = λI + (1/m) Σ_{i≤m} g_i g_iᵀ = λI + GᵀG/m,

and each step, as the authors' ``optim.py`` does it, (1) adds weight decay to the gradient,
g ← ∇L + wd·θ, (2) replaces the oldest row of G by g, (3) multiplies by F̂⁻¹ *including* g:

    F̂⁻¹g = (g − Gᵀ (mλI + GGᵀ)⁻¹ G g) / λ = Gᵀ y,   y = m (mλI + GGᵀ)⁻¹ e_i

(Woodbury; the second form, valid because g is row i of G, avoids the cancellation in
g − Gᵀz that costs the first one a factor cond(F̂) of float32 accuracy),

(4) averages v ← μv + (1 − μ)F̂⁻¹g (μ = 0: v = F̂⁻¹g) and steps θ ← θ − η v. The Gram matrix
GGᵀ is kept in the state and updated by one row and column (k = Gg, O(dm)); the m × m
Cholesky factor is recomputed (O(m³)) and Gᵀy costs O(dm) — the dynamic
algorithm's O(dm + m³) per replaced gradient. The m × m algebra runs in float64 when JAX's
x64 mode is on (float32 gradients: the system's condition number reaches ‖g‖²/(mλ)).

``window_metric(state, params)`` returns the window as ``qgeom.metrics.GradientWindow``
(``mv``, ``solve``, ``dense``). The buffer is m·d floats: jit the training step with the
optimizer state donated (``donate_argnums``) so the row update happens in place.
A non-finite gradient gives a zero update and leaves the window, the velocity and the count
unchanged; ``state.total_notfinite`` counts such steps. (Row-wise selects rather than
``optax.apply_if_finite``, whose ``lax.cond`` over the whole state copies the m·d buffer.)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from classical.transforms._common import (
    check_beta,
    check_learning_rate,
    check_matching,
    learning_rate_at,
)
from qgeom.metrics.lowrank import GradientWindow
from qgeom.optimize._checks import check_count, check_positive


class MFACState(NamedTuple):
    """count: gradients inserted; grads: the ring buffer (m × d, ``ravel_pytree`` order);
    gram: GGᵀ (m × m); velocity: the averaged step (d); like: zeros shaped like the parameters;
    total_notfinite: non-finite gradients skipped."""

    count: jax.Array
    grads: jax.Array
    gram: jax.Array
    velocity: jax.Array
    like: optax.Params
    total_notfinite: jax.Array


def mfac(learning_rate=1e-3, num_grads=32, damping=1e-5, momentum=0.0,
         weight_decay=0.0) -> optax.GradientTransformation:
    """M-FAC as an optax ``GradientTransformation``: updates = −η v, v as in the module docstring.

    Args:
      learning_rate: η, a number or an optax schedule of the step count (authors: 1e-3).
      num_grads: m ≥ 1, the window length (authors: 512–1024 on GPUs; memory is m·d floats).
      damping: λ > 0 (authors: 1e-5).
      momentum: μ in [0, 1); weight_decay: wd ≥ 0, added to the gradient before it enters the
        window (needs ``params`` in ``update`` when non-zero).
    """
    check_learning_rate(learning_rate)
    check_count("num_grads (the window m)", num_grads)
    check_positive("damping", damping)
    check_beta("momentum", momentum)
    check_positive("weight_decay", weight_decay, allow_zero=True)
    m = num_grads

    def init_fn(params):
        flat, _ = ravel_pytree(params)
        cdt = jnp.promote_types(flat.dtype, jax.dtypes.canonicalize_dtype(jnp.float64))
        return MFACState(jnp.zeros([], jnp.int32), jnp.zeros((m, flat.size), flat.dtype), jnp.zeros((m, m), cdt),
                         jnp.zeros_like(flat), jax.tree_util.tree_map(jnp.zeros_like, params),
                         jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        check_matching(updates, state.like, "grads")
        if weight_decay and params is None:
            raise ValueError("mfac with weight_decay > 0 needs params in update(grads, state, params)")
        g, unravel = ravel_pytree(updates)
        if weight_decay:
            g = g + weight_decay * ravel_pytree(params)[0]
        finite = jnp.all(jnp.isfinite(g))
        i = state.count % m
        g = jnp.where(finite, g, state.grads[i])  # a non-finite gradient re-inserts the old row: no change
        grads = state.grads.at[i].set(g)
        k = jnp.dot(grads, g, precision=jax.lax.Precision.HIGHEST).astype(state.gram.dtype)
        gram = state.gram.at[i, :].set(k).at[:, i].set(k)
        chol = jnp.linalg.cholesky(gram + m * damping * jnp.eye(m, dtype=gram.dtype))
        y = m * jax.scipy.linalg.cho_solve((chol, True), jnp.eye(m, dtype=gram.dtype)[i])
        step = jnp.dot(grads.T, y.astype(g.dtype), precision=jax.lax.Precision.HIGHEST)  # not y @ G: XLA copied G twice
        v = momentum * state.velocity + (1 - momentum) * step if momentum else step
        v = jnp.where(finite, v, state.velocity)
        lr = learning_rate_at(learning_rate, state.count)
        out = jnp.where(finite, -lr * v, 0).astype(g.dtype)
        return unravel(out), MFACState(state.count + finite, grads, gram, v, state.like,
                                       state.total_notfinite + (~finite))

    return optax.GradientTransformation(init_fn, update_fn)


def window_metric(state, params) -> GradientWindow:
    """The window of an ``mfac`` state as a qgeom metric, GᵀG/m."""
    return GradientWindow(state.grads, params)
