"""The quantum studies' methods (one ``MethodSpec`` each) and one run of a method (``run_cell``).

Every optimizer is a ``qgeom.optimize`` (or optax) transformation built by its spec at a
step size; ``method(problem, name, lr)`` adapts it to the harness's ``Method`` with one
compile per (problem family, method): the step size is an injected hyperparameter
(``optax.inject_hyperparams``) and the problem's data an argument of the jitted step, so
the whole step-size grid and every problem of the family share it.

Grids: the same number of values for every method (equal search budget); centres follow
the usual scales (Adam ~1e-2, plain gradient ~0.1–1, natural gradient and mirror descent
~0.1–1 — the authors' η = 0.1 —, QNG ~0.01–0.1). Settings:

* ``qpngd`` — exact BKM natural gradient with the authors' damping (shift 1 when
  λ_min(G) ≤ 1, ridge 1e-2), metric refreshed every step;
* ``qpngd-k`` — amortized curvature: BKM metric refreshed every 20 steps, no shift, ridge
  starting at 1 and adapted Levenberg–Marquardt style from the reduction ratio within
  [1e-3, 1e3], steps bounded in the metric, δᵀGδ ≤ 2 (chosen on n = 6, cx3, 4 seeds among
  k ∈ {10, 20, 40, 50}, δᵀGδ ≤ {0.2, 0.5, 2, ∞});
* ``qpmd`` — mirror descent, α = 0.5, 10 inner Adam steps at 0.02 on the frozen modular
  Hamiltonian;
* ``qng`` — Fubini–Study QNG on the circuit part, ridge 1e-2; ``adam``, ``gd`` — optax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import qgeom.optimize as opt
from experiments.harness import Method, MethodSpec, Registry, train
from experiments.quantum_problems import Problem, n_params

QUANTUM = Registry(
    MethodSpec("qpmd", "QPMD", lambda lr, model, **kw: opt.qpmd(model, lr, **kw), grid=(0.1, 0.3, 1.0, 3.0),
               short_grid=(0.3, 1.0, 3.0), settings=dict(alpha=0.5, inner_steps=10, inner_lr=0.02)),
    MethodSpec("qpngd", "QPNGD (BKM)", lambda lr, model, **kw: opt.qpngd(model, lr, **kw),
               grid=(0.03, 0.1, 0.3, 1.0), short_grid=(0.1, 0.3, 1.0)),
    MethodSpec("qpngd-k", "QPNGD amortized", lambda lr, model, **kw: opt.qpngd(model, lr, **kw),
               grid=(0.03, 0.1, 0.3, 1.0), short_grid=(0.1, 0.3, 1.0),
               settings=dict(refresh_every=20, adapt_damping=True, shift=0.0, damping=1.0,
                             damping_bounds=(1e-3, 1e3), max_norm=2.0)),
    MethodSpec("adam", "Adam", lambda lr: opt.adam(lr), grid=(3e-3, 1e-2, 3e-2, 1e-1), short_grid=(1e-2, 3e-2, 1e-1)),
    MethodSpec("gd", "GD", lambda lr: opt.gd(lr), grid=(0.03, 0.1, 0.3, 1.0), short_grid=(0.1, 0.3, 1.0)),
    MethodSpec("qng", "QNG (Fubini–Study)", lambda lr, model, **kw: opt.qng(model, lr, **kw),
               grid=(0.01, 0.03, 0.1, 0.3), short_grid=(0.03, 0.1, 0.3)),
)


def optimizer(model, name: str, lr):
    """The transformation of method ``name`` (its spec's settings) at step size ``lr``."""
    return QUANTUM[name].make(lr, model=model)


_COMPILED: dict = {}


def _compiled(problem: Problem, name: str):
    """(transformation, jitted step, gradient evaluations per step), one per (family, method)."""
    from qgeom.optimize import make_step

    cache_key = (problem.family, name)
    if cache_key not in _COMPILED:
        transform = optax.inject_hyperparams(lambda learning_rate: optimizer(problem.model, name, learning_rate))(
            learning_rate=1.0)
        extra = int(getattr(optimizer(problem.model, name, 1.0).update, "extra_grad_evals", 0))
        _COMPILED[cache_key] = transform, make_step(problem.loss_fn, transform), 1 + extra
    return _COMPILED[cache_key]


def method(problem: Problem, name: str, lr: float) -> Method:
    """Method ``name`` at step size ``lr`` on ``problem`` in the harness's shape (state =
    (params, optimizer state))."""
    QUANTUM[name]  # a ValueError naming the known methods for an unknown one
    if not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"step size must be a finite number > 0, got {lr}")
    transform, jitted, evals = _compiled(problem, name)

    def init(params, key, batch_at):
        opt_state = transform.init(params)
        opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, dtype=jnp.float64)
        return params, opt_state

    def step(state, data, key, t):
        new, opt_state, value, ok = jitted(*state, data)
        return (new, opt_state), {"loss": value, "ok": ok, "grad_evals": evals}

    return Method(init, step, warmup_steps=1)


