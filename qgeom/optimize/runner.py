"""The training loop: one engine (``run_steps``) under ``fit`` and the studies' harness.

``run_steps`` drives any jitted step ``step(state, t) → (new_state, info)`` (``info["loss"]``
is the loss at the step's *input*; optional ``info["ok"]`` — loss, gradient and update
finite — and ``info["grad_evals"]``, default 1) and owns what every loop must get right:

* compilation (a warm-up the caller supplies) runs outside the clocks (``compile_time``);
* wall and process-CPU clocks of the steps alone (hooks, evaluation, I/O excluded);
* cumulative gradient evaluations;
* the non-finite policy: a step whose loss, gradient or update is not finite stops the run
  and leaves the state at the last point with a finite loss (the step's input, or the one
  before when the input's loss itself is not finite) and says so in ``status`` — never a
  silent NaN. An optimizer that rejects such steps itself may be given ``tolerate`` bad
  steps in a row before the run stops;
* exact resume: ``start`` and ``clocks`` continue a checkpointed run (the caller's hook
  saves it), so a killed run resumed gives the same numbers.

``fit`` is the optax-shaped front end (``loss(params, *data)``, any optax or
``qgeom.optimize`` transformation).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qgeom.optimize._checks import check_count
from qgeom.optimize.damping import all_finite


@dataclasses.dataclass
class LoopResult:
    """Outcome of ``run_steps``: ``state`` (the last point with a finite loss, see the module
    docstring), ``t`` (steps done, counting from 0 across resumptions), per step gone on from
    ``loss`` (at its input; not finite for a step the optimizer undid), cumulative ``wall`` / ``cpu`` seconds and ``grad_evals``;
    ``status`` "completed", "converged", "stopped by callback", a hook's message, or the
    non-finite quantity and step; ``bad`` (non-finite steps in a row at the end)."""

    state: Any
    t: int
    loss: list
    wall: list
    cpu: list
    grad_evals: list
    status: str
    compile_time: float
    bad: int = 0

    @property
    def finished(self) -> bool:
        """True unless a non-finite step stopped the run."""
        return not self.status.startswith("stopped at step")


def run_steps(step: Callable, state, steps: int, *, start: int = 0, clocks=(0.0, 0.0, 0),
              inputs: Callable[[int], tuple] | None = None, warmup: Callable[[], Any] | None = None,
              tolerate: int = 0, keep_previous: bool = True,
              stop_below: float | None = None, on_step: Callable | None = None, progress: bool = False,
              desc: str | None = None) -> LoopResult:
    """Run ``step`` from iteration ``start`` to ``steps`` (see the module docstring).

    ``step(state, t, *inputs(t))``: ``inputs`` (a mini-batch, a key) is evaluated outside
    the clocks. ``clocks = (wall, cpu, grad_evals)`` already spent before ``start`` (a
    resumed run).
    ``warmup()`` compiles (its result is discarded; pass one that builds its own state when
    the step donates its input). ``tolerate``: non-finite steps in a row accepted (the
    optimizer undid them) before stopping. ``keep_previous=False`` for steps that donate
    their input (the previous state is then gone: the run stops at the step's output).
    ``stop_below``: stop with "converged" at the first input whose loss ≤ it (the state
    stays there). ``on_step(t, state, info)`` runs after every step that the loop goes on
    from (``t`` steps done, ``info["ok"]`` a bool, ``info["clocks"]`` the cumulative
    ``(wall, cpu, grad_evals)``); a truthy return stops the run (a string
    is the status). ``progress``: a tqdm bar, shown only on a terminal (``disable=None``).
    """
    steps = check_count("steps", steps, minimum=0)
    compile_time = 0.0
    if warmup is not None and start < steps:
        t0 = time.perf_counter()
        jax.block_until_ready(warmup())
        compile_time = time.perf_counter() - t0
    wall, cpu, evals = float(clocks[0]), float(clocks[1]), float(clocks[2])
    losses, walls, cpus, counts = [], [], [], []
    status, bad, prev = "completed", 0, None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=min(start, steps), desc=desc, leave=False, disable=None, dynamic_ncols=True)
    t = start
    while t < steps:
        args = () if inputs is None else inputs(t)  # mini-batch, key: prepared outside the clocks
        t0, c0 = time.perf_counter(), time.process_time()
        new_state, info = step(state, t, *args)
        jax.block_until_ready((new_state, info))
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        value = float(info["loss"])
        ok = bool(info.get("ok", True)) and np.isfinite(value)
        evals += float(info.get("grad_evals", 1))
        bad = 0 if ok else bad + 1
        if not ok and bad > tolerate:
            status = f"stopped at step {t}: non-finite loss, gradient or update (loss = {value})"
            if not keep_previous:
                state = new_state
            elif not np.isfinite(value) and prev is not None:  # the input itself is bad: step back
                state, t = prev, t - 1
            t += int(not keep_previous)
            break
        if ok and stop_below is not None and value <= stop_below:
            status = "converged"  # the state stays at the input whose loss reached the threshold
            losses.append(value), walls.append(wall), cpus.append(cpu), counts.append(evals)
            break
        losses.append(value), walls.append(wall), cpus.append(cpu), counts.append(evals)
        if ok and keep_previous:
            prev = state
        state = new_state
        t += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.5g}")
        stop = None if on_step is None else on_step(t, state, dict(info, loss=value, ok=ok, clocks=(wall, cpu, evals)))
        if stop:
            status = stop if isinstance(stop, str) else "stopped by callback"
            break
    if bar is not None:
        bar.close()
    return LoopResult(state, t, losses, walls, cpus, counts, status, compile_time, bad)


@dataclasses.dataclass
class FitResult:
    """Outcome of ``fit``.

    ``params``: the last parameters with a finite loss; ``state``: the optimizer state there.
    Per iteration t (lists of equal length): ``loss[t]`` = L(params_t) before
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
        ok = jnp.isfinite(value) & all_finite(grads, new)
        return new, state, value, ok

    return jax.jit(step)


def fit(loss, params, optimizer, steps, *, data=(), step=None, stop_below=None, callback=None, progress=False,
        desc=None):
    """Minimise ``loss(params, *data)`` for ``steps`` iterations of ``optimizer`` (optax extra-args shape).

    The step (value, gradient, update) is ``make_step(loss, optimizer)``, or ``step`` when
    given (such a step reused across calls compiles once for many fits; ``data`` is traced).
    The loop is ``run_steps``: compilation and one discarded warm-up step run outside the
    clock (``compile_time``); it stops on ``stop_below`` (loss ≤ threshold) and on a
    non-finite loss, gradient or update — the parameters are then left at the last finite
    point and ``status`` says what went wrong (never silent NaN parameters).
    ``callback(t, params, value)`` runs after each step (returning True stops);
    ``progress`` shows a tqdm bar on a terminal.
    """
    steps = check_count("steps", steps, minimum=0)
    if not isinstance(optimizer, optax.GradientTransformationExtraArgs):
        optimizer = optax.with_extra_args_support(optimizer)
    extra = int(getattr(optimizer.update, "extra_grad_evals", 0))
    step = make_step(loss, optimizer) if step is None else step

    def one(state, t):
        new, opt_state, value, ok = step(*state, *data)
        return (new, opt_state), {"loss": value, "ok": ok, "grad_evals": 1 + extra}

    on_step = None if callback is None else (lambda t, state, info: callback(t - 1, state[0], info["loss"]))
    state = (params, optimizer.init(params))
    res = run_steps(one, state, steps, warmup=lambda: step(*state, *data), stop_below=stop_below,
                    on_step=on_step, progress=progress, desc=desc)
    params, opt_state = res.state
    status = res.status
    final = float(jax.jit(loss)(params, *data))  # jit caches by function: one compile per loss
    if not np.isfinite(final):
        status = f"{status}; final loss is not finite ({final})"
    evals = [int(e) for e in res.grad_evals]
    return FitResult(params, opt_state, res.loss, res.wall, evals, status, final, res.compile_time)
