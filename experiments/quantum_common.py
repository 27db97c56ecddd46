"""Shared machinery of the quantum studies (``gibbs``, ``learn``, ``sequence``).

* a **method registry**: every optimizer is built by ``make_stepper(problem, method, lr)``
  into a jitted step with one interface, so the studies treat QPMD, QPNGD, Adam, GD and
  Fubini–Study QNG alike;
* **one run** of a method (``run_cell``): wall time of the optimizer steps only (compile
  excluded by a warm-up step, reporting excluded), cumulative gradient evaluations, the
  divergence at every iterate, the fidelity at sparse iterates, NaN/Inf detection;
* the **step-size search** with an equal budget per method (a grid of the same size for
  every method, each value run for the same number of steps from the same seed, winner =
  lowest mean divergence over the last tenth of the run);
* **resumable cells**: every (problem, method, step size, seed, steps) result is stored in
  a ``Checkpoint`` under its key, so a killed study resumes where it stopped and a later
  study with overlapping settings reuses finished cells;
* time-to-threshold analysis against the ansatz's own floor D* and the curve plots.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

import qgeom  # noqa: F401  (enables float64)
from experiments.io import atomic_write_json, atomic_write_text

# The step-size grids: the same number of values for every method (equal search budget).
# Centres follow the usual scales: Adam ~1e-2, plain gradient ~0.1–1, natural gradient
# and mirror descent ~0.1–1 (the authors' η = 0.1), QNG ~0.01–0.1.
GRIDS = {
    "qpmd": (0.1, 0.3, 1.0, 3.0),
    "qpngd": (0.03, 0.1, 0.3, 1.0),
    "qpngd-k": (0.03, 0.1, 0.3, 1.0),
    "adam": (3e-3, 1e-2, 3e-2, 1e-1),
    "gd": (0.03, 0.1, 0.3, 1.0),
    "qng": (0.01, 0.03, 0.1, 0.3),
}
SHORT_GRIDS = {
    "qpmd": (0.3, 1.0, 3.0),
    "qpngd": (0.1, 0.3, 1.0),
    "qpngd-k": (0.1, 0.3, 1.0),
    "adam": (1e-2, 3e-2, 1e-1),
    "gd": (0.1, 0.3, 1.0),
    "qng": (0.03, 0.1, 0.3),
}
GEOMETRIC = ("qpmd", "qpngd", "qpngd-k")
LABELS = {"qpmd": "QPMD", "qpngd": "QPNGD (BKM)", "qpngd-k": "QPNGD amortized", "adam": "Adam", "gd": "GD", "qng": "QNG (Fubini–Study)"}


# ----------------------------------------------------------------------------- problems


@dataclasses.dataclass(eq=False)
class Problem:
    """A training problem on a QHBM.

    The optimizers minimise ``loss(params) = loss_fn(params, data)``. Problems of one
    ``family`` share ``model`` and ``loss_fn`` and differ only in ``data`` (β, a target
    state, shadow estimates), which the jitted steps take as an argument: one compile
    serves the whole family. The reported divergence is ``loss + offset`` (exact for VQT:
    D(ρ‖σ_β) = L + log Z_β; for QMHL from exact σ: D(σ‖ρ) = L − S(σ)) unless
    ``divergence(params)`` is given (e.g. when the loss is estimated from shots and D is
    evaluated exactly on the side). ``evaluate(params)`` returns the sparse, more
    expensive reports (fidelity, ...), never timed. ``key`` names the problem in
    checkpoints and must change whenever the problem does.
    """

    key: str
    family: str
    model: Any
    loss_fn: Callable
    data: Any = None
    offset: float = 0.0
    divergence: Callable | None = None
    evaluate: Callable | None = None

    def loss(self, params):
        """The training loss at ``params`` (jitted once per family)."""
        return jitted_loss(self)(params, self.data)


_LOSSES: dict = {}


def jitted_loss(problem: Problem):
    """``jax.jit(problem.loss_fn)``, one per family (the data are an argument)."""
    if problem.family not in _LOSSES:
        _LOSSES[problem.family] = jax.jit(problem.loss_fn)
    return _LOSSES[problem.family]


def ring(n: int):
    """The ring graph of the TFIM (networkx cycle)."""
    import networkx as nx

    if n < 3:
        raise ValueError(f"a ring needs n >= 3 spins, got n={n}")
    return nx.cycle_graph(n)


def make_model(n: int, ansatz: str = "cx3"):
    """QHBM for the studies.

    ``cxL``  — order-2 parity EBM + L hardware-efficient layers of RY, RZ rotations and a
               CNOT ladder (the reference ansatz ``cx3``: floors D* ≈ 0.05 at n = 4 and
               ≈ 0.2 at n = 6 for the β = 1 TFIM ring, as in the reference study);
    ``heL``  — order-2 parity EBM + L layers of RX, RZ and CZ brickwork (the reference study's layer,
               far less expressive here: D* ≈ 0.16 at n = 4, ≈ 0.72 at n = 6);
    ``qaoaL``— full-order parity EBM + L TFIM-structured layers on the ring;
    ``heLfull`` / ``cxLfull`` — full-order parity EBM (the expressive option at n = 4).
    """
    from qgeom.quantum import QHBM, circuits, ebm

    kinds = {"qaoa": {}, "he": {}, "cx": dict(rotations=("RY", "RZ"), entangler="CNOT")}
    kind = next((k for k in kinds if ansatz.startswith(k)), None)
    body = ansatz[len(kind):] if kind else ""
    full = body.endswith("full")
    if kind is None or not (body[:-4] if full else body).isdigit() or (kind == "qaoa" and full):
        raise ValueError(f"unknown ansatz {ansatz!r} (expected cxL, heL, cxLfull, heLfull or qaoaL, e.g. cx3)")
    layers = int(body[:-4] if full else body)
    if layers < 1:
        raise ValueError(f"ansatz {ansatz!r} needs at least one layer")
    if kind == "qaoa":
        return QHBM(ebm.Parity(n, n), circuits.tfim_qaoa(ring(n), layers))
    return QHBM(ebm.Parity(n, n if full else 2), circuits.hardware_efficient(n, layers, **kinds[kind]))


def n_params(model) -> int:
    """Number of real parameters of ``model``."""
    return int(jax.flatten_util.ravel_pytree(model.init(jax.random.PRNGKey(0)))[0].size)


@functools.cache
def _fidelity(model):
    from qgeom.quantum import fidelity

    return jax.jit(lambda p, sigma: fidelity(model.density_matrix(p), sigma))


def fidelity_fn(model, sigma):
    """params → squared fidelity F(ρ_params, σ) (PennyLane's convention); one compile per model."""
    fid = _fidelity(model)
    sigma = jnp.asarray(sigma)
    return lambda p: fid(p, sigma)


# ----------------------------------------------------------------------------- methods


class Stepper(NamedTuple):
    """One optimizer in the studies' shape.

    ``init(params)`` → state; ``step(state)`` → (state, info) with ``info["loss"]`` the
    training loss at the parameters *before* the step and ``info["grad_evals"]`` the
    number of loss-gradient evaluations the step spent (metric evaluations separately in
    ``info["metric_evals"]`` when the method forms one); ``params(state)`` → parameters.
    """

    init: Callable
    step: Callable
    params: Callable


# Method settings beyond the step size (fixed, stated in the summaries):
# * qpngd  — exact BKM natural gradient with the authors' damping (shift 1 when
#            λ_min(G) ≤ 1, ridge 1e-2), metric refreshed every step;
# * qpngd-k — amortized curvature: BKM metric refreshed every 20 steps, no shift, ridge
#            starting at 1 and adapted Levenberg–Marquardt style from the reduction
#            ratio within [1e-3, 1e3], steps bounded in the metric, δᵀGδ ≤ 2 (chosen on
#            n = 6, cx3, 4 seeds among k ∈ {10, 20, 40, 50}, δᵀGδ ≤ {0.2, 0.5, 2, ∞});
# * qpmd   — mirror descent, α = 0.5, 10 inner Adam steps at 0.02 on the frozen
#            modular Hamiltonian;
# * qng    — Fubini–Study QNG on the circuit part, ridge 1e-2;
# * adam, gd — optax.
METHOD_KWARGS = {
    "qpngd": {},
    "qpngd-k": dict(refresh_every=20, adapt_damping=True, shift=0.0, damping=1.0, damping_bounds=(1e-3, 1e3),
                    max_norm=2.0),
    "qpmd": dict(alpha=0.5, inner_steps=10, inner_lr=0.02),
    "qng": {},
    "adam": {},
    "gd": {},
}


def optimizer(model, method: str, lr):
    """The ``qgeom.optimize`` transformation of ``method`` (settings ``METHOD_KWARGS``) at ``lr``."""
    import qgeom.optimize as opt

    if method not in METHOD_KWARGS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(METHOD_KWARGS)}")
    if method in ("adam", "gd"):
        return getattr(opt, method)(lr)
    return getattr(opt, method.split("-")[0])(model, lr, **METHOD_KWARGS[method])


