"""Geometric-locality sequences: warm start from the previous optimum versus a fresh random start.

* ``imaginary``: VQT of the TFIM ring along a β sweep (default 0.5, 1.083, 1.667, 2.25);
  point k is σ_{β_k}, the divergence D(ρ‖σ_{β_k}) is exact.
* ``real``: σ_0 = σ_β (β = 1); σ_k = V ρ_{k−1} V†, with V = e^{−iΔt H_zz} e^{−iΔt H_x} one
  Trotter step of the TFIM and ρ_{k−1} the model trained at point k−1 of the warm chain
  (the data the next fit sees come from the previous trained model with V appended).
  Each point is fit by QMHL; the divergence is D(σ_k‖ρ). Warm and cold runs fit the same
  targets.

Per point, method and seed: a warm run (from the previous point's final parameters of the
same chain) and a cold run (from a fresh random draw), ``steps`` iterations each. The
tolerance at point k is D*_k + ``tol``, D*_k the lowest D any run reached there; the
summary gives the steps to reach it and the final fidelity (squared) at every point.

    qgeom sequence                                  # short: n = 4, adam + qpngd, 1 seed
    qgeom sequence --methods adam qpngd qpmd --seeds 0 1 2 --steps 400
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from experiments import gibbs, learn
from experiments import quantum_common as qc
from experiments.io import Checkpoint, atomic_savefig, atomic_write_json, results_dir

# Step sizes: the winners of the short n = 4 step-size searches (gibbs study).
STEP_SIZES = {"adam": 0.1, "gd": 1.0, "qpngd": 1.0, "qpngd-k": 0.3, "qpmd": 1.0, "qng": 0.3}
DEFAULT = dict(n=[4], betas=[0.5, 1.083, 1.667, 2.25], seeds=[0], steps=100, methods=["adam", "qpngd"],
               ansatz="he3", kinds=["imaginary", "real"], trotter_steps=4, dt=0.1, real_beta=1.0, tol=0.01,
               max_cpu=None)
FULL = dict(DEFAULT, seeds=[0, 1, 2], steps=400, methods=["adam", "qpngd", "qpngd-k", "qpmd"], trotter_steps=6)


@functools.lru_cache(maxsize=None)
def trotter_step(n: int, dt: float, J: float = 1.0, h: float = 1.0):
    """V = e^{−iΔt H_zz} e^{−iΔt H_x} for the TFIM ring (H_zz = −J Σ ZZ, H_x = −h Σ X)."""
    from qgeom.quantum import hamiltonian_matrix, tfim

    h_zz = hamiltonian_matrix(tfim(qc.ring(n), J=J, h=0.0))
    h_x = hamiltonian_matrix(tfim(qc.ring(n), J=0.0, h=h))
    return jax.scipy.linalg.expm(-1j * dt * h_zz) @ jax.scipy.linalg.expm(-1j * dt * h_x)


def _qmhl_problem(n: int, ansatz: str, sigma, key: str) -> qc.Problem:
    """QMHL of an arbitrary target σ (shares the learn study's compiled family)."""
    from qgeom.quantum import entropy

    _, model, loss_fn = learn._family(n, ansatz, 1.0, 1.0)
    fid = qc.fidelity_fn(model, sigma)
    return qc.Problem(key=key, family=f"qmhl/tfim-ring/n={n}/J=1/h=1/{ansatz}", model=model, loss_fn=loss_fn,
                      data=jnp.asarray(sigma), offset=-float(entropy(sigma)), evaluate=lambda p: {"fidelity": fid(p)})


def run_chain(cells, kind: str, n: int, method: str, seed: int, config: dict, bar=None) -> dict:
    """Warm and cold runs at every point of one sequence: ``{"warm": [trace…], "cold": [trace…]}``."""
    lr, steps = STEP_SIZES[method], config["steps"]
    out = {"warm": [], "cold": []}
    warm_params = None
    if kind == "imaginary":
        points = [float(b) for b in config["betas"]]
    else:
        points = list(range(config["trotter_steps"] + 1))
    sigma = None
    for k, point in enumerate(points):
        if kind == "imaginary":
            prob = gibbs.problem(n, point, config["ansatz"])
        else:
            if k == 0:
                prob = learn.problem(n, config["real_beta"], None, config["ansatz"])
            else:
                V = trotter_step(n, config["dt"])
                rho = prob.model.density_matrix(out["warm"][-1]["params"])
                sigma = V @ rho @ V.conj().T
                prob = _qmhl_problem(n, config["ansatz"], sigma,
                                     f"real/n={n}/{config['ansatz']}/beta={config['real_beta']:g}/dt={config['dt']:g}"
                                     f"/k={k}/from={method}/seed={seed}/steps={steps}")
        for start in ("warm", "cold"):
            init = warm_params if (start == "warm" and warm_params is not None) else None
            init_seed = seed if (start == "warm" or k == 0) else seed + 1000 * k
            key = qc.cell_key(kind=kind, problem=prob.key, method=method, settings=qc.METHOD_KWARGS[method], lr=lr,
                              seed=seed, start=start if k > 0 else "first", k=k, steps=steps, max_cpu=config["max_cpu"],
                              chain=dict(betas=config["betas"], dt=config["dt"], real_beta=config["real_beta"]))
            if bar is not None:
                bar.set_postfix_str(f"{kind} {method} seed={seed} point {k} {start}")
            trace = cells.run(key, lambda: qc.run_cell(prob, method, lr, init_seed, steps, max_cpu=config["max_cpu"],
                                                       init_params=init))
            out[start].append(trace)
            if bar is not None:
                bar.update()
        warm_params = out["warm"][-1]["params"]
    return {"points": points, **out}


def _steps_to(trace, threshold):
    hit = qc.first_reach(trace, threshold)
    return None if hit is None else hit["iterations"]


def summarize(chains: list[dict], tol: float) -> dict:
    """Per point: D*_k, steps to D*_k + tol and final fidelity, warm and cold (mean over seeds)."""
    points = chains[0]["points"]
    rows = []
    for k, point in enumerate(points):
        d_star = min(float(np.nanmin(c[s][k]["D"])) for c in chains for s in ("warm", "cold"))
        row = {"point": point, "D_star": d_star}
        for start in ("warm", "cold"):
            steps = [_steps_to(c[start][k], d_star + tol) for c in chains]
            ok = [s for s in steps if s is not None]
            row[start] = {
                "steps_to_tol": float(np.mean(ok)) if ok else None, "reached": f"{len(ok)}/{len(steps)}",
                "D_at_start": float(np.mean([c[start][k]["D"][0] for c in chains])),
                "final_D": float(np.mean([c[start][k]["D"][np.isfinite(c[start][k]["D"])][-1] for c in chains])),
                "final_fidelity": float(np.mean([c[start][k]["fidelity"][-1] for c in chains]))}
        rows.append(row)
    return {"points": points, "rows": rows}


def format_table(title: str, summary: dict, tol: float) -> str:
    lines = [f"### {title}", "", f"tolerance: D ≤ D*_k + {tol:g} (D*_k: lowest D of any run at point k)", "",
             "| point | D*_k | warm: D at start | warm: steps to tol | warm: final F | cold: D at start "
             "| cold: steps to tol | cold: final F |", "|---|---|---|---|---|---|---|---|"]

    def steps(r):
        s = "—" if r["steps_to_tol"] is None else f"{r['steps_to_tol']:.0f}"
        return s if r["reached"].split("/")[0] == r["reached"].split("/")[1] else f"{s} ({r['reached']})"

    for row in summary["rows"]:
        w, c = row["warm"], row["cold"]
        lines.append(f"| {row['point']:g} | {row['D_star']:.4f} | {w['D_at_start']:.4f} | {steps(w)} | "
                     f"{w['final_fidelity']:.4f} | {c['D_at_start']:.4f} | {steps(c)} | {c['final_fidelity']:.4f} |")
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
            label = f"{qc.LABELS.get(method, method)}, {start} start"
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
    try:
        return atomic_savefig(fig, path)
    finally:
        plt.close(fig)


def run_study(config: dict, outdir, *, fresh: bool = False, progress: bool = True, stop_after=None) -> dict:
    """Run (or resume) both sequences for every method and seed; JSON, Markdown and PNGs in ``outdir``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    methods = qc.check_methods(config["methods"])
    kinds = list(config["kinds"])
    if set(kinds) - {"imaginary", "real"} or not kinds:
        raise ValueError(f"kinds must be a subset of ['imaginary', 'real'], got {kinds}")
    if config["trotter_steps"] < 1 or not config["dt"] > 0 or not config["tol"] > 0:
        raise ValueError("need trotter_steps >= 1, dt > 0 and tol > 0")
    cells = qc.Cells(Checkpoint(outdir / "checkpoint.pkl"), fresh=fresh, stop_after=stop_after)
    n_points = {"imaginary": len(config["betas"]), "real": config["trotter_steps"] + 1}
    total = len(config["n"]) * len(methods) * len(config["seeds"]) * sum(2 * n_points[k] for k in kinds)
    bar = tqdm(total=total, desc="sequence", disable=not progress, dynamic_ncols=True)
    result = {"study": "sequence", "config": config, "step_sizes": {m: STEP_SIZES[m] for m in methods},
              "sequences": []}
    tables = []
    for n in config["n"]:
        for kind in kinds:
            per_method = {}
            for method in methods:
                chains = [run_chain(cells, kind, n, method, seed, config, bar) for seed in config["seeds"]]
                per_method[method] = summarize(chains, config["tol"])
                title = (f"{kind}-time sequence, n={n}, {qc.LABELS.get(method, method)} "
                         f"(lr={STEP_SIZES[method]:g}, {config['steps']} steps per point)")
                tables.append(format_table(title, per_method[method], config["tol"]))
            xlabel = "β" if kind == "imaginary" else f"Trotter step k (Δt = {config['dt']:g})"
            plot = plot_sequence(per_method, outdir / f"sequence_{kind}_n{n}.png",
                                 f"{kind}-time sequence, TFIM ring n={n}, ansatz {config['ansatz']}", xlabel,
                                 config["steps"])
            result["sequences"].append({"kind": kind, "n": n, "methods": per_method, "plot": str(plot)})
    bar.close()
    result["table"] = "\n\n".join(tables)
    atomic_write_json(outdir / "summary.json", result)
    (outdir / "summary.md").write_text(result["table"] + "\n")
    return result


def run_quick(outdir=None, *, progress: bool = True, **overrides) -> dict:
    """The short study (n = 4, Adam and QPNGD, one seed)."""
    qc.enable_compile_cache()
    return run_study({**DEFAULT, **overrides}, outdir or results_dir("sequence"), progress=progress)


def main(argv=None) -> int:
    parser = qc.study_parser("sequence", __doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", choices=["imaginary", "real"], help="which sequences")
    parser.add_argument("--trotter-steps", type=int, help="number of real-time Trotter steps")
    parser.add_argument("--dt", type=float, help="Trotter time step")
    parser.add_argument("--tol", type=float, help="tolerance above the per-point floor D*_k")
    args = parser.parse_args(argv)
    config = qc.resolve_config(args, DEFAULT, FULL)
    qc.enable_compile_cache()
    outdir = args.out or results_dir("sequence")
    result = run_study(config, outdir, fresh=args.fresh, progress=not args.no_progress)
    print(result["table"])
    for s in result["sequences"]:
        print(f"plot: {s['plot']}")
    print(f"summary: {Path(outdir) / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
