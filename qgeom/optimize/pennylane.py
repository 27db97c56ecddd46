"""PennyLane-shaped optimizers for mixed states: BKM natural gradient and mirror descent.

Usable in a plain PennyLane training loop with the JAX interface::

    dev = qml.device("default.mixed", wires=2)

    @qml.qnode(dev, interface="jax")
    def rho(w):
        qml.RX(w[0], 0); qml.RY(w[1], 1); qml.CNOT([0, 1])
        qml.DepolarizingChannel(0.1, wires=0)
        return qml.density_matrix([0, 1])

    @qml.qnode(dev, interface="jax")
    def cost(w):
        ...same gates...
        return qml.expval(H)

    opt = qgeom.optimize.BKMNaturalGradientOptimizer(stepsize=0.1)
    for _ in range(50):
        w, c = opt.step_and_cost(cost, w, rho_fn=rho)

``cost(*args, **kwargs)`` is any scalar function; ``rho_fn(*args, **kwargs)`` returns the
density matrix ρ of the same parameters (e.g. a QNode returning ``qml.density_matrix`` on
``default.mixed``: noise channels, partial traces and QHBMs alike). Parameters are one or
several positional arguments, each an array or a pytree (e.g. a tuple) of arrays, as with
PennyLane's optimizers; ``step`` returns new JAX arrays of the same structure (a single
argument comes back unwrapped). ρ is validated once per ``rho_fn`` (square, Hermitian, PSD,
unit trace, else ``ValueError``). The step is jit-compiled and cached per (cost, rho_fn)
when no keyword arguments are passed.

A step whose cost, gradient or update is not finite is rejected: the parameters are
returned unchanged, a ``RuntimeWarning`` reports it, and (natural gradient) the ridge
damping is multiplied by 10 (at least 1e-3) for the following steps
(``qgeom.optimize.damping.rejected_damping``, the rule every qgeom optimizer uses).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import optax

from qgeom.metrics.quantum import DEFAULT_FLOOR, bkm, check_density_matrix
from qgeom.optimize._checks import check_alpha, check_count, check_positive
from qgeom.optimize.damping import all_finite, rejected_damping
from qgeom.optimize.mirror import density_divergence, mirror_descent
from qgeom.optimize.natural import natural_gradient


class _MixedStateOptimizer:
    """Shared PennyLane plumbing: argument handling, validation, compilation cache, rejection."""

    def __init__(self):
        self._cache = {}
        self._validated = set()

    def _transform(self, rho_of):  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_reject(self):
        pass

    def _cache_key(self, cost, rho_fn):
        return (cost, rho_fn)

    def _compile(self, cost, rho_fn, kwargs):
        def rho_of(params):
            return rho_fn(*params, **kwargs)

        tx = self._transform(rho_of)

        def step(params):
            value, grads = jax.value_and_grad(lambda ps: cost(*ps, **kwargs))(params)
            updates, _ = tx.update(grads, tx.init(params), params, value=value)
            new = optax.apply_updates(params, updates)
            ok = jnp.isfinite(value) & all_finite(grads, updates)
            return new, value, ok

        return jax.jit(step)

    def step_and_cost(self, cost, *args, rho_fn=None, **kwargs):
        """One step; returns ``(new_params, cost(params))`` like PennyLane's optimizers."""
        if rho_fn is None:
            raise ValueError(f"{type(self).__name__} needs rho_fn=<function or QNode returning the density "
                             "matrix (qml.density_matrix) of the same parameters>")
        if not args:
            raise ValueError("no parameters given: call step_and_cost(cost, params, rho_fn=qnode)")
        params = jax.tree_util.tree_map(jnp.asarray, tuple(args))
        if rho_fn not in self._validated:
            try:
                check_density_matrix(rho_fn(*params, **kwargs))
            except ValueError as err:
                raise ValueError(f"rho_fn must return a density matrix: {err}") from None
            self._validated.add(rho_fn)
        key = self._cache_key(cost, rho_fn)
        if kwargs or key not in self._cache:
            fn = self._compile(cost, rho_fn, kwargs)
            if kwargs:
                new, value, ok = fn(params)
                return self._finish(params, new, value, ok)
            self._cache[key] = fn
        new, value, ok = self._cache[key](params)
        return self._finish(params, new, value, ok)

    def _finish(self, params, new, value, ok):
        if jnp.ndim(value) != 0:
            raise ValueError(f"cost must return a scalar, got shape {jnp.shape(value)}")
        if not bool(ok):
            warnings.warn(f"{type(self).__name__}: step rejected, the cost ({float(value)}), its gradient or the "
                          "update is not finite; parameters left unchanged", RuntimeWarning, stacklevel=3)
            self._on_reject()
            new = params
        out = new[0] if len(new) == 1 else new
        return out, value

    def step(self, cost, *args, rho_fn=None, **kwargs):
        """One step; returns the new parameters (one argument → one array/pytree, else a tuple)."""
        return self.step_and_cost(cost, *args, rho_fn=rho_fn, **kwargs)[0]