def report_iterations(steps: int, points: int = 25) -> np.ndarray:
    """Sparse, log-spaced iterations (0 and ``steps`` included) for the costly reports."""
    its = np.unique(np.round(np.geomspace(1, steps + 1, points) - 1).astype(int))
    return np.union1d(its, [0, steps])


def run_cell(problem: Problem, name: str, lr: float, seed: int, steps: int, *, max_cpu: float | None = None,
             report_points: int = 25, init_params=None) -> dict:
    """Train ``problem`` with method ``name`` at ``lr`` for ``steps`` iterations from seed ``seed``.

    Returns the trace: ``D`` (steps+1 divergences, NaN after a stop), ``time`` / ``cpu_time``
    (cumulative wall / process-CPU seconds of the optimizer steps only), ``grad_evals``
    (cumulative), ``report_iters`` and the sparse reports (``fidelity``), ``status`` ("ok",
    "nan at step k: ..." or "cpu limit at step k": ``max_cpu`` caps the steps' CPU seconds)
    and the last finite ``params`` (numpy). The start is ``init_params`` if given, else
    ``model.init(PRNGKey(seed))``.
    """
    m = method(problem, name, lr)
    params0 = problem.model.init(jax.random.PRNGKey(seed)) if init_params is None else init_params
    reports = set(report_iterations(steps, report_points).tolist())
    names = list(problem.evaluate(params0)) if problem.evaluate is not None else []
    exact_d = problem.divergence is None

    def evaluate(params, t):  # D here only when it is not the step's own loss; reports at sparse steps
        out = {"D": np.nan if exact_d else _divergence(problem, params)}
        reported = problem.evaluate(params) if t in reports and names else {}
        return {**out, **{k: reported.get(k, np.nan) for k in names}}

    def cpu_limit(row):
        return None if max_cpu is None or row["cpu_time"] <= max_cpu else f"cpu limit at step {row['step']}"

    every = not exact_d or max_cpu is not None
    run = train(m, params0, steps, batch_at=lambda t: problem.data, evaluate=evaluate, stop=cpu_limit,
                eval_at=(lambda t: True) if every else reports.__contains__)
    ev, n = run["evals"], len(run["loss"])
    D, wall, cpu, evals = (np.full(steps + 1, np.nan) for _ in range(4))
    wall[0] = cpu[0] = evals[0] = 0.0
    if exact_d:
        D[:n] = np.asarray(run["loss"], dtype=float) + problem.offset
    for t, d in zip(ev["step"], ev["D"]):
        D[t] = d if np.isfinite(d) else D[t]
    if not np.isfinite(D[run["t"]]):  # the end point (after the last step, a stop or a step back)
        D[run["t"]] = _divergence(problem, run["params"])
    wall[1:n + 1], cpu[1:n + 1], evals[1:n + 1] = run["wall"], run["cpu"], run["grad_evals"]
    last = int(np.max(np.nonzero(np.isfinite(D))[0], initial=0))
    for a in (D, wall, cpu, evals):
        a[last + 1:] = np.nan
    status = "ok" if run["status"] == "completed" else run["status"]
    if run["diverged"]:
        status = "nan at step " + run["status"].removeprefix("stopped at step ")
    rows = [i for i in range(len(ev["step"])) if names and np.isfinite(ev[names[0]][i])]
    rep_its, rep = [ev["step"][i] for i in rows], {k: [ev[k][i] for i in rows] for k in names}
    if names and (not rep_its or rep_its[-1] != last):  # report the end point
        rep_its.append(last)
        for k, v in problem.evaluate(run["params"]).items():
            rep[k].append(float(v))
    inner = getattr(run["state"][1], "inner_state", None)
    return {"method": name, "lr": float(lr), "seed": int(seed), "steps": int(steps),
            "D": D, "time": wall, "cpu_time": cpu, "grad_evals": evals,
            "metric_evals": int(getattr(inner, "refreshes", 0)),
            "report_iters": np.asarray(rep_its, dtype=int), **{k: np.asarray(v) for k, v in rep.items()},
            "status": status,
            "params": run["params"]}


