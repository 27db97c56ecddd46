"""Quantum-probabilistic mirror descent (QPMD; Sbahi et al. 2022).

Freeze g_t = ∇L(ξ_t) and take

    ξ_{t+1} ≈ argmin_ξ ⟨g_t, ξ⟩ + (1/η)[(1−α) D(ρ_ξ ‖ ρ_{ξ_t}) + α ½‖ξ − ξ_t‖²]

by ``inner_steps`` steps of a first-order optimizer (Adam by default) started at ξ_t,
the whole inner loop one ``jax.lax.fori_loop`` inside the jitted update. We minimise η
times the objective (same minimiser; Adam is invariant to that scale up to its ε, and a
plain SGD inner optimizer then needs no η-dependent step). No metric is formed; to first
order in η the step is −η[(1−α)G_BKM + αI]⁻¹ g_t (G_BKM = Hessian of D at ξ_t).

The divergence is a ``Divergence(freeze, value)`` pair: ``freeze(ξ_t)`` computes, once per
outer step, everything about the previous state the inner loop needs; ``value(ξ, frozen)``
is D(ρ_ξ‖ρ_{ξ_t}).

* ``qhbm_divergence(model)``: D = Tr[ρ_ξ K_t] − S(ρ_ξ) + log Z_t — a VQT free energy at β = 1
  against the frozen modular Hamiltonian K_t = ``model.modular_hamiltonian(ξ_t)``. With
  ρ_ξ = U diag(p) U†, Tr[ρ_ξ K_t] = Σ_x p_x (U†K_tU)_xx and S = H(p): one matrix product
  per inner step, no eigendecomposition.
* ``density_divergence(rho_fn)``: any density matrix. log ρ_t is frozen once per outer
  step by ``eigh`` with eigenvalues floored at ``floor``; Tr ρ_ξ log ρ_ξ is computed by
  ``eigh`` too, with the custom derivative d Tr[ρ log ρ] = Tr[dρ (log ρ + I)] (exact for a
  trace function), which never differentiates eigenvectors and so stays finite at degenerate
  spectra (the gradient of ``eigh`` is NaN there).

α = 0 is allowed but the inner problem then has no minimiser (the states drift to pure as
‖θ‖ → ∞), so only the finite inner loop keeps the step local; a warning says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from qgeom.optimize._checks import check_alpha, check_count, check_positive
from qgeom.optimize.damping import all_finite
from qgeom.quantum.qhbm import PreparedObservable


class Divergence(NamedTuple):
    """``freeze(params_t) -> frozen`` once per outer step; ``value(params, frozen)`` = D(ρ‖ρ_t)."""

    freeze: Callable
    value: Callable


def qhbm_divergence(model):
    """D(ρ_ξ‖ρ_{ξ_t}) of a QHBM against its frozen modular Hamiltonian (β = 1 VQT loss)."""

    def freeze(params_t):
        return model.modular_hamiltonian(params_t), model.log_partition(params_t)

    def value(params, frozen):
        k_t, log_z_t = frozen
        return model.expectation(params, PreparedObservable(None, None, k_t)) - model.entropy(params) + log_z_t

    return Divergence(freeze, value)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def trace_rho_log_rho(rho, floor=1e-12):
    """Tr[ρ log ρ] = −S(ρ) of a Hermitian ρ via ``eigh`` (eigenvalues floored at ``floor``).

    Derivative Tr[dρ (log ρ + I)] — exact for Tr f(ρ), no eigenvector derivative.
    """
    w = jnp.linalg.eigvalsh(rho)
    w = jnp.maximum(w, floor)
    return jnp.sum(w * jnp.log(w))


def _log_psd(rho, floor):
    """log ρ of a Hermitian PSD matrix by ``eigh``, eigenvalues floored at ``floor``."""
    w, v = jnp.linalg.eigh(rho)
    return (v * jnp.log(jnp.maximum(w, floor))) @ v.conj().T


@trace_rho_log_rho.defjvp
def _trace_rho_log_rho_jvp(floor, primals, tangents):
    (rho,), (d_rho,) = primals, tangents
    log_rho = _log_psd(rho, floor)
    return trace_rho_log_rho(rho, floor), jnp.real(jnp.sum(log_rho.T * d_rho) + jnp.trace(d_rho))


def density_divergence(rho_fn, floor=1e-12):
    """D(ρ_ξ‖ρ_t) = Tr ρ_ξ log ρ_ξ − Tr ρ_ξ log ρ_t for any ``rho_fn(params) -> density matrix``."""
    check_positive("floor", floor)

    def freeze(params_t):
        return jax.lax.stop_gradient(_log_psd(rho_fn(params_t), floor))

    def value(params, log_rho_t):
        rho = rho_fn(params)
        return trace_rho_log_rho(rho, floor) - jnp.real(jnp.sum(rho * log_rho_t.T))

    return Divergence(freeze, value)


class MirrorDescentState(NamedTuple):
    """count: outer steps; rejected: steps rejected because the inner loop went non-finite."""

    count: jax.Array
    rejected: jax.Array


def mirror_descent(divergence, learning_rate=0.1, alpha=0.5, inner_steps=100, inner_lr=2.5e-3,
                   inner_optimizer=None):
    """Mirror descent with a Bregman ``divergence`` as an optax transformation (see module doc).

    ``update(grads, state, params)`` → (ξ_{t+1} − ξ_t, state). ``inner_optimizer`` (an optax
    transformation) overrides Adam(``inner_lr``). A non-finite inner result is rejected (zero
    update, ``state.rejected`` += 1). ``update.extra_grad_evals`` = ``inner_steps``.
    """
    eta = check_positive("learning_rate", learning_rate)
    alpha = check_alpha(alpha)
    inner_steps = check_count("inner_steps", inner_steps)
    if inner_optimizer is None:
        inner_optimizer = optax.adam(check_positive("inner_lr", inner_lr))
    if not isinstance(alpha, jax.core.Tracer) and alpha == 0:
        warnings.warn("mirror descent with alpha=0: the inner problem has no minimiser (states drift to "
                      "pure); only the finite inner loop keeps the step local", stacklevel=2)

    def init(params):
        del params
        return MirrorDescentState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def update(grads, state, params=None, **extra):
        del extra
        if params is None:
            raise ValueError("mirror_descent needs params: update(grads, state, params)")
        frozen = divergence.freeze(params)
        start = params

        def objective(xi):
            shift = jax.tree_util.tree_map(lambda a, b: a - b, xi, start)
            lin = sum(jnp.vdot(g, s).real for g, s in zip(jax.tree_util.tree_leaves(grads),
                                                         jax.tree_util.tree_leaves(shift)))
            prox = sum(jnp.sum(s**2) for s in jax.tree_util.tree_leaves(shift))
            return eta * lin + (1 - alpha) * divergence.value(xi, frozen) + 0.5 * alpha * prox

        def body(_, carry):
            xi, opt_state = carry
            g = jax.grad(objective)(xi)
            upd, opt_state = inner_optimizer.update(g, opt_state, xi)
            return optax.apply_updates(xi, upd), opt_state

        xi, _ = jax.lax.fori_loop(0, inner_steps, body, (start, inner_optimizer.init(start)))
        updates = jax.tree_util.tree_map(lambda a, b: a - b, xi, start)
        finite = all_finite(updates)
        updates = jax.tree_util.tree_map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
        return updates, MirrorDescentState(state.count + 1, state.rejected + (~finite).astype(jnp.int32))

    update.extra_grad_evals = inner_steps
    return optax.GradientTransformationExtraArgs(init, update)


def qpmd(model, learning_rate=0.1, alpha=0.5, inner_steps=100, inner_lr=2.5e-3, inner_optimizer=None):
    """QPMD on a QHBM: ``mirror_descent(qhbm_divergence(model), ...)``; defaults are the authors'
    (η = 0.1, α = 0.5, 100 inner Adam steps at 2.5e-3)."""
    return mirror_descent(qhbm_divergence(model), learning_rate, alpha, inner_steps, inner_lr, inner_optimizer)

