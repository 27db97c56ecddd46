"""Shampoo (Gupta, Koren & Singer 2018) as distributed-Shampoo practice runs it, as an optax transformation.

For each parameter tensor G of order k (a weight matrix: k = 2) and each of its axes i,

    S_i ← β₂ S_i + w G_(i) G_(i)ᵀ      (w = 1 − β₂, or w = 1 when β₂ = 1: the paper's sum;
                                        for a matrix S_0 = L ← β₂L + GGᵀ, S_1 = R ← β₂R + GᵀG),
    P(G) = G ×_0 (S_0 + εσ_0 I)^{−1/(2k)} ×_1 … ×_{k−1} (S_{k−1} + εσ_{k−1} I)^{−1/(2k)}

(for a matrix L^{−1/4} G R^{−1/4}); σ_i = λ_max(S_i), so ε is relative (Anil et al. 2020,
"Scalable second order optimization for deep learning", ``relative_matrix_epsilon``).

* Statistics every ``statistics_every`` steps (1 by default); inverse roots by ``eigh`` every
  ``precondition_every`` (T) steps from step
  ``start_preconditioning_step`` on; a root whose λ_max ≤ 0 or which is not finite is not
  used: the previous one is kept (the state's ``root_failures`` counts them).
* Axes longer than ``block_size`` are split into blocks of at most ``block_size``; every block
  is its own Shampoo tensor. An axis longer than ``max_precond_dim``, and every vector or
  scalar, gets a *diagonal* factor instead: S_i = Σ over the other axes of G², same exponent.
* Grafting (per parameter tensor, i.e. per layer): the direction is Shampoo's, the norm is the
  grafted method's, u = P(G)·‖g_graft‖/‖P(G)‖, with g_graft from ``graft``: ``"adagrad"``
  (G/(√ΣG² + ε_g)), ``"adam"`` (G/(√v̂ + ε_g), v̂ Adam's bias-corrected second moment with
  β₂), or ``"sgd"`` (G). Before ``start_preconditioning_step`` the update is g_graft.
* Momentum on the grafted update: m ← β₁ m + u, step −η(β₁ m + u) (Nesterov) or −η m.

A non-finite gradient gives a zero update and leaves the state unchanged (``optax.apply_if_finite``;
its state counts such steps in ``total_notfinite``).
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from classical.transforms._common import (
    check_beta,
    check_learning_rate,
    check_matching,
    learning_rate_at,
)
from classical.transforms.tensor_ops import (
    axis_gram,
    axis_sq_sum,
    diag_inverse_root,
    inverse_root,
    mode_dot,
)
from qgeom.optimize._checks import check_count, check_positive

GRAFTS = ("adagrad", "adam", "sgd")


class ShampooState(NamedTuple):
    """count: steps taken; stats/roots: per leaf, per block, per axis (matrix or diagonal);
    graft: the grafted method's accumulator per leaf; momentum per leaf; root_failures."""

    count: jax.Array
    stats: Any
    roots: Any
    graft: Any
    momentum: Any
    root_failures: jax.Array


def _plan(shape, block_size, max_precond_dim):
    """(blocks, full): the block slices of a tensor and, per axis, whether its factor is a matrix."""
    shape = tuple(shape) or (1,)
    full = tuple(len(shape) >= 2 and n <= max_precond_dim for n in shape)
    ranges = [[slice(a, min(a + block_size, n)) for a in range(0, n, block_size)] if f else [slice(0, n)]
              for n, f in zip(shape, full)]
    return list(itertools.product(*ranges)), full


def _block_shape(block):
    return tuple(s.stop - s.start for s in block)


def _precondition(x, roots, full):
    for i, (r, f) in enumerate(zip(roots, full)):
        x = mode_dot(x, r, i) if f else x * r.reshape([-1 if a == i else 1 for a in range(x.ndim)])
    return x


