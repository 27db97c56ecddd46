"""The quantum studies' protocol (``gibbs``, ``learn``): equal-budget step-size search, long runs,
time-to-threshold summaries against the ansatz's floor D*, tables and curve plots.

* search: every method's grid (``QUANTUM``; the same size for every method) run for
  ``search_steps`` iterations from one seed; winner = lowest mean D over the last tenth;
* long runs: every method at its winner for every seed;
* each (problem, method, settings, step size, seed, steps) result is a resumable cell;
* with more than one device (or ``parallel="on"``) each method's grid, and its seeds, run as
  one vmapped batch split over the devices (``quantum_methods.run_cells``): the same numbers to
  rounding, clocks amortized over the batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.harness import Cells, cell_key
from experiments.harness.analysis import first_reach, per_iteration, reach_summary
from experiments.harness.report import fmt, markdown_table, reached_tag
from experiments.harness.store import atomic_write_json, atomic_write_text
from experiments.harness.tune import tune
from experiments.quantum_methods import QUANTUM, run_cell, run_cells, search_score
from experiments.quantum_problems import Problem


def check_methods(methods) -> list[str]:
    """Validated method names (``QUANTUM``)."""
    return QUANTUM.select(methods)


def _key(problem: Problem, method: str, lr, seed: int, steps: int, max_cpu, parallel: bool) -> str:
    fields = dict(problem=problem.key, method=method, settings=QUANTUM[method].settings, lr=lr, seed=seed,
                  steps=steps, max_cpu=max_cpu)
    return cell_key(**fields, batch="vmap") if parallel else cell_key(**fields)  # batch clocks are amortized


def _cells(cells: Cells, problem: Problem, method: str, pairs, steps: int, max_cpu, progress, tags,
           parallel: bool) -> list[dict]:
    """One trace per (lr, seed) of ``pairs``, each a resumable cell: serially (``run_cell``) or,
    with ``parallel``, the whole group as one vmapped batch over the devices (``run_cells``),
    recomputed whole when any of its cells is missing so a resumed study gets the same numbers."""
    keys = [_key(problem, method, lr, seed, steps, max_cpu, parallel) for lr, seed in pairs]
    batch = None
    if parallel and any(k not in cells.done for k in keys):
        batch = run_cells(problem, method, [lr for lr, _ in pairs], [s for _, s in pairs], steps, max_cpu=max_cpu)
    out = []
    for i, (key, (lr, seed), tag) in enumerate(zip(keys, pairs, tags)):
        if progress is not None:
            progress.set_postfix_str(tag)
        out.append(cells.run(key, (lambda i=i: batch[i]) if parallel else
                             (lambda lr=lr, seed=seed: run_cell(problem, method, lr, seed, steps, max_cpu=max_cpu))))
        if progress is not None:
            progress.update()
    return out


def step_size_search(cells: Cells, problem: Problem, methods, short: bool, seed: int, steps: int, progress=None,
                     max_cpu=None, parallel: bool = False) -> dict:
    """Every grid value of every method for ``steps`` iterations from ``seed``:
    ``{method: {"grid": [...], "scores": [...], "winner": lr}}``. ``parallel``: each method's
    grid as one batch split over the devices (``_cells``)."""
    out = {}
    for m in methods:
        grid = list(QUANTUM[m].grid_for(short))
        traces = _cells(cells, problem, m, [(lr, seed) for lr in grid], steps, max_cpu, progress,
                        [f"search {m} lr={lr:g}" for lr in grid], parallel)
        res = tune(grid, lambda lr: traces[grid.index(lr)], search_score)
        out[m] = {"grid": res["grid"], "scores": res["scores"], "winner": res["winner"]}
    return out


def long_runs(cells: Cells, problem: Problem, methods, winners: dict, seeds, steps: int, progress=None,
              max_cpu=None, parallel: bool = False) -> dict:
    """Every method at its winning step size, every seed: ``{method: [trace per seed]}``;
    ``parallel``: each method's seeds as one batch split over the devices."""
    return {m: _cells(cells, problem, m, [(winners[m], s) for s in seeds], steps, max_cpu, progress,
                      [f"{m} seed={s}" for s in seeds], parallel) for m in methods}


def use_parallel(config: dict) -> bool:
    """``config["parallel"]``: "on", "off", or "auto" (default) = on when JAX sees more than one
    device (several GPUs, or ``XLA_FLAGS=--xla_force_host_platform_device_count=k`` on a CPU)."""
    import jax

    mode = config.get("parallel", "auto")
    return mode == "on" or (mode == "auto" and jax.device_count() > 1)


