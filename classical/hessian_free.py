"""Hessian-free optimization: exact natural-gradient / Gauss–Newton steps by conjugate gradients
(Martens, "Deep learning via Hessian-free optimization", ICML 2010).

With the objective h(θ) = mean NLL + ½η‖θ‖² (η = ``l2_reg``) and the generalized Gauss–Newton
matrix G = (1/m) Σ_n J_nᵀ H_n J_n of the curvature rows (J_n = ∂f(x_n)/∂θ, H_n the Hessian of
the NLL in output space; for the categorical, Bernoulli and Gaussian outputs G is the exact
Fisher), every step solves

    (G + ηI + λI) x = −∇h                                                    (Martens 2010 §4)

by conjugate gradients on exact Gauss–Newton-vector products (one forward-mode JVP and one
reverse-mode VJP of the network per product, never a matrix), to relative residual
``cg_tol`` or ``cg_maxiter`` iterations, started from ζ·x_prev (``warm_start_decay`` ζ = 0.95,
§4.5). Optionally CG is preconditioned with a rank-ℓ randomized Nyström approximation of
G + ηI (``preconditioner="nystrom"``, Frangella, Tropp & Udell 2023; ℓ extra products per step).
The step is δ = α x (α = ``learning_rate``, 1 in the paper). Levenberg–Marquardt (§4.1):

    ρ = (h(θ + δ) − h(θ)) / (q(δ) − q(0)),  q(δ) − q(0) = ½ δᵀ(G + ηI)δ + ∇hᵀδ,
    ρ < ¼ → λ ← (3/2)λ,  ρ > ¾ → λ ← (2/3)λ,

evaluated on the same batch every step. A step that increases h (ρ < 0) is not taken
(``reject_uphill``). A non-finite h or gradient at θ, or a non-finite h(θ + δ), is rejected:
zero update, λ × ``reject_damping_factor``; parameters never become non-finite.

Interfaces as ``classical.KFAC``: ``HessianFree.step(params, state, batch)`` and the optax
``update(grads, state, params, batch=batch)`` (``HessianFree.gradient_transformation()``,
``hessian_free(model, **settings)``). Not included from Martens (2010): the diagonal
preconditioner, CG-iterate backtracking and the quadratic-progress CG stopping rule.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from classical.fused import FusedStepOptimizer
from qgeom.optimize._checks import check_count, check_positive
from qgeom.spectral import nystrom_preconditioner, pcg

F32 = jnp.float32


class HFState(NamedTuple):
    """Optimizer state (a pytree). ``info`` holds the last step's diagnostics."""

    step: jax.Array  # steps taken (int32)
    damping: jax.Array  # λ
    direction: jax.Array  # the last CG solution x (flat), warm start ζ·x of the next solve
    key: jax.Array  # PRNG key of the Nyström test matrices
    info: dict


