"""K-FAC: Kronecker-factored approximate curvature (Martens & Grosse 2015, arXiv:1503.05671).

For every dense/conv layer with parameters W (shape (d_in + 1, d_out), bias last row; see
``classical.models``) the Fisher block is approximated by A ⊗ G with

    A = E[ā āᵀ] (ā = [a; 1], summed over the T shared positions of a conv layer — KFC),
    G = E[g gᵀ] (g = ∂(−log p(y|x))/∂s, averaged over positions), y ~ p(y|x) (true Fisher)
                or y = data label (``estimator="empirical"``: the empirical Fisher, not a Fisher),

kept as exponential moving averages with ε_k = min(1 − 1/k, ema_decay) at the k-th
statistics update (§5). With the objective h(θ) = mean NLL + ½η‖θ‖² (η = ``l2_reg``) each
step computes

    Δ = −F̃⁻¹ ∇h,  F̃⁻¹ = ⊕_layers [(A + π√(λ+η) I)⁻¹ ⊗ (G + √(λ+η)/π I)⁻¹]      (§6.3)

(``inverse="tikhonov"``, inverses cached and refreshed at every step t < T₀ = ``inverse_warmup``
and then every ``inverse_period`` = T steps), or the exact (A ⊗ G + (λ+η) I)⁻¹ from cached
eigendecompositions (``inverse="eigen"``). Then

* fixed mode: δ = α Δ + μ δ₀ with the given learning rate α and momentum μ;
* adaptive mode (§7): α, μ minimise the damped quadratic model
  M(δ) = ½ δᵀ(F + (λ+η) I)δ + ∇hᵀδ over δ = αΔ + μδ₀ — a 2×2 solve whose entries use
  exact Fisher(=GGN)-vector products JᵀHJ from forward-mode JVPs of the network;
* Levenberg–Marquardt (§6.5), every T₁ = ``damping_interval`` steps:
  ρ = (h(θ + δ) − h(θ)) / (M₀(δ) − M₀(0)) with the undamped model M₀ (F + ηI) on the same
  batch; ρ > 3/4 → λ ← ω₁λ, ρ < 1/4 → λ ← λ/ω₁, ω₁ = ``damping_decay``^T₁ (paper: (19/20)^T₁).

Safety: a non-finite objective or gradient at θ means the previous step went somewhere
bad — that step is undone (the returned update is −δ₀), momentum is reset, λ is multiplied by
``reject_damping_factor`` and the inverses are refreshed on the next step. A non-finite
update (or new parameters, or h(θ + δ) when evaluated) is rejected the same way with a zero
update. Parameters therefore never become non-finite.

The step is a sequence of named stages, each a method testable alone: ``_linearize_batch``
(one forward pass, data gradient), ``_layer_batches`` (layer inputs and, if a block needs them,
sampled-target pre-activation gradients), ``_update_statistics``, ``_refresh``, ``precondition``,
``_quadratic_model`` (α, μ), ``_adapt_damping`` (LM, ``qgeom.optimize.damping``) and
``_accept_or_reject``. The curvature itself is a ``classical.blocks`` object: by default one
``KroneckerBlock`` per layer; ``blocks=`` mixes block kinds per layer (``Layerwise``) or passes
a structured curvature over all layers (``classical.blocks.tridiagonal``).

Two interfaces over one jitted core:

* ``KFAC.step(params, state, batch) -> (params, state, info)``: the fused step — one forward
  pass shared by the loss gradient, the sampled-target backward pass and the statistics;
* ``KFAC.update(grads, state, params, batch=batch) -> (updates, state)``: an
  ``optax.GradientTransformationExtraArgs`` update (``KFAC.gradient_transformation()``) that
  takes the caller's gradient (so it composes with ``optax.chain``) and adds the forward pass
  for the statistics itself.

CPU note: the inverse refresh runs LAPACK (Cholesky) beside XLA's own threads; with a
multi-threaded OpenBLAS (jaxlib uses scipy's) the two oversubscribe the cores and that step
was measured 3–30× slower on 2 cores. Limit BLAS to one thread
(``threadpoolctl.threadpool_limits(1, "blas")`` after ``import scipy.linalg``, or
``OPENBLAS_NUM_THREADS=1``); the studies do (``experiments.classical_methods.single_threaded_blas``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import tree_utils as otu

from classical.blocks.base import LayerBatch, Layerwise, input_factor, output_factor
from classical.blocks.kronecker import KroneckerBlock
from classical.fused import FusedStepOptimizer
from classical.quadratic_model import minimise_alpha_mu, undamped_change
from qgeom.optimize._checks import check_count, check_positive
from qgeom.optimize.damping import all_finite, levenberg_marquardt, rejected_damping

__all__ = ["KFAC", "KFACState", "kfac", "input_factor", "output_factor"]

F32 = jnp.float32


def _linearize(model, params, x):
    """(output, J·(tangent params), VJP(cotangent) -> (param grads, tap grads), layer inputs) at x."""
    taps = model.zero_taps(x)
    out, lin, inputs = jax.linearize(lambda p, t: model.apply_tapped(p, x, t), params, taps, has_aux=True)
    transpose = jax.linear_transpose(lin, params, taps)
    zero = otu.tree_zeros_like(taps)
    return out, (lambda t: lin(t, zero)), transpose, inputs


class Linearization(NamedTuple):
    """Stage 1's result: the network linearized at θ on the batch (curvature rows: the first m)."""

    out: jax.Array  # network output on the curvature rows
    jvp: Any  # t -> J t on the curvature rows
    vjp: Any  # cotangent on the curvature rows -> (param grads, tap grads)
    inputs: dict  # layer inputs on the curvature rows
    loss: jax.Array  # mean NLL on the whole batch
    ct: jax.Array  # ∂ mean NLL / ∂ output, whole batch
    grads: Any  # ∇h = ∇ mean NLL + η θ
    objective: jax.Array  # h(θ)


