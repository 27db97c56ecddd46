"""Gibbs sampling (VQT) of the TFIM on a periodic square lattice: the regime the QPMD authors'
January 2022 draft chose because plain circuits struggle there.

Target σ_β = e^{−βH}/Z, H = −J Σ_{⟨ij⟩} Z_iZ_j − h Σ X_i on a rows×cols torus
(``qgeom.quantum.hamiltonians.torus``; on the 2×3 torus the two vertical bonds of a column
coincide, so they couple with 2J, as in the authors' lattice), J = 1, h = 2.5, β ∈ [1, 3].
The protocol is ``qgeom gibbs``'s (``experiments.quantum_study``): the same step-size search
for every method (a grid of equal size, ``search_steps`` iterations from the first seed,
winner = lowest mean D over the last tenth), long runs at the winners for every seed, each
capped at ``max_cpu`` optimizer CPU seconds; D* = lowest D of any long run; ERT (expected
CPU seconds with restarts) to D* + 0.01 and D* + 0.05, and each method's ratio to Adam's
(the goal: a geometric method at ≤ 1/3). Sites are numbered row-major; the ansatz acts on
that order (``--ansatz``, default cx3).

    qgeom torus                                   # short: 2×3, β = 2, 2 seeds, 150 steps
    qgeom torus --lattice 2x3 --betas 1 2 3 --seeds 0 1 2 --steps 600 --search-steps 120
    qgeom torus --lattice 3x3 --methods adam qpngd-k qpmd gd --seeds 0 --max-cpu 120
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import networkx as nx
from tqdm.auto import tqdm

from experiments import quantum_study as qs
from experiments.harness import Cells, Checkpoint
from experiments.harness.analysis import floor_estimate
from experiments.harness.cli import Study
from experiments.quantum_methods import QUANTUM
from experiments.quantum_problems import Problem, fidelity_fn, make_model, n_params

DEFAULT = dict(lattice=["2x3"], betas=[2.0], J=1.0, h=2.5, seeds=[0, 1], steps=150, search_steps=60,
               methods=list(QUANTUM), ansatz="cx3", grid="short", max_cpu=None)
FULL = dict(DEFAULT, betas=[1.0, 2.0, 3.0], seeds=[0, 1, 2], steps=600, search_steps=120, max_cpu=60.0)


def parse_lattice(text: str) -> tuple[int, int]:
    """"RxC" → (R, C), both ≥ 2."""
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"lattice must look like '2x3', got {text!r}") from None
    if rows < 2 or cols < 2:
        raise ValueError(f"a torus needs both sides >= 2, got {text!r}")
    return rows, cols


def torus_graph(rows: int, cols: int) -> nx.MultiGraph:
    """The torus with sites relabelled 0…n−1 row-major (the circuits' wire order)."""
    from qgeom.quantum.hamiltonians import torus

    return nx.convert_node_labels_to_integers(torus(rows, cols), ordering="sorted")


@functools.cache
def _family(lattice: str, ansatz: str, J: float, h: float):
    from qgeom.quantum import hamiltonian_matrix, tfim

    rows, cols = parse_lattice(lattice)
    H = tfim(torus_graph(rows, cols), J=J, h=h)
    return H, hamiltonian_matrix(H), make_model(rows * cols, ansatz)


@functools.cache
def problem(lattice: str, beta: float, ansatz: str = "cx3", J: float = 1.0, h: float = 2.5) -> Problem:
    """The VQT problem on the torus (cached: its jitted steps serve every β of the family)."""
    from qgeom.quantum import gibbs_state, log_partition, vqt_loss

    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    H, dense, model = _family(lattice, ansatz, J, h)  # the loss applies H as Pauli groups
    fid = fidelity_fn(model, gibbs_state(dense, beta))
    family = f"vqt/tfim-torus/{lattice}/J={J:g}/h={h:g}/{ansatz}"
    return Problem(key=f"{family}/beta={beta:g}", family=family, model=model,
                   loss_fn=lambda params, b: vqt_loss(model, H, b)(params), data=jnp.asarray(float(beta)),
                   offset=float(log_partition(dense, beta)), evaluate=lambda p: {"fidelity": fid(p)})


def run_study(config: dict, outdir, *, fresh: bool = False, progress: bool = True, stop_after=None) -> dict:
    """Run (or resume) the torus study; write summary.json, summary.md and PNGs in ``outdir``."""
    config, outdir = qs.prepare(config, outdir)
    for lat in config["lattice"]:
        parse_lattice(lat)
    methods, short = config["methods"], config["grid"] != "full"
    cells = Cells(Checkpoint(outdir / "checkpoint.pkl"), fresh=fresh, stop_after=stop_after)
    combos = [(lat, float(b)) for lat in config["lattice"] for b in config["betas"]]
    total = len(combos) * len(methods) * (len(QUANTUM[methods[0]].grid_for(short)) + len(config["seeds"]))
    bar = tqdm(total=total, desc="torus", disable=None if progress else True, dynamic_ncols=True)
    summary = {"study": "torus", "config": config, "grids": {m: list(QUANTUM[m].grid_for(short)) for m in methods},
               "problems": []}
    tables = []
    for lat, beta in combos:
        prob = problem(lat, beta, config["ansatz"], config["J"], config["h"])
        bar.set_description(f"torus {lat} β={beta:g}")
        search = qs.step_size_search(cells, prob, methods, short, config["seeds"][0], config["search_steps"],
                                     progress=bar, max_cpu=config["max_cpu"])
        winners = {m: s["winner"] for m, s in search.items()}
        runs = qs.long_runs(cells, prob, methods, winners, config["seeds"], config["steps"], progress=bar,
                            max_cpu=config["max_cpu"])
        d_star = floor_estimate(runs)
        per_method = {m: qs.method_summary(runs[m], d_star) for m in methods}
        tag = f"{lat}_beta{beta:g}_{config['ansatz']}"
        title = (f"VQT, TFIM torus {lat} (h={config['h']:g}), β={beta:g}, ansatz {config['ansatz']} "
                 f"({n_params(prob.model)} params)")
        plot = qs.plot_study(runs, outdir / f"curves_{tag}.png", title, d_star=d_star)
        tables.append(qs.format_table(title, d_star, per_method))
        summary["problems"].append({
            "lattice": lat, "beta": beta, "ansatz": config["ansatz"], "n_params": n_params(prob.model),
            "log_Z": prob.offset, "D_star": d_star, "search": search, "methods": per_method,
            "headline": qs.headline(per_method), "plot": str(plot)})
    bar.close()
    return qs.write_summary(outdir, summary, tables)


def _report(summary: dict) -> list[str]:
    lines = []
    for p in summary["problems"]:
        h, where = p["headline"], f"{p['lattice']} β={p['beta']:g}"
        if not h or h["adam_ert_cpu_s"] is None:
            reached = [m for m, s in p["methods"].items() if s["to_D*+0.01"]["iterations"] is not None]
            lines.append(f"{where}: Adam never reached D*+0.01 (no ratio); reached by: {', '.join(reached) or 'none'}")
        else:
            ratios = ", ".join(f"{m}={r:.2f}" if r is not None else f"{m}=not reached"
                               for m, r in h["ratios_ert_cpu_s"].items())
            lines.append(f"{where}: ERT (CPU s) to D*+0.01 relative to Adam: {ratios} (goal ≤ 0.33)")
        lines.append(f"plot: {p['plot']}")
    return lines


def _flags(parser) -> None:
    parser.add_argument("--lattice", nargs="+", help="torus sizes RxC (2x3: n = 6; 3x3: n = 9)")
    parser.add_argument("--betas", type=float, nargs="+", help="inverse temperatures")
    parser.add_argument("--h", type=float, help="transverse field (default 2.5)")
    parser.add_argument("--seeds", type=int, nargs="+", help="random seeds of the initial parameters")
    parser.add_argument("--steps", type=int, help="iterations of every long run")
    parser.add_argument("--search-steps", type=int, help="iterations of every step-size search run")
    parser.add_argument("--ansatz", help="QHBM ansatz as in qgeom gibbs (default cx3)")
    parser.add_argument("--max-cpu", type=float, help="cap on each run's optimizer CPU seconds")
    parser.add_argument("--grid", choices=["short", "full"], help="step-size grids (3 or 4 values per method)")


STUDY = Study("torus", __doc__, run_study, DEFAULT, FULL, _flags, _report)
main = STUDY.main


if __name__ == "__main__":
    raise SystemExit(main())