class HessianFree(FusedStepOptimizer):
    """Hessian-free (truncated-Newton with Gauss–Newton products) optimizer.

    Args:
      model: has ``apply(params, x)``, ``check_params``, ``check_batch`` and ``output`` (a
        ``classical.distributions`` distribution with ``hessian_quad``): a
        ``classical.models.Network`` or a traced Flax/Equinox MLP.
      damping: initial λ (> 0).
      l2_reg: η of ½η‖θ‖² added to the objective (gradient, curvature and ρ).
      learning_rate: α multiplying the CG solution (1 = the Gauss–Newton step).
      cg_tol: relative residual ‖b − (G + ηI + λI)x‖/‖b‖ at which CG stops.
      cg_maxiter: CG iteration cap per step (Martens: 250).
      warm_start_decay: ζ, CG starts from ζ·x_prev (0 = cold start).
      adapt_damping: Levenberg–Marquardt with factors ``damping_increase``/``damping_decrease``.
      min_damping, max_damping: clip for λ.
      curvature_batch_size: GGN products from the first m examples only (int m, fraction in
        (0, 1), or None = all); gradient and ρ use the whole batch (Martens 2010 §4.3).
      preconditioner: None or ``"nystrom"`` (rank ``nystrom_rank`` sketch of G + ηI every step).
      reject_uphill: do not take steps with h(θ + δ) > h(θ).
      reject_damping_factor: λ multiplier on a non-finite step.
      seed: PRNG seed for the Nyström sketches.
    """

    def __init__(self, model, *, damping=1.0, l2_reg=0.0, learning_rate=1.0, cg_tol=1e-3, cg_maxiter=250,
                 warm_start_decay=0.95, adapt_damping=True, damping_increase=1.5, damping_decrease=2 / 3,
                 min_damping=1e-8, max_damping=1e10, curvature_batch_size=None, preconditioner=None,
                 nystrom_rank=20, reject_uphill=True, reject_damping_factor=10.0, seed=0):
        for attr in ("apply", "check_params", "check_batch", "output"):
            if not hasattr(model, attr):
                raise ValueError(f"model {type(model).__name__} lacks {attr!r}; use classical.models.Network "
                                 "or classical.tracing.trace_mlp")
        if not hasattr(model.output, "hessian_quad"):
            raise ValueError("model.output must be a classical.distributions distribution with hessian_quad")
        check_positive("damping", damping)
        check_positive("l2_reg", l2_reg, allow_zero=True)
        check_positive("learning_rate", learning_rate)
        check_positive("cg_tol", cg_tol)
        check_count("cg_maxiter", cg_maxiter)
        check_positive("warm_start_decay", warm_start_decay, allow_zero=True)
        check_positive("min_damping", min_damping)
        check_positive("max_damping", max_damping)
        check_positive("reject_damping_factor", reject_damping_factor)
        if not 1 < float(damping_increase) or not 0 < float(damping_decrease) < 1:
            raise ValueError("need damping_increase > 1 and 0 < damping_decrease < 1, got "
                             f"{damping_increase!r}, {damping_decrease!r}")
        if not float(warm_start_decay) <= 1:
            raise ValueError(f"warm_start_decay must lie in [0, 1], got {warm_start_decay!r}")
        if isinstance(curvature_batch_size, float):
            if not 0 < curvature_batch_size < 1:
                raise ValueError(f"a fractional curvature_batch_size must lie in (0, 1), got {curvature_batch_size!r}")
        elif curvature_batch_size is not None:
            check_count("curvature_batch_size", curvature_batch_size)
        if preconditioner not in (None, "nystrom"):
            raise ValueError(f"preconditioner must be None or 'nystrom', got {preconditioner!r}")
        check_count("nystrom_rank", nystrom_rank)
        self.model = model
        self.damping, self.l2_reg, self.learning_rate = float(damping), float(l2_reg), float(learning_rate)
        self.cg_tol, self.cg_maxiter = float(cg_tol), int(cg_maxiter)
        self.warm_start_decay, self.adapt_damping = float(warm_start_decay), bool(adapt_damping)
        self.damping_increase, self.damping_decrease = float(damping_increase), float(damping_decrease)
        self.min_damping, self.max_damping = float(min_damping), float(max_damping)
        self.curvature_batch_size, self.preconditioner = curvature_batch_size, preconditioner
        self.nystrom_rank, self.reject_uphill = int(nystrom_rank), bool(reject_uphill)
        self.reject_damping_factor, self.seed = float(reject_damping_factor), seed
        self._step_jit = jax.jit(self._fused)
        self._update_core = jax.jit(self._core)  # the optax path, jitted separately

    # ------------------------------------------------------------------ state
    def init(self, params) -> HFState:
        """Fresh state: λ = ``damping``, zero warm start."""
        self.model.check_params(params)
        flat = ravel_pytree(params)[0]
        if self.preconditioner == "nystrom" and self.nystrom_rank > flat.shape[0]:
            raise ValueError(f"nystrom_rank {self.nystrom_rank} exceeds the {flat.shape[0]} parameters")
        nan = jnp.asarray(jnp.nan, F32)
        info = {"loss": nan, "objective": nan, "rho": nan, "damping": jnp.asarray(self.damping, F32),
                "qmodel_change": nan, "cg_iterations": jnp.zeros((), jnp.int32), "cg_residual": nan,
                "rejected": jnp.asarray(False)}
        return HFState(step=jnp.zeros((), jnp.int32), damping=jnp.asarray(self.damping, F32),
                       direction=jnp.zeros_like(flat), key=jax.random.PRNGKey(self.seed), info=info)

    # ------------------------------------------------------------------- core
    def ggn_mv(self, params, x):
        """v ↦ (G + ηI)v on flat vectors (ravel order of ``params``), G the GGN of batch x."""
        dist, eta = self.model.output, self.l2_reg
        flat0, unravel = ravel_pytree(params)
        out, jvp = jax.linearize(lambda p: self.model.apply(p, x), params)
        transpose = jax.linear_transpose(jvp, params)
        zero_out = jnp.zeros_like(out)

        def mv(v):
            ju = jvp(unravel(v.astype(flat0.dtype)))
            hju = jax.grad(lambda w: jnp.sum(dist.hessian_quad(out, ju, w)))(zero_out)  # H_n J_n v
            return ravel_pytree(transpose(hju / out.shape[0])[0])[0] + eta * v

        return mv

    def _objective(self, params, x, y):
        return self.model.loss(params, x, y) + 0.5 * self.l2_reg * jnp.vdot(*(ravel_pytree(params)[0],) * 2)

    def _core(self, params, state: HFState, x, y, grads):
        eta, lam = self.l2_reg, state.damping
        flat, unravel = ravel_pytree(params)
        n = x.shape[0]
        m = self.curvature_batch_size
        if isinstance(m, float):
            m = int(np.ceil(m * n))
        m = n if m is None else min(m, n)

        if grads is None:
            loss, grads = jax.value_and_grad(self.model.loss)(params, x, y)
        else:
            loss = self.model.loss(params, x, y)
        g = ravel_pytree(grads)[0] + eta * flat
        h = loss + 0.5 * eta * jnp.vdot(flat, flat)
        ok_here = jnp.isfinite(h) & jnp.all(jnp.isfinite(g))
        g = jnp.where(ok_here, g, 0.0)

        curv = self.ggn_mv(params, x[:m])  # (G + ηI)v
        key, sub = jax.random.split(state.key)
        precond = None
        if self.preconditioner == "nystrom":
            pre = nystrom_preconditioner(curv, flat.shape[0], lam, self.nystrom_rank, sub, flat.dtype)
            precond = pre.apply
        x0 = self.warm_start_decay * state.direction
        sol, info_cg = pcg(lambda v: curv(v) + lam * v, -g, x0, precond, self.cg_tol, self.cg_maxiter)
        delta = self.learning_rate * sol
        qchange = 0.5 * jnp.vdot(delta, curv(delta)) + jnp.vdot(g, delta)
        new_flat = flat + delta
        h_new = self._objective(unravel(new_flat), x, y)
        rho = (h_new - h) / qchange
        finite = ok_here & jnp.all(jnp.isfinite(new_flat)) & jnp.isfinite(h_new)
        take = finite & ((h_new <= h) | (not self.reject_uphill))

        if self.adapt_damping:
            lam_new = jnp.where(rho < 0.25, lam * self.damping_increase,
                                jnp.where(rho > 0.75, lam * self.damping_decrease, lam))
            lam_new = jnp.where(jnp.isfinite(rho), lam_new, lam * self.damping_increase)
        else:
            lam_new = lam
        lam_new = jnp.where(finite, lam_new, lam * self.reject_damping_factor)
        lam_new = jnp.clip(lam_new, self.min_damping, self.max_damping).astype(F32)

        update = unravel(jnp.where(take, delta, 0.0))
        info = {"loss": loss.astype(F32), "objective": h.astype(F32), "rho": rho.astype(F32),
                "damping": lam.astype(F32), "qmodel_change": qchange.astype(F32),
                "cg_iterations": info_cg["iterations"], "cg_residual": info_cg["residual"].astype(F32),
                "rejected": ~take}
        direction = jnp.where(finite, sol, 0.0)
        return update, HFState(step=state.step + 1, damping=lam_new, direction=direction, key=key, info=info)


def hessian_free(model, **settings) -> optax.GradientTransformationExtraArgs:
    """Hessian-free as an optax transformation; ``settings`` are ``HessianFree``'s keyword arguments.

    ``update(grads, state, params, batch=(x, y))`` needs the batch the gradient came from.
    """
    return HessianFree(model, **settings).gradient_transformation()
