"""The one training run of every study: ``train`` (one method, one seed, one step budget).

It drives ``qgeom.optimize.runner.run_steps`` (compile outside the clocks, wall and CPU
clocks, gradient-evaluation counts, the non-finite policy) and adds what a study needs:

* mini-batches and per-step keys as functions of (seed, step), prepared outside the clocks:
  ``batch_at(t)``, ``fold_in(fold_in(key, 2), t)`` (for a ``keyed`` method; else None); the
  method's init key is ``fold_in(key, 1)``;
* evaluations (``evaluate(params, t) → {name: float}``, outside the clocks) at step 0, at
  every step ``t`` with ``eval_at(t)`` and at the end point;
* an atomic ``Checkpoint`` saved at every evaluation: a killed run resumed gives the same
  numbers (the clocks continue from the saved values);
* ``stop(row) → str | None`` checked at every evaluation (a target reached, a CPU budget
  spent): the run ends there and, resumed, stays ended;
* with ``blowup=b``, a run whose evaluated ``train_loss`` rises above both its start and b ×
  its best so far is stopped as ``diverged`` (an optimizer can explode while its loss stays
  finite: SO-KLD-WRM's autoencoder loss went 201 → 131,437 unnoticed before this rule);
* ``release_compiled()`` at the end: XLA:CPU maps every compiled program's code into pages
  of its own, and a study's runs compile fresh closures that JAX keeps cached, so a long
  study in one process once died at Linux's ``vm.max_map_count`` (65,530 maps) with "LLVM
  compilation error: Cannot allocate memory". Past half that limit the caches are cleared
  (``jax.clear_caches()``, which unmaps the code; later calls recompile).

The result is a dict: per step ``loss`` (at the step's input), ``wall``, ``cpu``,
``grad_evals`` (cumulative after the step); ``evals`` (lists over evaluation points:
``step``, ``wall_time``, ``cpu_time``, ``grad_evals``, ``batch_loss`` — the mean finite step
loss since the previous evaluation — and the metrics); ``status`` ("completed", the stop
message, or the non-finite step); ``diverged``; ``t`` (steps done); ``compile_time`` (one
per session); ``state`` (the method's, at the end point) and ``params`` (the end point in
the problem's layout, numpy).
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.harness.methods import Method, tree_copy
from experiments.harness.store import Checkpoint
from qgeom.optimize.runner import run_steps

MAP_FRACTION = 0.5  # release_compiled clears JAX's caches past this fraction of vm.max_map_count


def memory_maps() -> tuple[int, int] | None:
    """(memory maps this process holds, ``vm.max_map_count``), or None off Linux."""
    try:
        with open("/proc/self/maps") as fh:
            n = sum(1 for _ in fh)
        with open("/proc/sys/vm/max_map_count") as fh:
            return n, int(fh.read())
    except OSError:
        return None


def release_compiled() -> bool:
    """Clear JAX's compiled-program caches (and collect) when this process holds more than
    ``MAP_FRACTION`` of ``vm.max_map_count`` memory maps; True if it did."""
    maps = memory_maps()
    if maps is None or maps[0] <= MAP_FRACTION * maps[1]:
        return False
    jax.clear_caches()
    gc.collect()
    return True


def _to_device(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a) if isinstance(a, np.ndarray) else a, tree)


def train(method: Method, params0, steps: int, *, key=None, batch_at: Callable | None = None,
          evaluate: Callable | None = None, eval_at: Callable[[int], bool] | None = None,
          checkpoint: Checkpoint | None = None, stop: Callable[[dict], str | None] | None = None,
          progress: bool = False, desc: str | None = None, on_step: Callable[[int], None] | None = None,
          blowup: float | None = None) -> dict:
    """Train ``method`` from ``params0`` for ``steps`` steps (module docstring).

    ``batch_at(t)``: the step's data (default ``None``); ``eval_at``: default every step;
    ``on_step(t)``: a hook after every step (tests raise in it to simulate a kill).
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps}")
    if blowup is not None and (not blowup > 1 or evaluate is None):
        raise ValueError(f"blowup must be > 1 and needs an evaluate returning train_loss, got {blowup}, {evaluate}")
    key = jax.random.PRNGKey(0) if key is None else key
    batch_at = batch_at or (lambda t: None)
    eval_at = eval_at or (lambda t: True)
    saved = checkpoint.load() if checkpoint is not None else None
    pending: list[float] = []

    def record(t, st, clocks):
        finite = [v for v in pending if np.isfinite(v)]
        row = {"step": t, "wall_time": clocks[0], "cpu_time": clocks[1], "grad_evals": clocks[2],
               "batch_loss": float(np.mean(finite)) if finite else float("nan")}
        if evaluate is not None:
            row.update({k: float(v) for k, v in evaluate(method.params(st), t).items()})
        for k, v in row.items():
            run["evals"].setdefault(k, []).append(v)
        pending.clear()
        if blowup is not None:
            seen = [v for v in run["evals"]["train_loss"] if np.isfinite(v)]
            best = min(seen, default=0.0)
            if best > 0 and row["train_loss"] > max(seen[0], blowup * best):
                run["diverged"] = True
                return f"diverged at step {t}: training loss {row['train_loss']:.4g} > {blowup:g} x its best {best:.4g}"
        return stop(row) if stop is not None else None

    def save(st):
        if checkpoint is not None:
            checkpoint.save({"state": st, "run": run})

    if saved is None:
        state = method.init(params0, jax.random.fold_in(key, 1), batch_at)
        run = {"t": 0, "clocks": (0.0, 0.0, 0.0), "loss": [], "wall": [], "cpu": [], "grad_evals": [],
               "evals": {}, "status": "completed", "diverged": False, "compile_time": []}
        run["status"] = record(0, state, run["clocks"]) or "completed"
        save(state)
    else:
        state, run = _to_device(saved["state"]), saved["run"]
        if stop is not None and run["status"] == "completed":  # a target set by this call may be met already
            run["status"] = stop({k: v[-1] for k, v in run["evals"].items()}) or "completed"

    def inputs(t):
        return batch_at(t), (jax.random.fold_in(jax.random.fold_in(key, 2), t) if method.keyed else None)

    def step(st, t, batch, step_key):
        return method.step(st, batch, step_key, t)

    def warmup():
        st = method.init(tree_copy(params0), jax.random.fold_in(key, 1), batch_at)
        for k in range(method.warmup_steps):
            st, _ = method.step(st, batch_at(k), jax.random.fold_in(key, 3) if method.keyed else None, k)
        return st

    def hook(t, st, info):
        run["t"], run["clocks"] = t, info["clocks"]
        for name, v in zip(("loss", "wall", "cpu", "grad_evals"), (info["loss"], *info["clocks"])):
            run[name].append(v)
        pending.append(info["loss"])
        stopped = None
        if eval_at(t) or t == steps:
            stopped = record(t, st, info["clocks"])
            if run["diverged"]:  # saved with it, so it resumes stopped (a stop rule is re-checked instead)
                run["status"] = stopped
            save(st)
        if on_step is not None:
            on_step(t)
        return stopped

    if run["status"] == "completed" and run["t"] < steps:
        res = run_steps(step, state, steps, start=run["t"], clocks=run["clocks"], inputs=inputs, warmup=warmup,
                        tolerate=method.tolerate, keep_previous=not method.donates, on_step=hook,
                        progress=progress, desc=desc)
        run["compile_time"].append(res.compile_time)
        state, run["status"] = res.state, res.status
        if not res.finished:  # the non-finite stop: evaluate the point the loop left the state at
            run["diverged"], t = True, res.t
            run["t"], run["clocks"] = t, tuple(run[k][t - 1] if t else 0.0 for k in ("wall", "cpu", "grad_evals"))
            record(t, state, run["clocks"])
            save(state)
    release_compiled()
    return {**run, "state": state, "params": jax.tree_util.tree_map(np.asarray, method.params(state))}
