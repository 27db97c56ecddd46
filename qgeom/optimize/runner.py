"""A common training loop for every optimizer in ``qgeom.optimize`` (and any optax one)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qgeom.optimize._checks import check_count
from qgeom.optimize.natural import _all_finite


@dataclasses.dataclass
class FitResult:
    """Outcome of ``fit``.

    ``params``: the last parameters with a finite loss; ``state``: the optimizer state there. Per iteration t (lists of equal length): ``loss[t]`` = L(params_t) before
    step t; ``time[t]`` = cumulative wall seconds after step t (compilation excluded, reported
    as ``compile_time``); ``grad_evals[t]`` = cumulative gradient evaluations (1 per step plus
    the optimizer's ``update.extra_grad_evals``, e.g. QPMD's inner steps). ``status`` is
    "completed", "converged" (``stop_below`` reached) or a message naming the non-finite
    quantity and step; ``final_loss`` = L(params). With "converged", ``params`` is the point
    whose loss ``loss[-1]`` reached the threshold, after ``len(loss) − 1`` updates.
    """

    params: Any
    state: Any
    loss: list
    time: list
    grad_evals: list
    status: str
    final_loss: float
    compile_time: float


def make_step(loss, optimizer):
    """The jitted step (params, state, *data) → (new_params, new_state, L(params, *data), ok).

    ``loss(params, *data)``: extra arguments (a target state, β, shot data) are traced, so
    one compile serves every value. ``ok`` is False when L, ∇L or the new parameters are
    not finite.
    """

    def step(params, state, *data):
        value, grads = jax.value_and_grad(loss)(params, *data)
        updates, state = optimizer.update(grads, state, params, value=value)
        new = optax.apply_updates(params, updates)
        ok = jnp.isfinite(value) & _all_finite(grads, new)
        return new, state, value, ok

    return jax.jit(step)


def fit(loss, params, optimizer, steps, *, data=(), step=None, stop_below=None, callback=None, progress=False,
        desc=None):
    """Minimise ``loss(params, *data)`` for ``steps`` iterations of ``optimizer`` (optax extra-args shape).

    The step (value, gradient, update) is ``make_step(loss, optimizer)``, or ``step`` when
    given (such a step reused across calls compiles once for many fits; ``data`` is traced).
    Compilation and one discarded warm-up step run outside the clock (``compile_time``).
    The loop runs on the host so that it can time each step, stop on ``stop_below`` (loss ≤
    threshold) and stop on a non-finite loss, gradient or update — the parameters are then
    left at the last finite point and ``status`` says what went wrong (never silent NaN
    parameters). ``callback(t, params, value)`` runs after each step (returning True stops);
    ``progress`` shows a tqdm bar.
    """
    steps = check_count("steps", steps, minimum=0)
    if not isinstance(optimizer, optax.GradientTransformationExtraArgs):
        optimizer = optax.with_extra_args_support(optimizer)
    extra = int(getattr(optimizer.update, "extra_grad_evals", 0))
    state = optimizer.init(params)
    step = make_step(loss, optimizer) if step is None else step
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, state, *data))
    compile_time = time.perf_counter() - t0

    losses, times, evals = [], [], []
    status, elapsed, prev = "completed", 0.0, None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, leave=False)
    for t in range(steps):
        t0 = time.perf_counter()
        new, new_state, value, ok = step(params, state, *data)
        ok, value = bool(ok), float(value)
        elapsed += time.perf_counter() - t0
        if not ok:
            status = f"stopped at step {t}: non-finite loss, gradient or update (loss = {value})"
            if not np.isfinite(value) and prev is not None:  # params_t itself is bad: step back
                params, state = prev
            break
        losses.append(value)
        times.append(elapsed)
        evals.append((t + 1) * (1 + extra))
        if stop_below is not None and value <= stop_below:
            status = "converged"  # params stay at the point whose loss reached the threshold
            break
        prev = (params, state)
        params, state = new, new_state
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.5g}")
        if callback is not None and callback(t, params, value):
            status = "stopped by callback"
            break
    if bar is not None:
        bar.close()
    final = float(jax.jit(loss)(params, *data))  # jit caches by function: one compile per loss
    if not np.isfinite(final):
        status = f"{status}; final loss is not finite ({final})"
    return FitResult(params, state, losses, times, evals, status, final, compile_time)