def method_summary(traces: list[dict], d_star: float, deltas=(0.05, 0.01)) -> dict:
    """Final and floor D, cost per iteration, cost to D* + δ (``reach_summary``) and to each
    run's own floor + the last δ, over the seeds of one method."""
    finals = [t["D"][np.nonzero(np.isfinite(t["D"]))[0][-1]] for t in traces]
    floors = [np.nanmin(t["D"]) for t in traces]
    out = {
        "lr": traces[0]["lr"],
        "seeds": [t["seed"] for t in traces],
        "status": [t["status"] for t in traces],
        "final_D": float(np.mean(finals)), "final_D_std": float(np.std(finals)),
        "floor_D": float(np.mean(floors)), "floor_D_min": float(np.min(floors)),
        "iterations_run": [int(np.count_nonzero(np.isfinite(t["D"])) - 1) for t in traces],
        "ms_per_iter": 1e3 * float(np.mean([per_iteration(t, "time") for t in traces])),
        "cpu_ms_per_iter": 1e3 * float(np.mean([per_iteration(t, "cpu_time") for t in traces])),
        "grad_evals_per_iter": float(np.mean([per_iteration(t, "grad_evals") for t in traces])),
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
             ]
    rows = []
    for method, s in summaries.items():
        row = [QUANTUM.label(method), f"{s['lr']:g}", f"{s['final_D']:.4f}±{s['final_D_std']:.4f}",
               f"{s['floor_D']:.4f}", f"{s['ms_per_iter']:.2f} ({s['cpu_ms_per_iter']:.2f})"]
        for d in deltas:
            r = s[f"to_D*+{d:g}"]
            row += [fmt(r["iterations"], ".0f") + reached_tag(r["reached"]), fmt(r["grad_evals"], ".0f"), fmt(r["wall_s"], ".3f"),
                    fmt(r["ert_cpu_s"], ".3f")]
        own = s[f"to_own_floor+{deltas[-1]:g}"]
        row += [fmt(r["cpu_s"], ".3f"), f"{own['iterations']:.0f}", f"{own['cpu_s']:.3f}"]
        rows.append(row)
    return "\n".join(lines + markdown_table(head, rows))


def plot_study(runs: dict, path, title: str, *, ylabel: str = r"$D(\rho\,\|\,\sigma_\beta)$",
               d_star: float | None = None, extra: str | None = "fidelity", extra_label: str = "fidelity (squared)",
               floor: float = 1e-5):
    """D vs iteration and vs wall time, and the sparse report vs iteration, one panel each.

    Mean over seeds with the min–max envelope shaded (``experiments.harness.report``); D on a
    log scale, clipped below at ``floor``; black lines at D*, D*+0.01 (dotted) and
    D*+0.05 (dashed). Wall time is the optimizer steps' own (compile and reporting
    excluded). Saved atomically as PNG.
    """
    import matplotlib.pyplot as plt

    from experiments.harness import report
    from experiments.harness.store import atomic_savefig

    def label(method):
        return f"{QUANTUM.label(method)} lr={runs[method][0]['lr']:g}"

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
        report.plot_curves(ax, spread="minmax", logy=i < 3, **panel)
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


def write_summary(outdir, summary: dict, tables: list[str]) -> dict:
    """Join ``tables`` into ``summary["table"]``; write summary.json and summary.md atomically."""
    summary["table"] = "\n\n".join(tables)
    atomic_write_json(outdir / "summary.json", summary)
    atomic_write_text(outdir / "summary.md", summary["table"] + "\n")
    return summary


def flags(parser) -> None:
    """The quantum studies' common flags (config keys as destinations, default None)."""
    parser.add_argument("--n", type=int, nargs="+", help="ring sizes")
    parser.add_argument("--betas", type=float, nargs="+", help="inverse temperatures")
    parser.add_argument("--seeds", type=int, nargs="+", help="random seeds of the initial parameters")
    parser.add_argument("--steps", type=int, help="iterations of every long run")
    parser.add_argument("--search-steps", type=int, help="iterations of every step-size search run")
    parser.add_argument("--ansatz", help="QHBM ansatz: cxL (order-2 parity + L RY/RZ + CNOT-ladder layers; default "
                        "cx3), heL (RX/RZ + CZ layers), cxLfull/heLfull (full-order parity), qaoaL")
    parser.add_argument("--max-cpu", type=float, help="cap on each run's optimizer CPU seconds")


def parallel_info(parallel: bool) -> dict:
    """What the summary records: batched or not, over how many devices, and how its clocks read."""
    import jax

    return {"used": parallel, "devices": jax.device_count() if parallel else 1,
            "clocks": "the batch's, divided evenly over its runs and steps" if parallel else "each run's own"}


def parallel_flag(parser) -> None:
    """``--parallel {auto,on,off}`` (``use_parallel``)."""
    parser.add_argument("--parallel", choices=["auto", "on", "off"],
                        help="batch each method's step-size grid and seeds as one vmapped program split over the "
                        "devices: auto (default) = when more than one device is present")


def prepare(config: dict, outdir) -> tuple[dict, Path]:
    """The validated config (``check_config``) and the output folder, created."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    return check_config(config), outdir


def check_config(config: dict) -> dict:
    """Validated config: known methods, step counts >= 1, at least one seed."""
    config = dict(config)
    if "methods" in config:
        config["methods"] = check_methods(config["methods"])
    for key in ("steps", "search_steps"):
        if key in config and int(config[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {config[key]}")
    if "seeds" in config and not config["seeds"]:
        raise ValueError("need at least one seed")
    if config.get("parallel", "auto") not in ("auto", "on", "off"):
        raise ValueError(f"parallel must be 'auto', 'on' or 'off', got {config['parallel']!r}")
    return config