_COMPILED: dict = {}


def _compiled(problem: Problem, method: str):
    """(optimizer, jitted step, extra gradient evaluations per step), cached per (problem
    family, method): the step size is a hyperparameter in the state
    (``optax.inject_hyperparams``) and the problem's data an argument of
    ``qgeom.optimize.make_step``'s step, so the whole step-size grid and every problem of
    the family share one compile."""
    from qgeom.optimize import make_step

    cache_key = (problem.family, method)
    if cache_key not in _COMPILED:
        transform = optax.inject_hyperparams(lambda learning_rate: optimizer(problem.model, method, learning_rate))(
            learning_rate=1.0)
        extra = int(getattr(optimizer(problem.model, method, 1.0).update, "extra_grad_evals", 0))
        _COMPILED[cache_key] = transform, make_step(problem.loss_fn, transform), extra
    return _COMPILED[cache_key]


def make_stepper(problem: Problem, method: str, lr: float) -> Stepper:
    """The ``method`` optimizer at step size ``lr`` on ``problem``, from ``qgeom.optimize``."""
    if method not in METHOD_KWARGS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(METHOD_KWARGS)}")
    if not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"step size must be a finite number > 0, got {lr}")
    transform, step, extra = _compiled(problem, method)

    def init(params):
        opt_state = transform.init(params)
        opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, dtype=jnp.float64)
        return params, opt_state

    def do(state):
        params, opt_state = state
        new, opt_state, value, ok = step(params, opt_state, problem.data)
        info = {"loss": value, "ok": ok, "grad_evals": 1 + extra}
        if hasattr(opt_state.inner_state, "refreshes"):
            info["metric_evals"] = opt_state.inner_state.refreshes
        return (new, opt_state), info

    return Stepper(init, do, lambda state: state[0])


