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

(``inverse="tikhonov"``, inverses cached and refreshed every ``inverse_period`` = T steps), or
the exact (A ⊗ G + (λ+η) I)⁻¹ from cached eigendecompositions (``inverse="eigen"``). Then

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
``OPENBLAS_NUM_THREADS=1``); the studies do (``experiments.kfac_common.single_threaded_blas``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qgeom.metrics.base import BlockDiagonal
from qgeom.metrics.kronecker import KroneckerEigenInverse, KroneckerFactored

F32 = jnp.float32
_tmap = jax.tree_util.tree_map


def _vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _where(cond, a, b):
    return _tmap(lambda x, y: jnp.where(cond, x, y), a, b)


def _gram(m):
    """mᵀm contracting the leading axis directly (no materialised transpose)."""
    return jax.lax.dot_general(m, m, (((0,), (0,)), ((), ())))


def input_factor(x):
    """A = (1/N) Σ_{n,t} [x;1][x;1]ᵀ for layer inputs x of shape (N, T, d_in) (blockwise, no concat)."""
    n, t, d = x.shape
    xf = x.reshape(n * t, d)
    s = jnp.sum(xf, axis=0)[:, None]
    top = jnp.concatenate([_gram(xf), s], axis=1)
    bottom = jnp.concatenate([s.T, jnp.full((1, 1), n * t, xf.dtype)], axis=1)
    return jnp.concatenate([top, bottom], axis=0) / n


def output_factor(g):
    """G = (1/(N T)) Σ_{n,t} g gᵀ for per-example pre-activation gradients g of shape (N, T, d_out)."""
    n, t, d = g.shape
    return _gram(g.reshape(n * t, d)) / (n * t)


def _linearize(model, params, x):
    """(output, J·(tangent params), VJP(cotangent) -> (param grads, tap grads), layer inputs) at x."""
    taps = model.zero_taps(x)
    out, lin, inputs = jax.linearize(lambda p, t: model.apply_tapped(p, x, t), params, taps, has_aux=True)
    transpose = jax.linear_transpose(lin, params, taps)
    zero = _tmap(jnp.zeros_like, taps)
    return out, (lambda t: lin(t, zero)), transpose, inputs


class KFACState(NamedTuple):
    """Optimizer state (a pytree). ``info`` holds the last step's diagnostics."""

    step: jax.Array  # steps taken (int32)
    n_stats: jax.Array  # statistics updates so far: k in ε_k
    damping: jax.Array  # λ (float32)
    A: dict  # {layer: EMA of A}
    G: dict  # {layer: EMA of G} (empty for FOOF)
    inverse: dict  # cached per-layer inverse (form depends on ``inverse``)
    velocity: Any  # δ₀, the last accepted update
    key: jax.Array  # PRNG key for sampling targets
    refresh: jax.Array  # refresh inverses on the next step (after a rejection)
    info: dict


def _positive(name, value, allow_none=False, allow_zero=False):
    if value is None and allow_none:
        return
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")


def _period(name, value):
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class KFAC:
    """K-FAC optimizer for a model with tapped layers (``classical.models.Network`` or a
    traced Flax/Equinox MLP from ``classical.tracing``).

    Args:
      model: has ``apply(params, x)``, ``apply_tapped(params, x, taps)``, ``zero_taps(x)``,
        ``check_params``, ``check_batch`` and ``output`` (a ``classical.distributions``
        distribution).
      learning_rate: fixed α, or ``None`` for the quadratic-model α (§7).
      momentum: fixed μ (0 = none), or ``None`` for the quadratic-model μ (needs adaptive α).
      damping: initial λ (> 0); the paper's autoencoder uses 150.
      l2_reg: η of ½η‖θ‖² added to the objective (gradient and damping); the model's loss
        must not contain it.
      adapt_damping: Levenberg–Marquardt adaptation every ``damping_interval`` steps.
      damping_decay: per-step ω; ω₁ = damping_decay ** damping_interval.
      min_damping, max_damping: clip for λ.
      inverse_period: T, steps between inverse/eigendecomposition refreshes.
      stats_period: steps between factor-statistics updates (1 = every step).
      curvature_batch_size: estimate all curvature — the factors A, G and the exact Fisher
        products of the quadratic model — from the first m examples of each batch only: an
        int m, a float in (0, 1) for that fraction of the batch (m = ⌈fN⌉), or ``None`` (all);
        the gradient and h(θ + δ) still use the whole batch
        (a smaller curvature mini-batch, as in Martens 2010's Hessian-free). The forward pass is
        split at row m so the sampled-target backward pass, the factor products and the JVPs
        touch those rows alone.
      ema_decay: cap on ε_k = min(1 − 1/k, ema_decay).
      inverse: ``"tikhonov"`` (factored, π from traces) or ``"eigen"`` (exact damped block inverse).
      estimator: ``"fisher"`` (targets sampled from the model) or ``"empirical"`` (data labels).
      reject_damping_factor: λ multiplier on a rejected (non-finite) step.
      seed: PRNG seed for target sampling.
      donate_state: let the fused ``step`` reuse the state's buffers (saves copying the factors
        and inverses every step; the state passed in is then invalid, as in kfac-jax).
    """

    factors = "AG"

    def __init__(self, model, *, learning_rate=None, momentum=None, damping=150.0, l2_reg=0.0,
                 adapt_damping=True, damping_interval=5, damping_decay=19 / 20, min_damping=1e-8,
                 max_damping=1e10, inverse_period=5, stats_period=1, curvature_batch_size=None, ema_decay=0.95,
                 inverse="tikhonov", estimator="fisher", reject_damping_factor=10.0, seed=0,
                 donate_state=False):
        for attr in ("apply", "apply_tapped", "zero_taps", "check_params", "check_batch", "output"):
            if not hasattr(model, attr):
                raise ValueError(f"model {type(model).__name__} lacks {attr!r}; use classical.models.Network "
                                 "or classical.tracing.trace_mlp")
        _positive("learning_rate", learning_rate, allow_none=True)
        _positive("momentum", momentum, allow_none=True, allow_zero=True)
        _positive("damping", damping)
        _positive("l2_reg", l2_reg, allow_zero=True)
        _positive("min_damping", min_damping)
        _positive("max_damping", max_damping)
        _positive("reject_damping_factor", reject_damping_factor)
        _period("damping_interval", damping_interval)
        _period("inverse_period", inverse_period)
        _period("stats_period", stats_period)
        if isinstance(curvature_batch_size, float):
            if not 0 < curvature_batch_size < 1:
                raise ValueError(f"a fractional curvature_batch_size must lie in (0, 1), got {curvature_batch_size!r}")
        elif curvature_batch_size is not None:
            _period("curvature_batch_size", curvature_batch_size)
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
        self.curvature_batch_size = curvature_batch_size
        self.ema_decay, self.inverse = float(ema_decay), inverse
        self.estimator, self.reject_damping_factor = estimator, float(reject_damping_factor)
        self.seed = seed
        self._step_jit = jax.jit(self._fused, donate_argnums=(1,) if donate_state else ())
        self._init_jit = jax.jit(self._init)

    # ------------------------------------------------------------------ state
    def init(self, params) -> KFACState:
        """Fresh state for ``params``: identity factors, zero velocity, λ = ``damping``."""
        self.model.check_params(params)
        return self._init_jit(params)

    def _init(self, params):
        A = {k: jnp.eye(w.shape[0], dtype=F32) for k, w in params.items()}
        G = {k: jnp.eye(w.shape[1], dtype=F32) for k, w in params.items()} if self.factors == "AG" else {}
        lam = jnp.asarray(self.damping, F32)
        nan = jnp.asarray(jnp.nan, F32)
        info = {"loss": nan, "objective": nan, "rho": nan, "learning_rate": nan, "momentum": nan,
                "damping": lam, "qmodel_change": nan, "rejected": jnp.asarray(False)}
        return KFACState(step=jnp.zeros((), jnp.int32), n_stats=jnp.zeros((), jnp.int32), damping=lam,
                         A=A, G=G, inverse=self._inverses(A, G, lam + self.l2_reg),
                         velocity=_tmap(jnp.zeros_like, params), key=jax.random.PRNGKey(self.seed),
                         refresh=jnp.asarray(False), info=info)

    # --------------------------------------------------------------- inverses
    def _inverses(self, A, G, damping):
        """Per-layer cached inverse at total damping λ + η."""
        if self.inverse == "tikhonov":
            return {k: KroneckerFactored(A[k], G[k]).inverse(damping) for k in A}
        out = {}
        for k in A:
            alpha, qa, gamma, qg = KroneckerFactored(A[k], G[k], mode="eigen").eigh()
            out[k] = {"alpha": alpha, "Q_A": qa, "gamma": gamma, "Q_G": qg}
        return out

    def _apply_inverse(self, inverse, grads, damping):
        if self.inverse == "tikhonov":
            return {k: inverse[k].apply(v) for k, v in grads.items()}
        out = {}
        for k, v in grads.items():
            e = inverse[k]
            scale = 1.0 / (jnp.maximum(jnp.outer(e["alpha"], e["gamma"]), 0.0) + damping)
            out[k] = KroneckerEigenInverse(e["Q_A"], e["Q_G"], scale).apply(v)
        return out

    def precondition(self, state: KFACState, grads):
        """F̃⁻¹ grads with the state's cached inverses and damping λ + η (no learning rate)."""
        return self._apply_inverse(state.inverse, grads, state.damping + self.l2_reg)

    def metric(self, state: KFACState) -> BlockDiagonal:
        """The current curvature ⊕ A ⊗ G as a ``qgeom.metrics`` block-diagonal metric."""
        mode = "eigen" if self.inverse == "eigen" else "tikhonov"
        return BlockDiagonal({k: KroneckerFactored(state.A[k], state.G[k], mode=mode) for k in state.A})

    # ------------------------------------------------------------- interfaces
    def step(self, params, state: KFACState, batch):
        """One fused K-FAC step on ``batch = (x, y)``: returns (new_params, new_state, info).

        With ``donate_state=True`` the ``state`` argument's buffers are reused: continue with
        the returned state only.
        """
        x, y = self._check(params, batch)
        return self._step_jit(params, state, x, y)

    def update(self, updates, state: KFACState, params=None, *, batch, **extra_args):
        """optax update: ``updates`` is the gradient of the mean NLL; returns (K-FAC updates, state)."""
        del extra_args
        if params is None:
            raise ValueError("K-FAC's update needs params (call tx.update(grads, state, params, batch=...))")
        x, y = self._check(params, batch)
        self.model.check_params(updates)
        delta, state = self._core(params, state, x, y, updates)
        return delta, state

    def gradient_transformation(self) -> optax.GradientTransformationExtraArgs:
        """This optimizer as an optax transformation: ``update(grads, state, params, batch=(x, y))``."""
        return optax.GradientTransformationExtraArgs(self.init, self.update)

    def _check(self, params, batch):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError("batch must be a pair (x, y)")
        x, y = jnp.asarray(batch[0]), jnp.asarray(batch[1])
        self.model.check_params(params)
        self.model.check_batch(x, y)
        return x, y

    def _fused(self, params, state, x, y):
        delta, state = self._core(params, state, x, y, None)
        return _tmap(jnp.add, params, delta), state, state.info

    # ------------------------------------------------------------------- core
    def _objective(self, params, x, y):
        loss = self.model.output.mean_nll(self.model.apply(params, x), y)
        return loss + 0.5 * self.l2_reg * _vdot(params, params)

    def _core(self, params, state: KFACState, x, y, grads):
        model, dist, eta = self.model, self.model.output, self.l2_reg
        n = x.shape[0]
        lam = state.damping
        key, k_sample = jax.random.split(state.key)

        # One forward pass, linearized: its transpose (the VJP) gives the data gradient and the
        # sampled-target gradients, its JVP the exact curvature products — no second forward.
        # With ``curvature_batch_size`` = m < N the pass is split at row m so that all curvature
        # work (sampled backward pass, factor products, JVPs) touches the first m rows only.
        m = self.curvature_batch_size
        if isinstance(m, float):
            m = int(np.ceil(m * n))
        m = n if m is None else min(m, n)
        parts = [_linearize(model, params, x[:m])] + ([_linearize(model, params, x[m:])] if m < n else [])
        out_s, jvp, vjp_s, inputs = parts[0]  # jvp: J t on the curvature rows
        out = jnp.concatenate([p[0] for p in parts]) if m < n else out_s

        loss, ct = jax.value_and_grad(dist.mean_nll)(out, y)
        if grads is None:
            grads = vjp_s(ct[:m])[0]
            if m < n:
                grads = _tmap(jnp.add, grads, parts[1][2](ct[m:])[0])
        grads = _tmap(lambda g, p: g + eta * p, grads, params) if eta else grads
        h = loss + 0.5 * eta * _vdot(params, params)
        ok_here = jnp.isfinite(h) & _all_finite(grads)

        # Factor statistics (EMA), every ``stats_period`` steps.
        def new_stats(_):
            if self.factors == "A":
                g = None
            elif self.estimator == "fisher":
                ys = dist.sample(k_sample, jax.lax.stop_gradient(out_s))
                g = vjp_s(jax.grad(lambda o: jnp.sum(dist.nll(o, ys)))(out_s))[1]
            else:
                g = _tmap(lambda t: t * n, vjp_s(ct[:m])[1])
            k = state.n_stats + 1
            eps = jnp.minimum(1.0 - 1.0 / k.astype(F32), self.ema_decay)
            A = {l: eps * state.A[l] + (1 - eps) * input_factor(inputs[l]) for l in state.A}
            G = {l: eps * state.G[l] + (1 - eps) * output_factor(g[l]) for l in state.G}
            return A, G, k

        keep = (state.A, state.G, state.n_stats)
        if self.stats_period == 1:  # no conditional: XLA fuses better and copies nothing
            A, G, n_stats = _where(ok_here, new_stats(None), keep)
        else:
            do_stats = ok_here & (state.step % self.stats_period == 0)
            A, G, n_stats = jax.lax.cond(do_stats, new_stats, lambda _: keep, None)

        do_inverse = ok_here & ((state.step % self.inverse_period == 0) | state.refresh)
        inverse = jax.lax.cond(do_inverse, lambda _: self._inverses(A, G, lam + eta),
                               lambda _: state.inverse, None)
        nat = _tmap(jnp.negative, self._apply_inverse(inverse, grads, lam + eta))  # Δ = −F̃⁻¹∇h
        v0 = state.velocity

        if self.learning_rate is None:
            # Exact Fisher (= GGN) products: mean_n (J u)ᵀ H (J v) from two JVPs of the network.
            jd, j0 = jvp(nat), jvp(v0)  # (two calls measured faster than one vmapped over both)
            fdd = jnp.mean(dist.hessian_quad(out_s, jd, jd))
            fd0 = jnp.mean(dist.hessian_quad(out_s, jd, j0))
            f00 = jnp.mean(dist.hessian_quad(out_s, j0, j0))
            dd, d0, s00 = _vdot(nat, nat), _vdot(nat, v0), _vdot(v0, v0)
            gd, g0 = _vdot(grads, nat), _vdot(grads, v0)
            c = lam + eta
            m11, m12, m22 = fdd + c * dd, fd0 + c * d0, f00 + c * s00
            if self.momentum is None:
                det = m11 * m22 - m12 ** 2
                two = (s00 > 0) & (det > 1e-12 * m11 * m22)
                safe = jnp.where(two, det, 1.0)
                alpha = jnp.where(two, (-gd * m22 + g0 * m12) / safe, -gd / m11)
                mu = jnp.where(two, (-g0 * m11 + gd * m12) / safe, 0.0)
            else:
                mu = jnp.asarray(self.momentum, F32)
                alpha = -(gd + mu * m12) / m11
            # Undamped (but ℓ2-including) quadratic change M₀(δ) − M₀(0) for ρ.
            qchange = (0.5 * (alpha ** 2 * (m11 - lam * dd) + 2 * alpha * mu * (m12 - lam * d0)
                              + mu ** 2 * (m22 - lam * s00)) + alpha * gd + mu * g0)
        else:
            alpha = jnp.asarray(self.learning_rate, F32)
            mu = jnp.asarray(self.momentum, F32)
            qchange = None
        delta = _tmap(lambda a, b: alpha * a + mu * b, nat, v0)
        new_params = _tmap(jnp.add, params, delta)
        ok_update = _all_finite(new_params)

        # Levenberg–Marquardt on the same batch, every ``damping_interval`` steps.
        adapt = self.adapt_damping & ((state.step + 1) % self.damping_interval == 0) & ok_here & ok_update

        def rho_branch(_):
            if qchange is None:
                jd = jvp(delta)
                q = 0.5 * (jnp.mean(dist.hessian_quad(out_s, jd, jd)) + eta * _vdot(delta, delta)) + _vdot(grads, delta)
            else:
                q = qchange
            h_new = self._objective(new_params, x, y)
            return (h_new - h) / q, h_new, q

        nan = jnp.asarray(jnp.nan, F32)
        skip = (nan, nan, nan if qchange is None else qchange)
        if self.adapt_damping:
            rho, h_new, q = jax.lax.cond(adapt, rho_branch, lambda _: skip, None)
        else:  # nothing to trace or compile for ρ
            rho, h_new, q = skip
        lam_new = jnp.where(rho > 0.75, lam * self.omega1, jnp.where(rho < 0.25, lam / self.omega1, lam))
        lam_new = jnp.where(adapt & jnp.isfinite(rho), lam_new, lam)

        bad_update = ok_here & (~ok_update | (adapt & ~jnp.isfinite(h_new)))
        rejected = ~ok_here | bad_update
        zeros = _tmap(jnp.zeros_like, params)
        update = _where(~ok_here, _tmap(jnp.negative, v0), _where(bad_update, zeros, delta))
        lam_new = jnp.where(rejected, lam * self.reject_damping_factor, lam_new)
        lam_new = jnp.clip(lam_new, self.min_damping, self.max_damping).astype(F32)

        info = {"loss": loss.astype(F32), "objective": h.astype(F32), "rho": rho.astype(F32),
                "learning_rate": jnp.asarray(alpha, F32), "momentum": jnp.asarray(mu, F32),
                "damping": lam.astype(F32), "qmodel_change": jnp.asarray(q, F32), "rejected": rejected}
        new_state = KFACState(step=state.step + 1, n_stats=n_stats, damping=lam_new, A=A, G=G, inverse=inverse,
                              velocity=_where(rejected, zeros, delta), key=key, refresh=rejected, info=info)
        return update, new_state


def kfac(model, **settings) -> optax.GradientTransformationExtraArgs:
    """K-FAC as an optax transformation; ``settings`` are ``KFAC``'s keyword arguments.

    ``update(grads, state, params, batch=(x, y))`` needs the batch the gradient came from.
    """
    return KFAC(model, **settings).gradient_transformation()
