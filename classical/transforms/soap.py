"""SOAP (Vyas et al. 2024, "SOAP: Improving and stabilizing Shampoo using Adam", arXiv 2409.11321).

Adam run in the eigenbasis of Shampoo's factors, as the authors' reference ``soap.py``
(nikhilvyas/SOAP) computes it. For a parameter tensor G with axes i (matrices: L and R):

    S_i ← β_s S_i + (1 − β_s) G_(i) G_(i)ᵀ,        Q_i: eigenvectors of S_i (descending),
    G' = G ×_0 Q_0ᵀ ×_1 … (rotate in),   m ← β₁m + (1−β₁)G',  v ← β₂v + (1−β₂)G'²,
    update = −η √(1−β₂ᵗ)/(1−β₁ᵗ) · (m/(√v + ε)) ×_0 Q_0 ×_1 … (rotate out),
    then decoupled decay p ← p − η·wd·p on the updated p.

* The first call only builds S and Q = eigh(S + 1e-30 I) and returns a zero update (the
  reference never projects with a basis that saw the current gradient); t counts Adam steps.
* S is updated after every step; every ``precondition_frequency`` steps the basis is refreshed
  by one power iteration and QR, Q_i ← qr(S_i Q_i) after sorting Q_i's columns by the current
  diag(Q_iᵀ S_i Q_i) (and permuting v along axis i the same way). m is rotated into the new
  basis; v is not (as in the reference). The reference rotates m out and back in on every step;
  with an unchanged orthogonal basis that is the identity up to rounding, so here it happens on
  refresh steps only (four mode products per step fewer).
* Axes longer than ``max_precond_dim`` are not rotated; vectors and scalars run plain Adam
  unless ``precondition_1d``. (The reference's ``merge_dims`` and ``normalize_grads`` options
  are not provided.)

A non-finite gradient gives a zero update and leaves the state unchanged (``optax.apply_if_finite``).
"""

from __future__ import annotations

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
from classical.transforms.tensor_ops import axis_gram, mode_dot
from qgeom.optimize._checks import check_count, check_positive


class SOAPState(NamedTuple):
    """count: calls so far (the first only initialises); stats (S_i) and bases (Q_i): per leaf a
    tuple over axes, ``None`` for an axis without a factor; mu, nu: Adam's moments in the basis."""

    count: jax.Array
    stats: Any
    bases: Any
    mu: Any
    nu: Any


def _rotate(x, bases, transpose):
    for i, q in enumerate(bases):
        if q is not None:
            x = mode_dot(x, q.T if transpose else q, i)
    return x


def _eigenbasis(s):
    _, v = jnp.linalg.eigh(s + 1e-30 * jnp.eye(s.shape[0], dtype=s.dtype))
    return v[:, ::-1]


def _power_qr(stats, bases, nu):
    """One power iteration + QR per axis, columns first sorted by the current eigenvalue estimates."""
    out = []
    for i, (s, q) in enumerate(zip(stats, bases)):
        if q is None:
            out.append(None)
            continue
        order = jnp.argsort(-jnp.sum(q * (s @ q), axis=0))  # diag(QᵀSQ)
        nu = jnp.take(nu, order, axis=i)
        out.append(jnp.linalg.qr(s @ q[:, order])[0])
    return tuple(out), nu


def _keep(stats, bases, nu, mu):
    return bases, nu, mu


def _first_basis(stats, bases, nu, mu):
    return tuple(None if s is None else _eigenbasis(s) for s in stats), nu, mu  # mu is still zero


def _refresh(stats, bases, nu, mu):
    """New bases by ``_power_qr``; the first moment rotated from the old basis into the new one."""
    new, nu = _power_qr(stats, bases, nu)
    return new, nu, _rotate(_rotate(mu, bases, transpose=False), new, transpose=True)