def enable_compile_cache(path=None) -> None:
    """Persistent XLA compilation cache (default ``results/.jax_cache``) unless one is set:
    a resumed or repeated study does not pay the compile again."""
    if jax.config.jax_compilation_cache_dir:
        return
    from experiments.io import results_dir

    jax.config.update("jax_compilation_cache_dir", str(path or results_dir(".jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def check_methods(methods) -> list[str]:
    methods = list(methods)
    bad = [m for m in methods if m not in GRIDS]
    if bad or not methods:
        raise ValueError(f"unknown methods {bad}; choose from {sorted(GRIDS)}")
    return methods


# ----------------------------------------------------------------------------- one run


def report_iterations(steps: int, points: int = 25) -> np.ndarray:
    """Sparse, log-spaced iterations (0 and ``steps`` included) for the costly reports."""
    its = np.unique(np.round(np.geomspace(1, steps + 1, points) - 1).astype(int))
    return np.union1d(its, [0, steps])


def run_cell(problem: Problem, method: str, lr: float, seed: int, steps: int, *,
             max_cpu: float | None = None, report_points: int = 25, init_params=None) -> dict:
    """Train ``problem`` with ``method`` at ``lr`` for ``steps`` iterations from seed ``seed``.

    Returns the trace: ``D`` (steps+1 divergences, NaN after a divergence or a time stop),
    ``time`` (cumulative wall seconds of the optimizer steps only, compile excluded),
    ``cpu_time`` (the same in process CPU seconds: robust to other load on the machine),
    ``grad_evals`` (cumulative), ``report_iters`` and the sparse reports (``fidelity``),
    ``status`` ("ok", "nan at step k" or "cpu limit at step k": ``max_cpu`` caps the
    optimizer steps' CPU seconds, so slow methods get a fair, bounded budget) and the
    last finite ``params`` (numpy). The start is ``init_params`` if given, else
    ``model.init(PRNGKey(seed))``.
    """
    stepper = make_stepper(problem, method, lr)
    params0 = problem.model.init(jax.random.PRNGKey(seed)) if init_params is None else init_params
    state = stepper.init(params0)
    jax.block_until_ready(stepper.step(state))  # compile outside the clock

    divergence = problem.divergence
    reports = set(report_iterations(steps, report_points).tolist())
    D = np.full(steps + 1, np.nan)
    wall = np.full(steps + 1, np.nan)
    cpu = np.full(steps + 1, np.nan)
    evals = np.full(steps + 1, np.nan)
    metric_evals = 0
    rep_its, rep = [], {}
    wall[0] = cpu[0] = evals[0] = 0.0
    status = "ok"

    def record(k, params, loss_value):
        D[k] = float(divergence(params)) if divergence is not None else float(loss_value) + problem.offset
        if k in reports and problem.evaluate is not None:
            rep_its.append(k)
            for name, value in problem.evaluate(params).items():
                rep.setdefault(name, []).append(float(value))

    elapsed = cpu_elapsed = 0.0
    params = params0
    for k in range(steps):
        params = stepper.params(state)
        t0, c0 = time.perf_counter(), time.process_time()
        state, info = stepper.step(state)
        jax.block_until_ready(state)
        elapsed += time.perf_counter() - t0
        cpu_elapsed += time.process_time() - c0
        value = float(info["loss"])
        if not (np.isfinite(value) and bool(info.get("ok", True))):
            status = f"nan at step {k}: non-finite loss, gradient or update (loss = {value})"
            if np.isfinite(value):
                record(k, params, value)
            break
        record(k, params, value)
        wall[k + 1], cpu[k + 1] = elapsed, cpu_elapsed
        evals[k + 1] = evals[k] + float(info.get("grad_evals", 1))
        metric_evals = int(info.get("metric_evals", 0))  # cumulative count in the optimizer state
        if max_cpu is not None and cpu_elapsed > max_cpu:
            status = f"cpu limit at step {k + 1}"
            break
    else:
        params = stepper.params(state)
        value = float(problem.loss(params))
        if np.isfinite(value):
            record(steps, params, value)
        else:
            status = f"nan at step {steps}"
    last = int(np.max(np.nonzero(np.isfinite(D))[0], initial=0))
    if problem.evaluate is not None and (not rep_its or rep_its[-1] != last):  # report the end point
        rep_its.append(last)
        for name, value in problem.evaluate(params).items():
            rep.setdefault(name, []).append(float(value))
    wall[last + 1:] = np.nan
    cpu[last + 1:] = np.nan
    evals[last + 1:] = np.nan
    return {"method": method, "lr": float(lr), "seed": int(seed), "steps": int(steps),
            "D": D, "time": wall, "cpu_time": cpu, "grad_evals": evals, "metric_evals": metric_evals,
            "report_iters": np.asarray(rep_its, dtype=int), **{k: np.asarray(v) for k, v in rep.items()},
            "status": status, "params": jax.tree_util.tree_map(np.asarray, params)}


def search_score(trace: dict) -> float:
    """Lowest-is-best score of a search run: mean D over the last tenth (inf if it failed)."""
    D = trace["D"]
    if trace["status"].startswith("nan"):
        return float("inf")
    D = D[np.isfinite(D)]
    tail = max(1, len(D) // 10)
    return float(np.mean(D[-tail:]))


# ----------------------------------------------------------------------------- cells


def cell_key(**fields) -> str:
    """Stable key of one cell from its defining fields."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16] + ":" + text


class Cells:
    """Resumable store of finished cells in one ``Checkpoint`` (saved after every cell)."""

    def __init__(self, checkpoint, fresh: bool = False, stop_after: int | None = None):
        self.checkpoint = checkpoint
        if fresh:
            checkpoint.clear()
        state = checkpoint.load() or {}
        self.done = dict(state.get("cells", {}))
        self.computed = 0
        self.stop_after = stop_after  # for tests: simulate a kill after this many new cells

    def run(self, key: str, compute: Callable[[], dict]) -> dict:
        if key in self.done:
            return self.done[key]
        if self.stop_after is not None and self.computed >= self.stop_after:
            raise KeyboardInterrupt(f"stopped after {self.computed} new cells (simulated kill)")
        result = compute()
        self.done[key] = result
        self.computed += 1
        self.checkpoint.save({"cells": self.done})
        return result


def step_size_search(cells: Cells, problem: Problem, methods, grids, seed: int, steps: int,
                     progress=None, max_cpu=None) -> dict:
    """Run every grid value of every method for ``steps`` iterations from ``seed``.

    Returns ``{method: {"grid": [...], "scores": [...], "winner": lr}}``.
    """
    out = {}
    for method in methods:
        scores = []
        for lr in grids[method]:
            key = cell_key(problem=problem.key, method=method, settings=METHOD_KWARGS[method], lr=lr, seed=seed,
                           steps=steps, max_cpu=max_cpu)
            if progress is not None:
                progress.set_postfix_str(f"search {method} lr={lr:g}")
            trace = cells.run(key, lambda: run_cell(problem, method, lr, seed, steps, max_cpu=max_cpu))
            scores.append(search_score(trace))
            if progress is not None:
                progress.update()
        best = int(np.argmin(scores)) if np.any(np.isfinite(scores)) else 0
        out[method] = {"grid": list(grids[method]), "scores": scores, "winner": grids[method][best]}
    return out


def long_runs(cells: Cells, problem: Problem, methods, winners: dict, seeds, steps: int,
              progress=None, max_cpu=None) -> dict:
    """Every method at its winning step size, every seed: ``{method: [trace per seed]}``."""
    out = {}
    for method in methods:
        out[method] = []
        for seed in seeds:
            lr = winners[method]
            key = cell_key(problem=problem.key, method=method, settings=METHOD_KWARGS[method], lr=lr, seed=seed,
                           steps=steps, max_cpu=max_cpu)
            if progress is not None:
                progress.set_postfix_str(f"{method} seed={seed}")
            out[method].append(cells.run(key, lambda: run_cell(problem, method, lr, seed, steps,
                                                                max_cpu=max_cpu)))
            if progress is not None:
                progress.update()
    return out


# ----------------------------------------------------------------------------- analysis


def first_reach(trace: dict, threshold: float) -> dict | None:
    """Iterations, gradient evaluations and wall seconds until D ≤ threshold (None if never)."""
    hit = np.nonzero(np.nan_to_num(trace["D"], nan=np.inf) <= threshold)[0]
    if hit.size == 0:
        return None
    k = int(hit[0])
    return {"iterations": k, "grad_evals": float(trace["grad_evals"][k]), "wall_s": float(trace["time"][k]),
            "cpu_s": float(trace["cpu_time"][k])}


def reach_summary(traces: list[dict], threshold: float) -> dict:
    """Cost to D ≤ threshold: the mean over the seeds that reached it, how many reached, and
    the expected running time with restarts (``ert_*``; Hansen et al., COCO: (Σ cost to the
    hit over successful runs + Σ whole cost of the failed runs) / number of successes), which
    charges a method for the seeds that never get there."""
    hits = [first_reach(t, threshold) for t in traces]
    ok = [h for h in hits if h is not None]
    out = {"threshold": threshold, "reached": f"{len(ok)}/{len(hits)}"}
    for field in ("iterations", "grad_evals", "wall_s", "cpu_s"):
        vals = [h[field] for h in ok]
        out[field] = float(np.mean(vals)) if vals else None
        out[field + "_std"] = float(np.std(vals)) if vals else None
    for field, key in (("wall_s", "time"), ("cpu_s", "cpu_time"), ("iterations", None)):
        spent = [h[field] if h is not None else (np.count_nonzero(np.isfinite(t["D"])) - 1 if key is None
                                                 else float(np.nanmax(t[key])))
                 for h, t in zip(hits, traces)]
        out["ert_" + field] = float(np.sum(spent) / len(ok)) if ok else None
    return out


def floor_estimate(runs: dict) -> float:
    """D*: the lowest divergence any method reached in the long runs (the ansatz's floor)."""
    return float(min(np.nanmin(t["D"]) for traces in runs.values() for t in traces))


def method_summary(traces: list[dict], d_star: float, deltas=(0.05, 0.01)) -> dict:
    finals = [t["D"][np.nonzero(np.isfinite(t["D"]))[0][-1]] for t in traces]
    floors = [np.nanmin(t["D"]) for t in traces]
    def per_iter(t, field):
        return np.nanmax(t[field]) / max(1, np.count_nonzero(np.isfinite(t[field])) - 1)

    out = {
        "lr": traces[0]["lr"],
        "seeds": [t["seed"] for t in traces],
        "status": [t["status"] for t in traces],
        "final_D": float(np.mean(finals)), "final_D_std": float(np.std(finals)),
        "floor_D": float(np.mean(floors)), "floor_D_min": float(np.min(floors)),
        "iterations_run": [int(np.count_nonzero(np.isfinite(t["D"])) - 1) for t in traces],
        "ms_per_iter": 1e3 * float(np.mean([per_iter(t, "time") for t in traces])),
        "cpu_ms_per_iter": 1e3 * float(np.mean([per_iter(t, "cpu_time") for t in traces])),
        "grad_evals_per_iter": float(np.mean([np.nanmax(t["grad_evals"]) / max(1, np.count_nonzero(
            np.isfinite(t["grad_evals"])) - 1) for t in traces])),
    }
    for extra in ("fidelity",):
        if extra in traces[0] and len(traces[0][extra]):
            last = [t[extra][-1] for t in traces]
            out["final_" + extra], out[f"final_{extra}_std"] = float(np.mean(last)), float(np.std(last))
    for delta in deltas:
        out[f"to_D*+{delta:g}"] = reach_summary(traces, d_star + delta)
    # convergence speed to the run's own floor (a local minimum may lie above D*)
    own = [first_reach(t, np.nanmin(t["D"]) + deltas[-1]) for t in traces]
    out[f"to_own_floor+{deltas[-1]:g}"] = {
        field: float(np.mean([h[field] for h in own])) for field in ("iterations", "grad_evals", "wall_s", "cpu_s")}
    return out


def headline(summaries: dict, delta: float = 0.01, baseline: str = "adam") -> dict:
    """Time ratios (method / best-tuned baseline) to D* + delta; the target is ≤ 1/3.

    ``ratios_wall_s`` / ``ratios_cpu_s``: mean time of the seeds that got there;
    ``ratios_ert_cpu_s``: expected CPU time with restarts (``reach_summary``), the fair
    comparison when methods reach the threshold from different numbers of seeds.
    """
    key = f"to_D*+{delta:g}"
    if baseline not in summaries:
        return {}
    out = {"threshold": f"D*+{delta:g}", "target": 1 / 3}
    for clock in ("wall_s", "cpu_s", "ert_cpu_s"):
        base = summaries[baseline][key][clock]
        out[f"{baseline}_{clock}"] = base
        out[f"ratios_{clock}"] = {m: (s[key][clock] / base) if (s[key][clock] is not None and base) else None
                                  for m, s in summaries.items()}
    return out


def format_table(title: str, d_star: float, summaries: dict, deltas=(0.05, 0.01)) -> str:
    """Markdown table of the per-method summary."""
    head = ["method", "lr", "final D", "floor D", "ms/iter wall (cpu)"]
    for d in deltas:
        head += [f"iters→D*+{d:g}", f"grads→D*+{d:g}", f"wall s→D*+{d:g}", f"ERT cpu s→D*+{d:g}"]
    head += [f"cpu s→D*+{deltas[-1]:g}", f"iters→own floor+{deltas[-1]:g}", f"cpu s→own floor+{deltas[-1]:g}"]
    lines = [f"### {title}", "",
             f"D* (ansatz floor, lowest D of any long run) = {d_star:.4f}; means over the seeds that reached "
             "a threshold (count in brackets when not all did); 'own floor' = each run's lowest D "
             "(a local minimum may lie above D*); ERT = expected CPU time with restarts (failed seeds "
             "charged in full, divided by the successes); clocks count the optimizer steps only", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(x, spec):
        return "—" if x is None else format(x, spec)

    for method, s in summaries.items():
        row = [LABELS.get(method, method), f"{s['lr']:g}", f"{s['final_D']:.4f}±{s['final_D_std']:.4f}",
               f"{s['floor_D']:.4f}", f"{s['ms_per_iter']:.2f} ({s['cpu_ms_per_iter']:.2f})"]
        for d in deltas:
            r = s[f"to_D*+{d:g}"]
            tag = "" if r["reached"].split("/")[0] == r["reached"].split("/")[1] else f" ({r['reached']})"
            row += [fmt(r["iterations"], ".0f") + tag, fmt(r["grad_evals"], ".0f"), fmt(r["wall_s"], ".3f"),
                    fmt(r["ert_cpu_s"], ".3f")]
        own = s[f"to_own_floor+{deltas[-1]:g}"]
        row += [fmt(r["cpu_s"], ".3f"), f"{own['iterations']:.0f}", f"{own['cpu_s']:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots


def plot_study(runs: dict, path, title: str, *, ylabel: str = r"$D(\rho\,\|\,\sigma_\beta)$",
               d_star: float | None = None, extra: str | None = "fidelity", extra_label: str = "fidelity (squared)",
               floor: float = 1e-5):
    """D vs iteration and vs wall time, and the sparse report vs iteration, one panel each.

    Mean over seeds with the min–max envelope shaded (``experiments.plotting``); D on a
    log scale, clipped below at ``floor``; black lines at D*, D*+0.01 (dotted) and
    D*+0.05 (dashed). Wall time is the optimizer steps' own (compile and reporting
    excluded). Saved atomically as PNG.
    """
    import matplotlib.pyplot as plt

    from experiments import plotting
    from experiments.io import atomic_savefig

    def label(method):
        return f"{LABELS.get(method, method)} lr={runs[method][0]['lr']:g}"

    D = {label(m): [np.maximum(t["D"], floor) for t in ts] for m, ts in runs.items()}
    clocks = {label(m): [t["time"] for t in ts] for m, ts in runs.items()}
    cpu = {label(m): [t["cpu_time"] for t in ts] for m, ts in runs.items()}
    panels = [dict(curves=D, xlabel="iteration", ylabel=ylabel),
              dict(curves=D, xs=clocks, xlabel="wall time of optimizer steps [s]", ylabel=ylabel),
              dict(curves=D, xs=cpu, xlabel="CPU time of optimizer steps [s] (robust to machine load)",
                   ylabel=ylabel)]
    if extra and all(extra in t and len(t[extra]) for ts in runs.values() for t in ts):
        panels.append(dict(curves={label(m): [t[extra] for t in ts] for m, ts in runs.items()},
                           xs={label(m): [t["report_iters"].astype(float) for t in ts] for m, ts in runs.items()},
                           xlabel="iteration", ylabel=extra_label))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.4), squeeze=False)
    axes = axes.ravel()
    for i, (ax, panel) in enumerate(zip(axes, panels)):
        plotting.plot_curves(ax, spread="minmax", logy=i < 3, **panel)
        if i < 3 and d_star is not None:
            for delta, ls in ((0.0, "-"), (0.01, ":"), (0.05, "--")):
                ax.axhline(max(d_star + delta, floor), color="k", lw=0.8, ls=ls, alpha=0.6)
        if i in (1, 2):
            ax.set_xscale("log")
        if i in (0, 3):
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlim(left=0)
        if i > 0 and ax.get_legend() is not None:
            ax.get_legend().remove()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    note = "\nmean over seeds, band min–max (legend n = number of seeds)"
    if d_star is not None:
        note += f"; black: D* = {d_star:.3g} (solid), D*+0.01 (dotted), D*+0.05 (dashed)"
    fig.suptitle(title + note, fontsize=10)
    fig.tight_layout()
    return atomic_savefig(fig, path)


# ----------------------------------------------------------------------------- CLI


def study_parser(name: str, description: str):
    """argparse parser with the flags the three studies share (defaults None = from config)."""
    import argparse

    p = argparse.ArgumentParser(prog=f"qgeom {name}", description=description)
    p.add_argument("--full", action="store_true", help="the full study (long; see the module docstring)")
    p.add_argument("--config", help="JSON file of settings (keys as the flags, with underscores)")
    p.add_argument("--n", type=int, nargs="+", help="ring sizes")
    p.add_argument("--betas", type=float, nargs="+", help="inverse temperatures")
    p.add_argument("--seeds", type=int, nargs="+", help="random seeds of the initial parameters")
    p.add_argument("--steps", type=int, help="iterations of every long run")
    p.add_argument("--search-steps", type=int, help="iterations of every step-size search run")
    p.add_argument("--methods", nargs="+", help=f"subset of {sorted(GRIDS)}")
    p.add_argument("--ansatz", help="QHBM ansatz: cxL (order-2 parity + L RY/RZ + CNOT-ladder layers; default cx3), "
                   "heL (RX/RZ + CZ layers), cxLfull/heLfull (full-order parity), qaoaL")
    p.add_argument("--max-cpu", type=float, help="cap on each run's optimizer CPU seconds")
    p.add_argument("--out", help="output directory (default results/<study>)")
    p.add_argument("--fresh", action="store_true", help="ignore and clear the checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def resolve_config(args, default: dict, full: dict) -> dict:
    """Defaults (short or ``--full``), then the ``--config`` file, then explicit flags."""
    config = dict(full if args.full else default)
    if args.config:
        with open(args.config) as fh:
            extra = json.load(fh)
        unknown = set(extra) - set(config)
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(config)}")
        config.update(extra)
    for key in config:
        value = getattr(args, key, None)
        if value is not None:
            config[key] = value
    if "methods" in config:
        config["methods"] = check_methods(config["methods"])
    for key in ("steps", "search_steps"):
        if key in config and int(config[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {config[key]}")
    if "seeds" in config and not config["seeds"]:
        raise ValueError("need at least one seed")
    return config


def write_summary(outdir, summary: dict, tables: list[str]) -> dict:
    """Join ``tables`` into ``summary["table"]``; write summary.json and summary.md atomically."""
    summary["table"] = "\n\n".join(tables)
    atomic_write_json(outdir / "summary.json", summary)
    atomic_write_text(outdir / "summary.md", summary["table"] + "\n")
    return summary
