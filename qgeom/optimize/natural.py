"""Damped natural gradient with cached curvature: QPNGD (BKM) and Fubini–Study QNG.

    θ ← θ − η (G(θ) + λ I)⁻¹ ∇L(θ)

``natural_gradient(metric_fn, ...)`` turns any ``metric_fn(params) -> Metric`` into an
optax ``GradientTransformationExtraArgs``. The metric is eigendecomposed block by block
(``BlockDiagonal`` blocks separately, P_k × P_k each: ``Metric.factorize()``, an
``EighFactorization`` per dense block) when it is refreshed and the factorization is kept in
the optimizer state, so a damped solve is two matrix-vector
products for any λ. Damping, both parts configurable:

* the rule of the QPNGD authors' code: add ``shift`` (1) when λ_min(G) ≤ ``shift_threshold``
  (1), then a ridge ``damping`` (1e-2);
* amortized curvature (the K-FAC playbook, Martens & Grosse 2015 §6.5, applied to BKM):
  refresh G only every ``refresh_every`` steps and, with ``adapt_damping=True``, adapt the
  ridge λ Levenberg–Marquardt style from the reduction ratio
  r = (L(θ_t) − L(θ_{t−1})) / (gᵀδ + ½ δᵀGδ) of the previous step: λ ← λ·``lm_decay`` if
  r > 3/4, λ ← λ/``lm_decay`` if r < 1/4, clipped to ``damping_bounds``
  (``qgeom.optimize.damping.levenberg_marquardt``, the rule K-FAC uses). The loss value
  must then be passed as ``update(grads, state, params, value=loss)`` (``fit`` does).

A step whose direction is not finite (NaN/Inf gradient, loss or solve) is rejected: a zero
update (or, with ``adapt_damping``, a return to the last accepted point) is returned, the
ridge is multiplied by 10 (``qgeom.optimize.damping.rejected_damping``; by 1/``lm_decay``² when
the loss rose) and ``state.rejected`` counts it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import tree_utils as otu

from qgeom.metrics.factorization import EighFactorization
from qgeom.optimize._checks import check_count, check_positive
from qgeom.optimize.damping import (
    all_finite,
    levenberg_marquardt,
    reduction_ratio,
    rejected_damping,
)

EighMetric = EighFactorization  # the name under which qgeom.optimize exported it


class NaturalGradientState(NamedTuple):
    """count: steps taken; factored: the cached factorization (``Metric.factorize()``); damping: current ridge λ;
    prev_params / prev_grads / prev_value / prev_pred: the last accepted point, its gradient
    and loss, and the model-predicted change of the step taken from it (for the LM ratio and
    step rejection); rejected: rejected steps; refreshes: metric evaluations."""

    count: jax.Array
    factored: Any
    damping: jax.Array
    prev_params: Any
    prev_grads: Any
    prev_value: jax.Array
    prev_pred: jax.Array
    rejected: jax.Array
    refreshes: jax.Array


def natural_gradient(
    metric_fn,
    learning_rate,
    *,
    damping=1e-2,
    shift=1.0,
    shift_threshold=1.0,
    refresh_every=1,
    adapt_damping=False,
    lm_decay=2.0 / 3.0,
    damping_bounds=(1e-6, 1e3),
    max_norm=None,
    momentum=None,
):
    """Damped natural gradient δ = −η (G + λ_tot I)⁻¹ g as an optax transformation.

    ``metric_fn(params) -> Metric`` (e.g. ``lambda p: qhbm_bkm(model, p)``); λ_tot =
    ``shift``·[λ_min(G) ≤ ``shift_threshold``] + λ, λ starting at ``damping``. Set ``shift=0``
    for a plain ridge. ``refresh_every`` = k recomputes and refactorizes G every k steps.

    ``adapt_damping=True`` (needs ``update(..., value=loss)``; ``fit`` passes it): λ follows
    the LM rule of the module docstring and a step that raised the loss (or made it
    non-finite) is rejected: the update returns to the previous point and retries from its
    stored gradient with the larger λ (no extra gradient evaluation). ``max_norm`` = κ bounds
    the step in the metric, δᵀGδ ≤ κ (≈ 2·D(ρ_θ‖ρ_{θ+δ}) for BKM; K-FAC's norm constraint).
    ``momentum`` = μ ∈ [0, 1) adds heavy-ball momentum to the natural-gradient steps,
    v ← μ v + δ (``optax.trace``); not with ``adapt_damping`` (a rejected step would have to
    undo the velocity too).

    Returns ``optax.GradientTransformationExtraArgs``; ``update(grads, state, params,
    value=None)`` → (updates, state); apply with ``optax.apply_updates``.
    """
    lr = check_positive("learning_rate", learning_rate)
    damping = check_positive("damping", damping, allow_zero=True)
    shift = check_positive("shift", shift, allow_zero=True)
    shift_threshold = float(shift_threshold)
    refresh_every = check_count("refresh_every", refresh_every)
    lm_decay = check_positive("lm_decay", lm_decay)
    if not lm_decay < 1:
        raise ValueError(f"lm_decay must lie in (0, 1), got {lm_decay}")
    lo, hi = (check_positive("damping_bounds", b, allow_zero=True) for b in damping_bounds)
    if adapt_damping and not lo < hi:
        raise ValueError(f"damping_bounds must be increasing, got {damping_bounds}")
    if max_norm is not None:
        max_norm = check_positive("max_norm", max_norm)
    if momentum is not None:
        momentum = check_positive("momentum", momentum, allow_zero=True)
        if not momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if adapt_damping:
            raise ValueError("momentum cannot be combined with adapt_damping=True (rejected steps would "
                             "have to undo the velocity)")

    def factorize(p):
        return metric_fn(p).factorize()

    def init(params):
        shapes = jax.eval_shape(factorize, params)
        factored = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        z = jnp.zeros((), jnp.float64)
        return NaturalGradientState(
            jnp.zeros((), jnp.int32), factored, jnp.asarray(damping, jnp.float64), params,
            otu.tree_zeros_like(params), z, z, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def update(grads, state, params=None, *, value=None, **extra):
        del extra
        if params is None:
            raise ValueError("natural_gradient needs params: update(grads, state, params)")
        if adapt_damping and value is None:
            raise ValueError("adapt_damping=True needs the loss: update(grads, state, params, value=loss)")
        lam = state.damping
        finite_in = all_finite(grads) & (True if value is None else jnp.isfinite(value))
        reject = ~finite_in & (state.count > 0)
        if adapt_damping:
            new = levenberg_marquardt(lam, reduction_ratio(value - state.prev_value, state.prev_pred), lm_decay)
            reject = reject | ((state.count > 0) & (value > state.prev_value))
            new = jnp.where(reject, rejected_damping(lam, 1.0 / lm_decay**2), new)
            lam = jnp.where(state.count > 0, jnp.clip(new, lo, hi), lam)
            base = otu.tree_where(reject, state.prev_params, params)
            g = otu.tree_where(reject, state.prev_grads, grads)
            base_value = jnp.where(reject, state.prev_value, value)
        else:
            base, g, base_value = params, grads, (0.0 if value is None else value)

        refresh = (state.count % refresh_every == 0) & ~reject
        factored = jax.lax.cond(refresh, factorize, lambda p: state.factored, base)
        total = lam + shift * (factored.min_eigenvalue() <= shift_threshold)
        step = otu.tree_scale(-lr, factored.solve(g, total))
        curv = otu.tree_real(otu.tree_vdot(step, factored.mv(step)))
        if max_norm is not None:
            scale = jnp.minimum(1.0, jnp.sqrt(max_norm / jnp.maximum(curv, 1e-300)))
            step = otu.tree_scale(scale, step)
            curv = curv * scale**2
        pred = otu.tree_real(otu.tree_vdot(g, step)) + 0.5 * curv

        ok = all_finite(step) & (finite_in | reject)
        step = otu.tree_where(ok, step, otu.tree_zeros_like(step))
        updates = otu.tree_sub(otu.tree_add(base, step), params)
        rejected = reject | ~ok
        new_state = NaturalGradientState(
            count=state.count + 1,
            factored=factored,
            damping=jnp.where(ok, lam, rejected_damping(lam, 10.0, floor=1e-3, ceiling=1e6)),
            prev_params=base,
            prev_grads=g,
            prev_value=jnp.asarray(base_value, jnp.float64),
            prev_pred=jnp.where(ok, pred, 0.0),
            rejected=state.rejected + rejected.astype(jnp.int32),
            refreshes=state.refreshes + refresh.astype(jnp.int32),
        )
        return updates, new_state

    update.extra_grad_evals = 0
    transform = optax.GradientTransformationExtraArgs(init, update)
    return transform if not momentum else optax.chain(transform, optax.trace(decay=momentum))


def qpngd(model, learning_rate, **kwargs):
    """Quantum-probabilistic natural gradient: ``natural_gradient`` with the exact block-diagonal
    BKM metric ``qgeom.metrics.qhbm_bkm(model, ·)`` (Sbahi et al. 2022). Keyword arguments as
    ``natural_gradient``; defaults are the authors' (shift 1 when λ_min ≤ 1, ridge 1e-2,
    refresh every step). Fast amortized setting: ``refresh_every=5..10, adapt_damping=True,
    shift=0``."""
    from qgeom.metrics.qhbm import qhbm_bkm

    return natural_gradient(lambda p: qhbm_bkm(model, p), learning_rate, **kwargs)


def qng(model, learning_rate, **kwargs):
    """Fubini–Study quantum natural gradient on the circuit part of a QHBM (plain gradient on θ):
    ``natural_gradient`` with ``qgeom.metrics.qhbm_fubini_study``. Defaults: ridge 1e-2, no shift."""
    from qgeom.metrics.qhbm import qhbm_fubini_study

    kwargs.setdefault("shift", 0.0)
    return natural_gradient(lambda p: qhbm_fubini_study(model, p), learning_rate, **kwargs)