def _divergence(problem: Problem, params) -> float:
    if problem.divergence is not None:
        return float(problem.divergence(params))
    return float(problem.loss(params)) + problem.offset


def search_score(trace: dict) -> float:
    """Lowest-is-best score of a search run: mean D over the last tenth (inf if it failed)."""
    if trace["status"].startswith("nan"):
        return float("inf")
    D = trace["D"][np.isfinite(trace["D"])]
    tail = max(1, len(D) // 10)
    return float(np.mean(D[-tail:]))


_BATCHED: dict = {}


def _batched_run(problem: Problem, name: str, steps: int):
    """``run(config, data)`` for ``qgeom.optimize.sweep``: ``steps`` steps of method ``name``
    from ``model.init(PRNGKey(config["seed"]))`` at step size ``config["lr"]`` under
    ``lax.scan``, the same jitted step as ``method`` and ``run_steps``' non-finite policy (the
    first bad step freezes the run at its input, or at the step before when the input's loss
    is not finite). Per step: the input's parameters, loss, ``ok``, the metric refresh count
    and (when the problem has one) the side divergence; and the end point."""
    with_div = problem.divergence is not None  # it closes over the problem's target: one compile each
    key = (problem.key if with_div else problem.family, name, int(steps))
    if key in _BATCHED:
        return _BATCHED[key]
    transform, jitted, _ = _compiled(problem, name)

    def refreshes(state):
        return jnp.asarray(getattr(getattr(state, "inner_state", None), "refreshes", 0))

    def run(config, data):
        p0 = problem.model.init(jax.random.PRNGKey(config["seed"]))
        s0 = transform.init(p0)
        s0.hyperparams["learning_rate"] = jnp.asarray(config["lr"], dtype=jnp.float64)

        def body(carry, _):
            p, s, pp, ps, live = carry
            new, s2, value, ok = jitted(p, s, data)
            back = live & ~ok & ~jnp.isfinite(value)  # the input itself is bad: the step before
            go = live & ok

            def pick(cond, a, b):
                return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)

            end_p, end_s = pick(back, pp, p), pick(back, ps, s)
            out = {"params": p, "loss": value, "ok": ok, "refreshes": refreshes(s)}
            if with_div:
                out["D"] = problem.divergence(p)
            return (pick(go, new, end_p), pick(go, s2, end_s), pick(go, p, pp), pick(go, s, ps), go), out

        (p, s, *_), outs = jax.lax.scan(body, (p0, s0, p0, s0, jnp.asarray(True)), None, length=int(steps))
        return {**outs, "end": p, "end_refreshes": refreshes(s)}

    _BATCHED[key] = run
    return run


