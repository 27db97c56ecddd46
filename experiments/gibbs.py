"""Gibbs sampling (VQT) of the TFIM ring: QPMD, QPNGD, Adam, GD and Fubini–Study QNG.

Target: σ_β = e^{−βH}/Z with H = −J Σ Z_iZ_{i+1} − h Σ X_i on a ring (J = h = 1).
Loss: L(ρ) = β Tr(ρH) − S(ρ) = D(ρ‖σ_β) − log Z_β, so the divergence is exact at every
iterate; the free-energy gap is F(ρ) − F_β = D/β. Fidelity F(ρ, σ_β) (squared,
PennyLane's convention) is evaluated at sparse, log-spaced iterates.

Protocol, per (n, β, ansatz): a step-size search with the same budget for every method
(a grid of equal size, every value run ``search_steps`` iterations from one seed, winner
= lowest mean D over the last tenth), then long runs of every method at its winner for
every seed. D* = the lowest D any long run reached (the ansatz's floor); the summary
gives each method's iterations, gradient evaluations and wall time to D* + 0.05 and
D* + 0.01 and, at β = 1, the ratio of each method's wall time to Adam's.

    qgeom gibbs                       # short: n = 4, β = 1, 2 seeds, 3-value grids
    qgeom gibbs --n 6 --steps 1500    # the n = 6 closing table
    qgeom gibbs --full                # n = 4, 6, 8 × β = 0.5, 1, 2, 3 seeds, 4-value grids
    qgeom gibbs --n 4 --ansatz he10full  # an ansatz that reaches D ≤ 1e-2 at n = 4
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from tqdm.auto import tqdm

from experiments import quantum_study as qs
from experiments.harness import Cells, Checkpoint
from experiments.harness.analysis import floor_estimate
from experiments.harness.cli import Study
from experiments.quantum_methods import QUANTUM
from experiments.quantum_problems import (
    Problem,
    fidelity_fn,
    make_model,
    n_params,
    ring,
)

DEFAULT = dict(n=[4], betas=[1.0], seeds=[0, 1], steps=150, search_steps=60, methods=list(QUANTUM),
               ansatz="cx3", grid="short", max_cpu=None, parallel="auto")
FULL = dict(n=[4, 6, 8], betas=[0.5, 1.0, 2.0], seeds=[0, 1, 2], steps=20000, search_steps=300,
            methods=list(QUANTUM), ansatz="cx3", grid="full", max_cpu=60.0, parallel="auto")


@functools.cache
def problem(n: int, beta: float, ansatz: str = "cx3", J: float = 1.0, h: float = 1.0) -> Problem:
    """The VQT problem for the TFIM ring (cached, so its jitted steps are reused)."""
    from qgeom.quantum import gibbs_state, log_partition, vqt_loss

    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    H, model = _family(n, ansatz, J, h)
    fid = fidelity_fn(model, gibbs_state(H, beta))
    family = f"vqt/tfim-ring/n={n}/J={J:g}/h={h:g}/{ansatz}"
    return Problem(key=f"{family}/beta={beta:g}", family=family, model=model,
                      loss_fn=lambda params, b: vqt_loss(model, H, b)(params), data=jnp.asarray(float(beta)),
                      offset=float(log_partition(H, beta)), evaluate=lambda p: {"fidelity": fid(p)})


@functools.cache
def _family(n, ansatz, J, h):
    """Hamiltonian matrix and model shared by every β (one compile for all of them)."""
    from qgeom.quantum import hamiltonian_matrix, tfim

    return hamiltonian_matrix(tfim(ring(n), J=J, h=h)), make_model(n, ansatz)


def run_study(config: dict, outdir, *, fresh: bool = False, progress: bool = True, stop_after=None) -> dict:
    """Run (or resume) the study described by ``config``; write JSON, Markdown and PNGs in ``outdir``."""
    config, outdir = qs.prepare(config, outdir)
    methods = config["methods"]
    short = config["grid"] != "full"
    parallel = qs.use_parallel(config)
    cells = Cells(Checkpoint(outdir / "checkpoint.pkl"), fresh=fresh, stop_after=stop_after)
    combos = [(n, float(b)) for n in config["n"] for b in config["betas"]]
    total = len(combos) * len(methods) * (len(QUANTUM[methods[0]].grid_for(short)) + len(config["seeds"]))
    bar = tqdm(total=total, desc="gibbs", disable=None if progress else True, dynamic_ncols=True)
    summary = {"study": "gibbs", "config": config, "parallel": qs.parallel_info(parallel),
               "grids": {m: list(QUANTUM[m].grid_for(short)) for m in methods}, "problems": []}
    tables = []
    for n, beta in combos:
        prob = problem(n, beta, config["ansatz"])
        bar.set_description(f"gibbs n={n} β={beta:g}")
        search = qs.step_size_search(cells, prob, methods, short, config["seeds"][0], config["search_steps"],
                                     progress=bar, max_cpu=config["max_cpu"], parallel=parallel)
        winners = {m: s["winner"] for m, s in search.items()}
        runs = qs.long_runs(cells, prob, methods, winners, config["seeds"], config["steps"],
                            progress=bar, max_cpu=config["max_cpu"], parallel=parallel)
        d_star = floor_estimate(runs)
        per_method = {m: qs.method_summary(runs[m], d_star) for m in methods}
        for s in per_method.values():
            s["final_free_energy_gap"] = s["final_D"] / beta
        tag = f"n{n}_beta{beta:g}_{config['ansatz']}"
        title = f"VQT, TFIM ring n={n}, β={beta:g}, ansatz {config['ansatz']} ({n_params(prob.model)} params)"
        plot = qs.plot_study(runs, outdir / f"curves_{tag}.png", title, d_star=d_star)
        table = qs.format_table(title, d_star, per_method)
        tables.append(table)
        summary["problems"].append({
            "n": n, "beta": beta, "ansatz": config["ansatz"], "n_params": n_params(prob.model),
            "log_Z": prob.offset, "D_star": d_star, "search": search, "methods": per_method,
            "headline": qs.headline(per_method), "plot": str(plot)})
    bar.close()
    return qs.write_summary(outdir, summary, tables)


_CLOCKS = {"wall_s": "wall time", "cpu_s": "CPU time", "ert_cpu_s": "expected CPU time with restarts"}


def _report(summary: dict) -> list[str]:
    lines = []
    for p in summary["problems"]:
        h = p["headline"]
        if h and h["adam_cpu_s"] is None:
            reached = ", ".join(f"{m} ({s['to_D*+0.01']['reached']})" for m, s in p["methods"].items()
                                if s["to_D*+0.01"]["iterations"] is not None) or "none"
            lines.append(f"n={p['n']} β={p['beta']:g}: Adam never reached D*+0.01, so no time ratios; "
                         f"reached by: {reached}")
        for clock, name in _CLOCKS.items() if h and h["adam_cpu_s"] is not None else ():
            ratios = ", ".join(f"{m}={r:.2f}" if r is not None else f"{m}=not reached"
                               for m, r in h[f"ratios_{clock}"].items())
            lines.append(f"n={p['n']} β={p['beta']:g}: {name} to D*+0.01 relative to Adam: {ratios} "
                         "(target ≤ 0.33)")
        lines.append(f"plot: {p['plot']}")
    return lines


def _flags(parser) -> None:
    parser.add_argument("--grid", choices=["short", "full"], help="step-size grids (3 or 4 values per method)")


STUDY = Study("gibbs", __doc__, run_study, DEFAULT, FULL, (qs.flags, qs.parallel_flag, _flags), _report)
main = STUDY.main


if __name__ == "__main__":
    raise SystemExit(main())