def scale_by_shampoo(b1=0.9, b2=0.999, epsilon=1e-6, precondition_every=20, start_preconditioning_step=None,
                     block_size=1024, max_precond_dim=4096, graft="adagrad", graft_epsilon=1e-8,
                     nesterov=True, statistics_every=1) -> optax.GradientTransformation:
    """Shampoo's grafted, momentum-averaged direction (no learning rate, no sign flip)."""
    check_beta("b1", b1)
    check_beta("b2", b2, allow_one=True)
    check_positive("epsilon", epsilon)
    check_positive("graft_epsilon", graft_epsilon)
    check_count("precondition_every", precondition_every)
    check_count("statistics_every", statistics_every)
    check_count("block_size", block_size)
    check_count("max_precond_dim", max_precond_dim)
    start = precondition_every if start_preconditioning_step is None else start_preconditioning_step
    check_count("start_preconditioning_step", start, minimum=0)
    if graft not in GRAFTS:
        raise ValueError(f"graft must be one of {GRAFTS}, got {graft!r}")
    if graft == "adam" and b2 == 1.0:
        raise ValueError("graft='adam' needs b2 < 1 (its second moment is an EMA with rate b2)")
    w2 = 1.0 if b2 == 1.0 else 1.0 - b2

    def init_leaf(p):
        blocks, full = _plan(p.shape, block_size, max_precond_dim)
        stats, roots = [], []
        for b in blocks:
            n = _block_shape(b)
            stats.append(tuple(jnp.zeros((d, d) if f else (d,), p.dtype) for d, f in zip(n, full)))
            roots.append(tuple(jnp.eye(d, dtype=p.dtype) if f else jnp.ones((d,), p.dtype) for d, f in zip(n, full)))
        return tuple(stats), tuple(roots)

    def init_fn(params):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        sr = [init_leaf(p) for p in leaves]
        graft_acc = [jnp.zeros_like(p) if graft != "sgd" else None for p in leaves]  # own buffers: donatable
        momentum = jax.tree_util.tree_unflatten(treedef, [jnp.zeros_like(p) for p in leaves])
        return ShampooState(jnp.zeros([], jnp.int32), [s for s, _ in sr], [r for _, r in sr], graft_acc,
                            momentum, jnp.zeros([], jnp.int32))

    def refresh(stats, roots, k):
        new, fails = [], 0
        for st, rt in zip(stats, roots):
            out = []
            for s, r in zip(st, rt):
                root, ok = (inverse_root if s.ndim == 2 else diag_inverse_root)(s, 2 * k, epsilon)
                out.append(jnp.where(ok, root, r))
                fails = fails + (~ok).astype(jnp.int32)
            new.append(tuple(out))
        return tuple(new), fails

    def update_fn(updates, state, params=None):
        del params
        check_matching(updates, state.momentum, "grads")
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        count = state.count
        do_refresh = (count >= start) & ((count - start) % precondition_every == 0)
        do_stats = count % statistics_every == 0
        precondition = count >= start
        new_stats, new_roots, new_graft, outs, fails = [], [], [], [], state.root_failures
        for j, g in enumerate(leaves):
            blocks, full = _plan(g.shape, block_size, max_precond_dim)
            x = g.reshape(g.shape or (1,))
            k = x.ndim

            def new_stats_fn(x, old):
                return tuple(tuple(b2 * s + w2 * (axis_gram(x[b], i) if f else axis_sq_sum(x[b], i))
                                   for i, (s, f) in enumerate(zip(st, full))) for b, st in zip(blocks, old))

            stats = jax.lax.cond(do_stats, new_stats_fn, lambda x, old: old, x, tuple(state.stats[j]))
            roots, nfail = jax.lax.cond(do_refresh, lambda s, r: refresh(s, r, k),
                                        lambda s, r: (r, jnp.zeros([], jnp.int32)), stats, state.roots[j])
            fails = fails + nfail
            if graft == "sgd":
                acc, base = None, g
            elif graft == "adagrad":
                acc = state.graft[j] + jnp.square(g)
                base = g / (jnp.sqrt(acc) + graft_epsilon)
            else:
                acc = b2 * state.graft[j] + (1 - b2) * jnp.square(g)
                vhat = acc / (1 - b2 ** (count + 1).astype(g.dtype))
                base = g / (jnp.sqrt(vhat) + graft_epsilon)

            def grafted(x, roots, base):
                direction = jnp.zeros_like(x)
                for b, rt in zip(blocks, roots):
                    direction = direction.at[b].set(_precondition(x[b], rt, full))
                dnorm = jnp.linalg.norm(direction)
                scale = jnp.where(dnorm > 0, jnp.linalg.norm(base) / jnp.where(dnorm > 0, dnorm, 1), 0)
                return (direction * scale).reshape(base.shape)

            outs.append(jax.lax.cond(precondition, grafted, lambda x, r, base: base, x, roots, base).astype(g.dtype))
            new_stats.append(stats)
            new_roots.append(roots)
            new_graft.append(acc)
        u = jax.tree_util.tree_unflatten(treedef, outs)
        mom = jax.tree_util.tree_map(lambda m, x: b1 * m + x, state.momentum, u)
        out = jax.tree_util.tree_map(lambda m, x: b1 * m + x, mom, u) if nesterov else mom
        return out, ShampooState(count + 1, new_stats, new_roots, new_graft, mom, fails)

    return optax.GradientTransformation(init_fn, update_fn)


def shampoo(learning_rate, b1=0.9, b2=0.999, epsilon=1e-6, precondition_every=20,
            start_preconditioning_step=None, block_size=1024, max_precond_dim=4096, graft="adagrad",
            graft_epsilon=1e-8, nesterov=True, statistics_every=1,
            max_consecutive_errors=5) -> optax.GradientTransformation:
    """Shampoo as an optax ``GradientTransformation``: updates = −η · (grafted Shampoo step with momentum).

    Args:
      learning_rate: η, a number or an optax schedule of the step count.
      b1: momentum β₁ on the grafted update (0 disables it); ``nesterov``: Nesterov form.
      b2: statistics decay β₂ (1 = the 2018 paper's running sum).
      epsilon: ε relative to each factor's largest eigenvalue (> 0).
      precondition_every: T, steps between inverse-root refreshes (by ``eigh``).
      start_preconditioning_step: first step using Shampoo's direction (default T); the
        grafted method runs alone before it.
      block_size: longest block along a preconditioned axis; ``max_precond_dim``: longer
        axes get a diagonal factor.
      graft: ``"adagrad"``, ``"adam"`` or ``"sgd"``: whose per-layer step norm is used.
      statistics_every: steps between factor-statistics updates (distributed Shampoo's
        ``statistics_compute_steps``; 1 = every step). The grafted accumulator updates every step.
      max_consecutive_errors: ``optax.apply_if_finite``'s limit on consecutive skipped
        (non-finite) steps before the non-finite update is let through.
    """
    check_learning_rate(learning_rate)
    check_count("max_consecutive_errors", max_consecutive_errors)
    inner = scale_by_shampoo(b1, b2, epsilon, precondition_every, start_preconditioning_step, block_size,
                             max_precond_dim, graft, graft_epsilon, nesterov, statistics_every)

    def update_fn(updates, state, params=None):
        d, state = inner.update(updates, state, params)
        lr = learning_rate_at(learning_rate, state.count - 1)
        return jax.tree_util.tree_map(lambda x: (-lr * x).astype(x.dtype), d), state

    return optax.apply_if_finite(optax.GradientTransformation(inner.init, update_fn), max_consecutive_errors)