def run_cells(problem: Problem, name: str, lrs, seeds, steps: int, *, max_cpu: float | None = None,
              report_points: int = 25, devices=None) -> list[dict]:
    """``run_cell(problem, name, lr, seed, steps)`` for every pair of ``lrs`` × ``seeds`` (equal
    lengths) as one vmapped program split over ``devices`` (``qgeom.optimize.sweep``).

    The iterates are those of ``run_cell`` to rounding (the same jitted step, vmapped); D,
    the reports, ``status`` and ``params`` are built as ``run_cell`` builds them. Clocks are
    the batch's, amortized: its execution wall / process-CPU seconds (compile excluded)
    divided evenly over its runs and steps (``batch`` holds the totals), so time-to-threshold
    compares methods run the same way, not with serial runs. ``max_cpu`` ends a run where its
    amortized CPU passes it (every run computes all steps first).
    """
    from qgeom.optimize.sweep import sweep

    QUANTUM[name]
    lrs, seeds = np.asarray(lrs, dtype=float), np.asarray(seeds, dtype=int)
    if lrs.shape != seeds.shape or lrs.ndim != 1 or not lrs.size:
        raise ValueError(f"lrs and seeds must be equal-length non-empty lists, got {lrs} and {seeds}")
    if not np.all(np.isfinite(lrs) & (lrs > 0)):
        raise ValueError(f"step sizes must be finite numbers > 0, got {lrs}")
    n_par = n_params(problem.model)
    if int(steps) * lrs.size * n_par * 8 > 2**30:
        raise ValueError(f"{lrs.size} runs × {steps} steps × {n_par} parameters exceed the 1 GiB of iterates a "
                         "batch keeps; run them serially (--parallel off)")
    res = sweep(_batched_run(problem, name, steps), {"seed": seeds, "lr": lrs}, devices, shared=problem.data)
    timing, evals = res["timing"], _compiled(problem, name)[2]
    c_wall, c_cpu = (timing[k] / (lrs.size * steps) for k in ("wall_s", "cpu_s"))
    reports = report_iterations(steps, report_points).tolist()
    names = list(problem.evaluate(problem.model.init(jax.random.PRNGKey(0)))) if problem.evaluate else []
    return [_trace(problem, name, res, i, lr, seed, steps, evals, (c_wall, c_cpu), max_cpu, reports, names, timing)
            for i, (lr, seed) in enumerate(zip(lrs.tolist(), seeds.tolist()))]


def _trace(problem, name, res, i, lr, seed, steps, evals, costs, max_cpu, reports, names, timing) -> dict:
    """Run ``i`` of a ``run_cells`` batch in ``run_cell``'s trace shape."""
    loss, ok = res["loss"][i], res["ok"][i]

    def params_at(t):
        return jax.tree.map(lambda a: a[i, t], res["params"]) if t < steps else jax.tree.map(lambda a: a[i],
                                                                                                res["end"])

    bad = np.flatnonzero(~ok)
    n = int(bad[0]) if bad.size else steps  # steps gone on from (losses recorded)
    done, status, end = n, "ok", jax.tree.map(lambda a: a[i], res["end"])
    if bad.size:
        value = float(loss[n])
        done = n - 1 if not np.isfinite(value) and n > 0 else n
        status = f"nan at step {n}: non-finite loss, gradient or update (loss = {value})"
    cpu_clock = costs[1] * np.arange(1, n + 1)
    over = np.flatnonzero(cpu_clock > max_cpu) if max_cpu is not None else []
    if len(over):
        n = done = int(over[0]) + 1
        status, end = f"cpu limit at step {n}", params_at(n)
    D, wall, cpu, grad_evals = (np.full(steps + 1, np.nan) for _ in range(4))
    wall[:n + 1], cpu[:n + 1], grad_evals[:n + 1] = (c * np.arange(n + 1) for c in (*costs, evals))
    if problem.divergence is None:
        D[:n] = loss[:n] + problem.offset
    else:
        D[:n] = res["D"][i, :n]
        D[n] = res["D"][i, n] if n < steps else np.nan
    if not np.isfinite(D[done]):
        D[done] = _divergence(problem, end)
    last = int(np.max(np.nonzero(np.isfinite(D))[0], initial=0))
    for a in (D, wall, cpu, grad_evals):
        a[last + 1:] = np.nan
    rows = [t for t in reports if t <= n] + ([done] if status.startswith("nan") and done in reports else [])
    rep = {k: [] for k in names}
    for t in rows if names else ():
        for k, v in problem.evaluate(end if t == done else params_at(t)).items():
            rep[k].append(float(v))
    if names and (not rows or rows[-1] != last):
        rows.append(last)
        for k, v in problem.evaluate(end).items():
            rep[k].append(float(v))
    refreshes = res["refreshes"][i, done] if done < steps else res["end_refreshes"][i]
    return {"method": name, "lr": float(lr), "seed": int(seed), "steps": int(steps),
            "D": D, "time": wall, "cpu_time": cpu, "grad_evals": grad_evals, "metric_evals": int(refreshes),
            "report_iters": np.asarray(rows if names else [], dtype=int), **{k: np.asarray(v) for k, v in rep.items()},
            "status": status, "params": jax.tree.map(np.asarray, end),
            "batch": {k: timing[k] for k in ("runs", "devices", "wall_s", "cpu_s", "compile_s")}}
