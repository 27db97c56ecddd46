"""Geometric-locality sequences: warm start from the previous optimum versus a fresh random start.

Runs ``qgeom.optimize.sequence`` (``imaginary_time``, ``real_time``) for every method and
seed, warm and cold, and summarises the points:

* ``imaginary``: VQT of the TFIM ring along a β sweep (default 0.5, 1.083, 1.667, 2.25);
  D(ρ‖σ_{β_k}) exact at every step.
* ``real``: σ_0 = σ_β (β = 1), fitted once by QMHL (the warm chain's start); point k fits
  σ_k = V ρ_{k−1} V† by QMHL, V = e^{−iΔt H_zz} e^{−iΔt H_x} one Trotter step and ρ_{k−1}
  the chain's previous trained model; D(σ_k‖ρ). The fidelity is reported with the
  point's target and with the exactly evolved state V^k σ_0 V^{†k}.

Each point runs ``steps`` iterations. The tolerance at point k is D*_k + ``tol``, D*_k the
lowest D any run (warm or cold, any seed) reached there; the summary gives the steps to
reach it and the final fidelity (squared) at every point. One resumable cell per
(sequence, method, seed, warm/cold) chain.

    qgeom sequence                                  # short: n = 4, Adam + QPNGD, 1 seed
    qgeom sequence --methods adam qpngd qpmd --seeds 0 1 2 --steps 400
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from tqdm.auto import tqdm

from experiments import quantum_study as qs
from experiments.harness import Cells, Checkpoint, cell_key
from experiments.harness.analysis import first_below
from experiments.harness.cli import Study
from experiments.harness.store import atomic_savefig
from experiments.quantum_methods import QUANTUM, optimizer
from experiments.quantum_problems import (
    make_model,
    ring,
)

# Step sizes: the winners of the gibbs study's step-size search at n = 4, β = 1, ansatz cx3
# (`qgeom gibbs --n 4 --betas 1 --seeds 0 --steps 100 --search-steps 100 --grid full`).
STEP_SIZES = {"adam": 0.1, "gd": 0.3, "qpngd": 1.0, "qpngd-k": 1.0, "qpmd": 0.3, "qng": 0.1}
DEFAULT = dict(n=[4], betas=[0.5, 1.083, 1.667, 2.25], seeds=[0], steps=100, methods=["adam", "qpngd"],
               ansatz="cx3", kinds=["imaginary", "real"], trotter_steps=4, dt=0.1, real_beta=1.0, tol=0.01)
FULL = dict(DEFAULT, seeds=[0, 1, 2], steps=400, methods=["adam", "qpngd", "qpngd-k", "qpmd"], trotter_steps=6)


def _points(result) -> list[dict]:
    """``SequencePoint``s as plain dicts (numpy parameters) for the checkpoint."""
    return [{"label": float(p.label), "params": jax.tree_util.tree_map(np.asarray, p.params),
             "D": np.asarray(p.divergence, dtype=float), "fidelity": float(p.fidelity),
             "exact_fidelity": None if p.exact_fidelity is None else float(p.exact_fidelity),
             "status": p.status} for p in result]


@functools.cache
def _setup(n: int, ansatz: str, method: str):
    """Model and optimizer shared by every chain, seed and point of (n, ansatz, method):
    ``qgeom.optimize.sequence`` compiles its step once per (model, optimizer object)."""
    model = make_model(n, ansatz)
    return model, optimizer(model, method, STEP_SIZES[method])


def run_chain(cells, kind: str, n: int, method: str, seed: int, config: dict, start: str) -> list[dict]:
    """One sequence (``start`` = "warm" or "cold") as a list of points, from the checkpoint if done."""
    from qgeom.optimize import sequence
    from qgeom.quantum import gibbs_state, hamiltonian_matrix, tfim

    lr, steps = STEP_SIZES[method], config["steps"]
    model, opt = _setup(n, config["ansatz"], method)
    H = tfim(ring(n))
    key = jax.random.PRNGKey(seed)
    common = dict(kind=kind, n=n, ansatz=config["ansatz"], method=method, settings=QUANTUM[method].settings,
                  lr=lr, seed=seed, steps=steps)
    if kind == "imaginary":
        cell = cell_key(**common, start=start, betas=config["betas"])
        return cells.run(cell, lambda: _points(sequence.imaginary_time(
            model, H, config["betas"], opt, steps, tol=config["tol"], warm=start == "warm", key=key)))
    sigma0 = gibbs_state(hamiltonian_matrix(H), config["real_beta"])
    # σ_0 fitted once by QMHL: the warm chain's first start
    def fit_sigma0():
        res = sequence.fit_qmhl(model, sigma0, opt, steps, model.init(key))
        return [{"params": jax.tree_util.tree_map(np.asarray, res.params)}]

    first = cells.run(cell_key(**common, start="sigma0", real_beta=config["real_beta"]), fit_sigma0)
    cell = cell_key(**common, start=start, real_beta=config["real_beta"], dt=config["dt"],
                       trotter_steps=config["trotter_steps"])
    return cells.run(cell, lambda: _points(sequence.real_time(
        model, tfim(ring(n), J=1.0, h=0.0), tfim(ring(n), J=0.0, h=1.0), config["dt"],
        config["trotter_steps"], opt, steps, sigma0, tol=config["tol"], warm=start == "warm", key=key,
        initial=first[0]["params"])))


def summarize(chains: list[dict], tol: float, shared_targets: bool = True) -> dict:
    """Per point: D*_k, steps to D*_k + tol, D at start, final D and fidelities, warm and cold
    (mean over seeds; ``chains`` = [{"warm": points, "cold": points}] per seed).

    With ``shared_targets`` (imaginary time) D*_k is the lowest D of any run at point k;
    otherwise (real time: each chain's targets come from its own trained models) warm and
    cold get their own D*_k, and the fidelity with the exact evolution compares them.
    """
    points = [p["label"] for p in chains[0]["warm"]]
    rows = []
    for k, point in enumerate(points):
        floors = {s: min(float(np.nanmin(c[s][k]["D"])) for c in chains) for s in ("warm", "cold")}
        d_star = min(floors.values())
        row = {"point": point, "D_star": d_star}
        for start in ("warm", "cold"):
            threshold = (d_star if shared_targets else floors[start]) + tol
            steps = [first_below(c[start][k]["D"], threshold) for c in chains]
            ok = [s for s in steps if s is not None]
            row[start] = {
                "D_star": threshold - tol,
                "steps_to_tol": float(np.mean(ok)) if ok else None, "reached": f"{len(ok)}/{len(steps)}",
                "D_at_start": float(np.mean([c[start][k]["D"][0] for c in chains])),
                "final_D": float(np.mean([c[start][k]["D"][-1] for c in chains])),
                "final_fidelity": float(np.mean([c[start][k]["fidelity"] for c in chains])),
                "stopped": [s for c in chains if (s := c[start][k].get("status", "completed")) != "completed"]}
            if chains[0][start][k]["exact_fidelity"] is not None:
                row[start]["exact_fidelity"] = float(np.mean([c[start][k]["exact_fidelity"] for c in chains]))
        rows.append(row)
    return {"points": points, "rows": rows}


def format_table(title: str, summary: dict, tol: float) -> str:
    exact = "exact_fidelity" in summary["rows"][0]["warm"]
    cols = ["D at start", "steps to tol", "final F"] + (["F vs exact evolution"] if exact else [])
    head = ["point", "D*_k"] + [f"{s}: {c}" for s in ("warm", "cold") for c in cols]
    note = ("D*_k: lowest D of any run at point k" if not exact else
            "D*_k: lowest D of the warm (cold) runs at point k — their targets differ, as each comes from the "
            "chain's own previous model; F vs exact evolution compares them")
    stopped = sorted({m for row in summary["rows"] for s in ("warm", "cold") for m in row[s]["stopped"]})
    if stopped:
        note += "; † a fit stopped early on a non-finite value: " + "; ".join(stopped)
    lines = [f"### {title}", "", f"tolerance: D ≤ D*_k + {tol:g} ({note})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def steps(r):
        s = "—" if r["steps_to_tol"] is None else f"{r['steps_to_tol']:.0f}"
        return s if r["reached"].split("/")[0] == r["reached"].split("/")[1] else f"{s} ({r['reached']})"

    for row in summary["rows"]:
        cells = [f"{row['point']:g}", f"{row['D_star']:.4f}"]
        for start in ("warm", "cold"):
            r = row[start]
            cells += [f"{r['D_at_start']:.4f}", steps(r), f"{r['final_fidelity']:.4f}" + ("†" if r["stopped"] else "")]
            if exact:
                cells.append(f"{r['exact_fidelity']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sequence(summaries: dict, path, title: str, xlabel: str, budget: int):
    """Steps to tolerance and final fidelity per point, warm (solid) vs cold (dashed), per method.
    A point whose tolerance was not reached is drawn at the step budget with an open marker."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (method, s) in enumerate(summaries.items()):
        x = np.asarray(s["points"], dtype=float)
        for start, ls, marker in (("warm", "-", "o"), ("cold", "--", "s")):
            steps = np.array([budget if r[start]["steps_to_tol"] is None else r[start]["steps_to_tol"]
                              for r in s["rows"]], dtype=float)
            missed = np.array([r[start]["steps_to_tol"] is None for r in s["rows"]])
            fid = [r[start]["final_fidelity"] for r in s["rows"]]
            label = f"{QUANTUM.label(method)}, {start} start"
            axes[0].plot(x, steps, ls=ls, marker=marker, color=f"C{i}", label=label)
            axes[0].plot(x[missed], steps[missed], ls="none", marker=marker, ms=9, mfc="white", color=f"C{i}")
            axes[1].plot(x, fid, ls=ls, marker=marker, color=f"C{i}", label=label)
    axes[0].set(xlabel=xlabel, ylabel="iterations to D ≤ D*_k + tol")
    axes[0].set_yscale("symlog", linthresh=1)
    axes[0].axhline(budget, color="k", lw=0.8, ls=":")
    axes[1].set(xlabel=xlabel, ylabel="final fidelity (squared)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(title + f"\nopen markers at the dotted line: tolerance not reached in {budget} steps", fontsize=10)
    fig.tight_layout()
    return atomic_savefig(fig, path)


def run_study(config: dict, outdir, *, fresh: bool = False, progress: bool = True, stop_after=None) -> dict:
    """Run (or resume) both sequences for every method and seed; JSON, Markdown and PNGs in ``outdir``."""
    config, outdir = qs.prepare(config, outdir)
    methods = config["methods"]
    kinds = list(config["kinds"])
    if set(kinds) - {"imaginary", "real"} or not kinds:
        raise ValueError(f"kinds must be a subset of ['imaginary', 'real'], got {kinds}")
    if config["trotter_steps"] < 1 or not config["dt"] > 0 or not config["tol"] > 0:
        raise ValueError("need trotter_steps >= 1, dt > 0 and tol > 0")
    unknown = [m for m in methods if m not in STEP_SIZES]
    if unknown:
        raise ValueError(f"no step size for {unknown}")
    cells = Cells(Checkpoint(outdir / "checkpoint.pkl"), fresh=fresh, stop_after=stop_after)
    total = len(config["n"]) * len(methods) * len(config["seeds"]) * 2 * len(kinds)
    bar = tqdm(total=total, desc="sequence", disable=None if progress else True, dynamic_ncols=True)
    result = {"study": "sequence", "config": config, "step_sizes": {m: STEP_SIZES[m] for m in methods},
              "sequences": []}
    tables = []
    for n in config["n"]:
        for kind in kinds:
            per_method = {}
            for method in methods:
                chains = []
                for seed in config["seeds"]:
                    chain = {}
                    for start in ("warm", "cold"):
                        bar.set_postfix_str(f"{kind} {method} seed={seed} {start}")
                        chain[start] = run_chain(cells, kind, n, method, seed, config, start)
                        bar.update()
                    chains.append(chain)
                per_method[method] = summarize(chains, config["tol"], shared_targets=kind == "imaginary")
                title = (f"{kind}-time sequence, n={n}, {QUANTUM.label(method)} "
                         f"(lr={STEP_SIZES[method]:g}, {config['steps']} steps per point)")
                tables.append(format_table(title, per_method[method], config["tol"]))
            xlabel = "β" if kind == "imaginary" else f"time kΔt (Δt = {config['dt']:g})"
            plot = plot_sequence(per_method, outdir / f"sequence_{kind}_n{n}.png",
                                 f"{kind}-time sequence, TFIM ring n={n}, ansatz {config['ansatz']}", xlabel,
                                 config["steps"])
            result["sequences"].append({"kind": kind, "n": n, "methods": per_method, "plot": str(plot)})
    bar.close()
    return qs.write_summary(outdir, result, tables)


def _flags(parser):
    parser.add_argument("--kinds", nargs="+", choices=["imaginary", "real"], help="which sequences")
    parser.add_argument("--trotter-steps", type=int, help="number of real-time Trotter steps")
    parser.add_argument("--dt", type=float, help="Trotter time step")
    parser.add_argument("--tol", type=float, help="tolerance above the per-point floor D*_k")


def _report(result: dict) -> list[str]:
    return [f"plot: {s['plot']}" for s in result["sequences"]]


STUDY = Study("sequence", __doc__, run_study, DEFAULT, FULL, (qs.flags, _flags), _report)
main = STUDY.main


if __name__ == "__main__":
    raise SystemExit(main())