class BKMNaturalGradientOptimizer(_MixedStateOptimizer):
    """Mixed-state natural gradient θ ← θ − η (G_BKM + λ_tot I)⁻¹ ∇cost.

    G_BKM = ``qgeom.metrics.bkm(rho_fn, params)`` (generic Petz–BKM metric of the density
    matrix; eigenvalues floored at ``floor``), recomputed every step. λ_tot = ``shift`` when
    λ_min(G) ≤ ``shift_threshold`` (the QPNGD authors' rule; ``shift=0`` disables it) plus
    the ridge ``damping``. The functional twin is
    ``natural_gradient(lambda p: bkm(rho_fn, p), stepsize, damping=..., shift=...)``.
    """

    def __init__(self, stepsize=0.01, damping=1e-2, shift=0.0, shift_threshold=1.0, floor=DEFAULT_FLOOR):
        super().__init__()
        self.stepsize = check_positive("stepsize", stepsize)
        self.damping = check_positive("damping", damping, allow_zero=True)
        self.shift = check_positive("shift", shift, allow_zero=True)
        self.shift_threshold = float(shift_threshold)
        self.floor = check_positive("floor", floor)

    def _cache_key(self, cost, rho_fn):
        return (cost, rho_fn, self.damping)

    def _transform(self, rho_of):
        return natural_gradient(lambda p: bkm(rho_of, p, self.floor), self.stepsize, damping=self.damping,
                                shift=self.shift, shift_threshold=self.shift_threshold)

    def _on_reject(self):
        self.damping = float(rejected_damping(self.damping, 10.0, floor=1e-4))


class MirrorDescentOptimizer(_MixedStateOptimizer):
    """Mixed-state mirror descent (QPMD for any ρ): freeze g = ∇cost(ξ_t), then ``inner_steps``
    Adam steps (``inner_stepsize``) on ⟨g, ξ⟩ + (1/η)[(1−α) D(ρ_ξ‖ρ_{ξ_t}) + α ½‖ξ − ξ_t‖²].

    D is computed from the density matrices (``qgeom.optimize.mirror.density_divergence``):
    log ρ_{ξ_t} by one ``eigh`` per outer step, Tr ρ_ξ log ρ_ξ by ``eigh`` with the exact
    trace-function derivative Tr[dρ (log ρ + I)], eigenvalues floored at ``floor`` (finite at
    pure or degenerate states). Functional twin:
    ``mirror_descent(density_divergence(rho_fn, floor), stepsize, alpha, inner_steps, inner_stepsize)``.
    """

    def __init__(self, stepsize=0.1, alpha=0.5, inner_steps=100, inner_stepsize=2.5e-3, floor=1e-12):
        super().__init__()
        self.stepsize = check_positive("stepsize", stepsize)
        self.alpha = check_alpha(alpha)
        self.inner_steps = check_count("inner_steps", inner_steps)
        self.inner_stepsize = check_positive("inner_stepsize", inner_stepsize)
        self.floor = check_positive("floor", floor)
        if self.alpha == 0:
            warnings.warn("MirrorDescentOptimizer with alpha=0: the inner problem has no minimiser; only the "
                          "finite inner loop keeps the step local", stacklevel=2)

    def _transform(self, rho_of):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mirror_descent(density_divergence(rho_of, self.floor), self.stepsize, self.alpha,
                                  self.inner_steps, self.inner_stepsize)