class KFACState(NamedTuple):
    """Optimizer state (a pytree). ``info`` holds the last step's diagnostics."""

    step: jax.Array  # steps taken (int32)
    n_stats: jax.Array  # statistics updates so far: k in ε_k
    damping: jax.Array  # λ (float32)
    stats: Any  # the curvature's statistics ({layer: block stats} for a Layerwise curvature)
    cache: Any  # its cached factorization / damped inverse
    velocity: Any  # δ₀, the last accepted update
    key: jax.Array  # PRNG key for sampling targets
    refresh: jax.Array  # refresh the cache on the next step (after a rejection)
    aux: dict  # method-specific state (e.g. KLD-WRM's previous gradient)
    info: dict

    @property
    def A(self) -> dict:
        """{layer: A factor} of the layers whose block keeps one."""
        return {k: s["A"] for k, s in self.stats.items() if isinstance(s, dict) and "A" in s}

    @property
    def G(self) -> dict:
        """{layer: G factor} of the layers whose block keeps one (empty for FOOF)."""
        return {k: s["G"] for k, s in self.stats.items() if isinstance(s, dict) and "G" in s}


class KFAC(FusedStepOptimizer):
    """K-FAC optimizer for a model with tapped layers (``classical.models.Network`` or a
    traced Flax/Equinox MLP from ``classical.tracing``).

    Args:
      model: has ``apply(params, x)``, ``apply_tapped(params, x, taps)``, ``zero_taps(x)``,
        ``check_params``, ``check_batch``, ``layer_shapes`` and ``output`` (a
        ``classical.distributions`` distribution).
      learning_rate: fixed α, or ``None`` for the quadratic-model α (§7).
      momentum: fixed μ (0 = none), or ``None`` for the quadratic-model μ (needs adaptive α).
      damping: initial λ (> 0); the paper's autoencoder uses 150.
      l2_reg: η of ½η‖θ‖² added to the objective (gradient and damping); the model's loss
        must not contain it.
      adapt_damping: Levenberg–Marquardt adaptation every ``damping_interval`` steps.
      damping_decay: per-step ω; ω₁ = damping_decay ** damping_interval.
      min_damping, max_damping: clip for λ.
      inverse_period: T, steps between inverse/eigendecomposition refreshes.
      inverse_warmup: T₀: refresh at every step t < T₀, then at t ≡ 0 (mod T) — the first
        statistics change fast (ε_k = 1 − 1/k); TNT diverged on the autoencoder without it.
        0 (default): the periodic schedule from step 0.
      stats_period: steps between factor-statistics updates (1 = every step).
      curvature_batch_size: estimate all curvature — the factors A, G and the exact Fisher
        products of the quadratic model — from the first m examples of each batch only: an
        int m, a float in (0, 1) for that fraction of the batch (m = ⌈fN⌉), or ``None`` (all);
        the gradient and h(θ + δ) still use the whole batch
        (a smaller curvature mini-batch, as in Martens 2010's Hessian-free). The forward pass is
        split at row m so the sampled-target backward pass, the factor products and the JVPs
        touch those rows alone.
      ema_decay: cap on ε_k = min(1 − 1/k, ema_decay).
      inverse: ``"tikhonov"`` (factored, π from traces) or ``"eigen"`` (exact damped block
        inverse) for the default ``KroneckerBlock``.
      estimator: ``"fisher"`` (targets sampled from the model) or ``"empirical"`` (data labels).
      reject_damping_factor: λ multiplier on a rejected (non-finite) step.
      seed: PRNG seed for target sampling.
      donate_state: let the fused ``step`` reuse the state's buffers (saves copying the factors
        and inverses every step; the state passed in is then invalid, as in kfac-jax).
      blocks: the curvature: ``None`` (a ``KroneckerBlock(inverse=inverse)`` per layer), a block
        factory ``shape -> CurvatureBlock`` for every layer (e.g. ``classical.blocks.EKFACBlock``
        or ``functools.partial(Block, **settings)``), a dict ``{layer: factory}`` mixing kinds,
        or a curvature over all layers (``classical.blocks.tridiagonal.TridiagonalKronecker``).
    """

    def __init__(self, model, *, learning_rate=None, momentum=None, damping=150.0, l2_reg=0.0,
                 adapt_damping=True, damping_interval=5, damping_decay=19 / 20, min_damping=1e-8,
                 max_damping=1e10, inverse_period=5, stats_period=1, curvature_batch_size=None, ema_decay=0.95,
                 inverse="tikhonov", estimator="fisher", reject_damping_factor=10.0, seed=0,
                 donate_state=False, blocks=None, inverse_warmup=0):
        for attr in ("apply", "apply_tapped", "zero_taps", "check_params", "check_batch", "output", "layer_shapes"):
            if not hasattr(model, attr):
                raise ValueError(f"model {type(model).__name__} lacks {attr!r}; use classical.models.Network "
                                 "or classical.tracing.trace_mlp")
        for name, value in (("learning_rate", learning_rate), ("momentum", momentum)):
            if value is not None:
                check_positive(name, value, allow_zero=name == "momentum")
        check_positive("damping", damping)
        check_positive("l2_reg", l2_reg, allow_zero=True)
        check_positive("min_damping", min_damping)
        check_positive("max_damping", max_damping)
        check_positive("reject_damping_factor", reject_damping_factor)
        check_count("damping_interval", damping_interval)
        check_count("inverse_period", inverse_period)
        check_count("inverse_warmup", inverse_warmup, minimum=0)
        check_count("stats_period", stats_period)
        if isinstance(curvature_batch_size, float):
            if not 0 < curvature_batch_size < 1:
                raise ValueError(f"a fractional curvature_batch_size must lie in (0, 1), got {curvature_batch_size!r}")
        elif curvature_batch_size is not None:
            check_count("curvature_batch_size", curvature_batch_size)
        if momentum is not None and momentum >= 1:
            raise ValueError(f"momentum must be < 1, got {momentum!r}")
        if not 0 < damping_decay < 1:
            raise ValueError(f"damping_decay must be in (0, 1), got {damping_decay!r}")
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
        if learning_rate is not None and momentum is None:
            raise ValueError("adaptive momentum (momentum=None) needs the adaptive learning rate "
                             "(learning_rate=None); pass a fixed momentum")
        if inverse not in ("tikhonov", "eigen"):
            raise ValueError(f"inverse must be 'tikhonov' or 'eigen', got {inverse!r}")
        if estimator not in ("fisher", "empirical"):
            raise ValueError(f"estimator must be 'fisher' or 'empirical', got {estimator!r}")
        self.model = model
        self.learning_rate, self.momentum = learning_rate, momentum
        self.damping, self.l2_reg = float(damping), float(l2_reg)
        self.adapt_damping, self.damping_interval = bool(adapt_damping), int(damping_interval)
        self.omega1 = float(damping_decay) ** int(damping_interval)
        self.min_damping, self.max_damping = float(min_damping), float(max_damping)
        self.inverse_period, self.stats_period = int(inverse_period), int(stats_period)
        self.inverse_warmup = int(inverse_warmup)
        self.curvature_batch_size = curvature_batch_size
        self.ema_decay, self.inverse = float(ema_decay), inverse
        self.estimator, self.reject_damping_factor = estimator, float(reject_damping_factor)
        self.seed = seed
        self.curvature = self._curvature(blocks)
        self._step_jit = jax.jit(self._fused, donate_argnums=(1,) if donate_state else ())
        self._init_jit = jax.jit(self._init)

    def _curvature(self, blocks):
        shapes = self.model.layer_shapes
        if blocks is None:
            return Layerwise.build(shapes, functools.partial(KroneckerBlock, inverse=self.inverse))
        if isinstance(blocks, (dict, type)) or not hasattr(blocks, "apply_inverse"):
            return Layerwise.build(shapes, blocks)  # block factories
        return blocks  # a curvature over all layers

    # ------------------------------------------------------------------ state
    def init(self, params) -> KFACState:
        """Fresh state for ``params``: identity statistics, zero velocity, λ = ``damping``."""
        self.model.check_params(params)
        return self._init_jit(params)

    def _init_aux(self, params) -> dict:
        """Method-specific state (none for K-FAC)."""
        return {}

    def _init(self, params):
        lam = jnp.asarray(self.damping, F32)
        nan = jnp.asarray(jnp.nan, F32)
        info = {"loss": nan, "objective": nan, "rho": nan, "learning_rate": nan, "momentum": nan,
                "damping": lam, "qmodel_change": nan, "rejected": jnp.asarray(False)}
        stats, cache = self.curvature.refresh(self.curvature.init(), lam + self.l2_reg)
        return KFACState(step=jnp.zeros((), jnp.int32), n_stats=jnp.zeros((), jnp.int32), damping=lam,
                         stats=stats, cache=cache, velocity=otu.tree_zeros_like(params),
                         key=jax.random.PRNGKey(self.seed), refresh=jnp.asarray(False),
                         aux=self._init_aux(params), info=info)

    def precondition(self, state: KFACState, grads):
        """F̃⁻¹ grads with the state's cached inverses and damping λ + η (no learning rate)."""
        return self.curvature.apply_inverse(state.stats, state.cache, grads, state.damping + self.l2_reg)

    def metric(self, state: KFACState):
        """The current curvature as a ``qgeom.metrics`` metric (block-diagonal ⊕ A ⊗ G for K-FAC)."""
        return self.curvature.metric(state.stats)

    # ----------------------------------------------------------------- stages
    def _objective(self, params, x, y):
        loss = self.model.output.mean_nll(self.model.apply(params, x), y)
        return loss + 0.5 * self.l2_reg * otu.tree_vdot(params, params)

    def _curvature_rows(self, n):
        m = self.curvature_batch_size
        if isinstance(m, float):
            m = int(np.ceil(m * n))
        return n if m is None else min(m, n)

    def _linearize_batch(self, params, x, y, grads=None) -> Linearization:
        """Stage 1: one forward pass, linearized: its transpose (the VJP) gives the data gradient
        (unless the caller's ``grads`` of the mean NLL are given) and later the sampled-target
        gradients, its JVP the exact curvature products — no second forward pass. With
        ``curvature_batch_size`` = m < N the pass is split at row m so that all curvature work
        touches the first m rows only."""
        n, eta, dist = x.shape[0], self.l2_reg, self.model.output
        m = self._curvature_rows(n)
        parts = [_linearize(self.model, params, x[:m])] + ([_linearize(self.model, params, x[m:])] if m < n else [])
        out_s, jvp, vjp_s, inputs = parts[0]
        out = jnp.concatenate([p[0] for p in parts]) if m < n else out_s
        loss, ct = jax.value_and_grad(dist.mean_nll)(out, y)
        if grads is None:
            grads = vjp_s(ct[:m])[0]
            if m < n:
                grads = otu.tree_add(grads, parts[1][2](ct[m:])[0])
        grads = jax.tree_util.tree_map(lambda g, p: g + eta * p, grads, params) if eta else grads
        h = loss + 0.5 * eta * otu.tree_vdot(params, params)
        return Linearization(out_s, jvp, vjp_s, inputs, loss, ct, grads, h)

    def _layer_batches(self, lin: Linearization, key) -> dict:
        """Stage 2: every layer's ``LayerBatch`` on the curvature rows; the backward pass for the
        per-example pre-activation gradients (sampled targets, or data labels for the empirical
        Fisher) runs only if a block needs them."""
        dist, n = self.model.output, lin.ct.shape[0]
        g = None
        if self.curvature.needs_preact_grads and self.estimator == "fisher":
            ys = dist.sample(key, jax.lax.stop_gradient(lin.out))
            g = lin.vjp(jax.grad(lambda o: jnp.sum(dist.nll(o, ys)))(lin.out))[1]
        elif self.curvature.needs_preact_grads:  # empirical: the data cotangent, per example
            g = otu.tree_scale(n, lin.vjp(lin.ct[:lin.out.shape[0]])[1])
        return {k: LayerBatch(v, None if g is None else g[k]) for k, v in lin.inputs.items()}

    def _update_statistics(self, state: KFACState, batches, ok):
        """Stage 3: EMA of the statistics with ε_k = min(1 − 1/k, ``ema_decay``) at the k-th
        update, every ``stats_period`` steps, skipped when the step's objective is not finite.
        ``batches``: a thunk giving the step's layer batches (stage 2)."""
        def new_stats(_):
            k = state.n_stats + 1
            eps = jnp.minimum(1.0 - 1.0 / k.astype(F32), self.ema_decay)
            return self.curvature.update(state.stats, batches(), eps), k

        keep = (state.stats, state.n_stats)
        if self.stats_period == 1:  # no conditional: XLA fuses better and copies nothing
            return otu.tree_where(ok, new_stats(None), keep)
        do_stats = ok & (state.step % self.stats_period == 0)
        return jax.lax.cond(do_stats, new_stats, lambda _: keep, None)

    def refresh_due(self, step):
        """Whether step t refreshes on schedule: t < ``inverse_warmup`` or t ≡ 0 (mod ``inverse_period``)."""
        return (step < self.inverse_warmup) | (step % self.inverse_period == 0)

    def _refresh(self, state: KFACState, stats, damping, ok, batches):
        """Stage 4: the curvature's factorization when ``refresh_due`` (and after a rejection). A
        curvature that ``rebases`` (EKFAC) then re-estimates the statistics that
        live in the new basis from this step's ``batches()`` (a thunk: run on refresh steps only)."""
        def do_refresh(_):
            new_stats, cache = self.curvature.refresh(stats, damping)
            if getattr(self.curvature, "rebases", False):
                new_stats = self.curvature.rebase(new_stats, batches())
            return new_stats, cache

        do = ok & (self.refresh_due(state.step) | state.refresh)
        return jax.lax.cond(do, do_refresh, lambda _: (stats, state.cache), None)

    def _transform_gradient(self, state: KFACState, grads, params):
        """Stage 5a: the gradient that is preconditioned and the new ``aux`` (K-FAC: ∇h itself)."""
        return grads, state.aux

    def _quadratic_model(self, lin: Linearization, nat, v0, lam):
        """Stage 6: α, μ minimising M(δ) = ½ δᵀ(F + (λ+η) I)δ + ∇hᵀδ over δ = αΔ + μδ₀ (§7), with
        exact Fisher (= GGN) products mean_n (J u)ᵀ H (J v) from JVPs (``classical.quadratic_model``),
        or the fixed α, μ. Returns (α, μ, M₀(δ) − M₀(0) of the undamped model, or None for fixed α, μ)."""
        if self.learning_rate is not None:
            return jnp.asarray(self.learning_rate, F32), jnp.asarray(self.momentum, F32), None
        dist, eta, grads = self.model.output, self.l2_reg, lin.grads
        jd, j0 = lin.jvp(nat), lin.jvp(v0)  # (two calls measured faster than one vmapped over both)
        fdd = jnp.mean(dist.hessian_quad(lin.out, jd, jd))
        fd0 = jnp.mean(dist.hessian_quad(lin.out, jd, j0))
        f00 = jnp.mean(dist.hessian_quad(lin.out, j0, j0))
        dd, d0, s00 = otu.tree_vdot(nat, nat), otu.tree_vdot(nat, v0), otu.tree_vdot(v0, v0)
        gd, g0 = otu.tree_vdot(grads, nat), otu.tree_vdot(grads, v0)
        c = lam + eta
        m11, m12, m22 = fdd + c * dd, fd0 + c * d0, f00 + c * s00
        alpha, mu = minimise_alpha_mu(m11, m12, m22, gd, g0, self.momentum, has_velocity=s00 > 0)
        return alpha, mu, undamped_change(alpha, mu, m11, m12, m22, gd, g0, lam, dd, d0, s00)

    def _adapt_damping(self, state: KFACState, lin: Linearization, delta, new_params, qchange, x, y, ok):
        """Stage 7: Levenberg–Marquardt (§6.5) on the same batch every ``damping_interval`` steps:
        ρ = (h(θ + δ) − h(θ)) / (M₀(δ) − M₀(0)), λ ← ``levenberg_marquardt``(λ, ρ, ω₁).
        Returns (ρ, h(θ + δ), the model change, λ, whether adapted)."""
        lam, eta, dist = state.damping, self.l2_reg, self.model.output
        adapt = self.adapt_damping & ((state.step + 1) % self.damping_interval == 0) & ok

        def rho_branch(_):
            if qchange is None:
                jd = lin.jvp(delta)
                q = (0.5 * (jnp.mean(dist.hessian_quad(lin.out, jd, jd)) + eta * otu.tree_vdot(delta, delta))
                     + otu.tree_vdot(lin.grads, delta))
            else:
                q = qchange
            h_new = self._objective(new_params, x, y)
            return (h_new - lin.objective) / q, h_new, q

        nan = jnp.asarray(jnp.nan, F32)
        skip = (nan, nan, nan if qchange is None else qchange)
        if self.adapt_damping:
            rho, h_new, q = jax.lax.cond(adapt, rho_branch, lambda _: skip, None)
        else:  # nothing to trace or compile for ρ
            rho, h_new, q = skip
        lam_new = jnp.where(adapt, levenberg_marquardt(lam, rho, self.omega1), lam)
        return rho, h_new, q, lam_new, adapt

    def _accept_or_reject(self, state: KFACState, delta, ok_here, bad_update, lam_new):
        """Stage 8: a non-finite objective or gradient at θ undoes the previous step (update −δ₀);
        a non-finite update (or h(θ + δ)) becomes a zero update; either way momentum is reset and
        λ ← ``rejected_damping``(λ, ``reject_damping_factor``). Returns (update, velocity, λ, rejected)."""
        rejected = ~ok_here | bad_update
        zeros = otu.tree_zeros_like(delta)
        update = otu.tree_where(~ok_here, otu.tree_scale(-1.0, state.velocity),
                                otu.tree_where(bad_update, zeros, delta))
        lam_new = jnp.where(rejected, rejected_damping(state.damping, self.reject_damping_factor), lam_new)
        lam_new = jnp.clip(lam_new, self.min_damping, self.max_damping).astype(F32)
        return update, otu.tree_where(rejected, zeros, delta), lam_new, rejected

    def _core(self, params, state: KFACState, x, y, grads):
        lam, eta = state.damping, self.l2_reg
        key, k_sample = jax.random.split(state.key)
        lin = self._linearize_batch(params, x, y, grads)
        ok_here = jnp.isfinite(lin.objective) & all_finite(lin.grads)
        batches = functools.partial(self._layer_batches, lin, k_sample)
        stats, n_stats = self._update_statistics(state, batches, ok_here)
        stats, cache = self._refresh(state, stats, lam + eta, ok_here, batches)
        g_pre, aux = self._transform_gradient(state, lin.grads, params)
        nat = otu.tree_scale(-1.0, self.curvature.apply_inverse(stats, cache, g_pre, lam + eta))  # Δ = −F̃⁻¹∇h
        alpha, mu, qchange = self._quadratic_model(lin, nat, state.velocity, lam)
        delta = jax.tree_util.tree_map(lambda a, b: alpha * a + mu * b, nat, state.velocity)
        new_params = otu.tree_add(params, delta)
        ok_update = all_finite(new_params)
        rho, h_new, q, lam_new, adapt = self._adapt_damping(state, lin, delta, new_params, qchange, x, y,
                                                            ok_here & ok_update)
        bad_update = ok_here & (~ok_update | (adapt & ~jnp.isfinite(h_new)))
        update, velocity, lam_new, rejected = self._accept_or_reject(state, delta, ok_here, bad_update, lam_new)
        info = {"loss": lin.loss.astype(F32), "objective": lin.objective.astype(F32), "rho": rho.astype(F32),
                "learning_rate": jnp.asarray(alpha, F32), "momentum": jnp.asarray(mu, F32),
                "damping": lam.astype(F32), "qmodel_change": jnp.asarray(q, F32), "rejected": rejected}
        aux = otu.tree_where(ok_here, aux, state.aux)
        new_state = KFACState(step=state.step + 1, n_stats=n_stats, damping=lam_new, stats=stats, cache=cache,
                              velocity=velocity, key=key, refresh=rejected, aux=aux, info=info)
        return update, new_state


def kfac(model, **settings) -> optax.GradientTransformationExtraArgs:
    """K-FAC as an optax transformation; ``settings`` are ``KFAC``'s keyword arguments.

    ``update(grads, state, params, batch=(x, y))`` needs the batch the gradient came from.
    """
    return KFAC(model, **settings).gradient_transformation()