def soap(learning_rate=3e-3, b1=0.95, b2=0.95, shampoo_beta=None, eps=1e-8, weight_decay=0.01,
         precondition_frequency=10, max_precond_dim=10000, precondition_1d=False,
         max_consecutive_errors=5) -> optax.GradientTransformation:
    """SOAP as an optax ``GradientTransformation`` (the reference's defaults).

    Args:
      learning_rate: η, a number or an optax schedule of the Adam step count.
      b1, b2: Adam's β₁, β₂ (in the rotated basis); ``eps``: Adam's ε (> 0).
      shampoo_beta: EMA rate β_s of the factors (default: b2).
      weight_decay: decoupled decay, applied after the step to the updated parameters (needs
        ``params`` in ``update`` when non-zero).
      precondition_frequency: f, steps between basis refreshes (power iteration + QR).
      max_precond_dim: longer axes are not rotated; ``precondition_1d``: rotate vectors too.
      max_consecutive_errors: ``optax.apply_if_finite``'s limit on skipped non-finite steps.
    """
    check_learning_rate(learning_rate)
    check_beta("b1", b1)
    check_beta("b2", b2)
    beta_s = b2 if shampoo_beta is None else shampoo_beta
    check_beta("shampoo_beta", beta_s)
    check_positive("eps", eps)
    check_positive("weight_decay", weight_decay, allow_zero=True)
    check_count("precondition_frequency", precondition_frequency)
    check_count("max_precond_dim", max_precond_dim)
    check_count("max_consecutive_errors", max_consecutive_errors)

    def has_factor(shape):
        return tuple((len(shape) >= 2 or precondition_1d) and n <= max_precond_dim for n in shape)

    def init_fn(params):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        stats = [tuple(jnp.zeros((n, n), p.dtype) if f else None for n, f in zip(p.shape, has_factor(p.shape)))
                 for p in leaves]
        bases = [tuple(None if s is None else jnp.eye(s.shape[0], dtype=s.dtype) for s in st) for st in stats]
        zeros = lambda: jax.tree_util.tree_unflatten(treedef, [jnp.zeros_like(p) for p in leaves])
        return SOAPState(jnp.zeros([], jnp.int32), stats, bases, zeros(), zeros())  # distinct: donatable

    def update_fn(updates, state, params=None):
        check_matching(updates, state.mu, "grads")
        if weight_decay and params is None:
            raise ValueError("soap with weight_decay > 0 needs params in update(grads, state, params)")
        first = state.count == 0
        t = jnp.maximum(state.count, 1)  # Adam steps, this one included
        lr = learning_rate_at(learning_rate, t - 1)
        step_size = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        refresh = (~first) & (t % precondition_frequency == 0)
        g_l, treedef = jax.tree_util.tree_flatten(updates)
        mu_l, nu_l = jax.tree_util.tree_leaves(state.mu), jax.tree_util.tree_leaves(state.nu)
        p_l = jax.tree_util.tree_leaves(params) if weight_decay else [None] * len(g_l)
        outs, new_stats, new_bases, new_mu, new_nu = [], [], [], [], []
        for g, m, v, p, st, qs in zip(g_l, mu_l, nu_l, p_l, state.stats, state.bases):
            gp = _rotate(g, qs, transpose=True)
            m = jnp.where(first, m, b1 * m + (1 - b1) * gp)
            v = jnp.where(first, v, b2 * v + (1 - b2) * jnp.square(gp))
            u = -step_size * _rotate(m / (jnp.sqrt(v) + eps), qs, transpose=False)
            if weight_decay:
                u = u - lr * weight_decay * (p + u)
            outs.append(jnp.where(first, 0, u).astype(g.dtype))  # float32 stays float32 under x64
            st = tuple(None if s is None else beta_s * s + (1 - beta_s) * axis_gram(g, i) for i, s in enumerate(st))
            idx = jnp.where(first, 1, jnp.where(refresh, 2, 0))
            qs, v, m = jax.lax.switch(idx, [_keep, _first_basis, _refresh], st, qs, v, m)
            new_mu.append(m)
            new_nu.append(v)
            new_stats.append(st)
            new_bases.append(qs)
        unflat = lambda xs: jax.tree_util.tree_unflatten(treedef, xs)
        return unflat(outs), SOAPState(state.count + 1, new_stats, new_bases, unflat(new_mu), unflat(new_nu))

    return optax.apply_if_finite(optax.GradientTransformation(init_fn, update_fn), max_consecutive_errors)
