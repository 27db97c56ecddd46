"""Hamiltonian learning (QMHL) of TFIM-ring thermal states, from the exact state and from shots.

Target: σ_β = e^{−βH}/Z, H the TFIM ring (J = h = 1). Loss: L(ρ) = −Tr(σ log ρ)
(quantum modular Hamiltonian learning), so D(σ‖ρ) = L + Tr σ log σ.

* ``exact``: L from the density matrix σ; D is exact at every iterate.
* ``shots=S``: L from S classical-shadow measurements of σ (random local Pauli bases;
  ``qgeom.quantum.measure_shadows``): σ replaced by the unbiased estimate σ̂, which is not
  positive, so the empirical loss is unbounded below and few shots overfit. D(σ‖ρ) is
  then evaluated exactly on the side (an oracle the learner does not have).

Every method gets the same step-size search (on the exact problem, one seed; winner =
lowest mean D over the last tenth) and runs at its winner on every problem and seed.
Fidelity F(ρ, σ) (squared) at sparse iterates.

    qgeom learn                              # short: n = 4, β = 1, exact + 1000 shots
    qgeom learn --shots 100 1000 10000 --seeds 0 1 2 --steps 800
    qgeom learn --full                       # n = 4, 6 × β = 0.5, 1, 2, shots 100…100000
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from experiments import quantum_common as qc
from experiments.io import Checkpoint, results_dir

DEFAULT = dict(n=[4], betas=[1.0], shots=[1000], seeds=[0, 1], steps=150, search_steps=60,
               methods=list(qc.GRIDS), ansatz="he3", grid="short", max_cpu=None, data_seed=1234)
FULL = dict(n=[4, 6], betas=[0.5, 1.0, 2.0], shots=[100, 1000, 10000, 100000], seeds=[0, 1, 2], steps=1000,
            search_steps=300, methods=list(qc.GRIDS), ansatz="he3", grid="full", max_cpu=600.0, data_seed=1234)


@functools.lru_cache(maxsize=None)
def _family(n, ansatz, J, h):
    from qgeom.quantum import hamiltonian_matrix, qmhl_loss, tfim

    model = qc.make_model(n, ansatz)
    # σ enters as the traced argument: one compile serves every β and shot record.
    return hamiltonian_matrix(tfim(qc.ring(n), J=J, h=h)), model, lambda params, s: qmhl_loss(model, s)(params)


@functools.lru_cache(maxsize=None)
def problem(n: int, beta: float, shots: int | None = None, ansatz: str = "he3", data_seed: int = 1234,
            J: float = 1.0, h: float = 1.0) -> qc.Problem:
    """QMHL of σ_β from the exact state (``shots=None``) or from ``shots`` shadow measurements."""
    from qgeom.quantum import entropy, gibbs_state, measure_shadows

    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if shots is not None and (int(shots) != shots or shots < 1):
        raise ValueError(f"shots must be a positive integer, got {shots}")
    H, model, loss_fn = _family(n, ansatz, J, h)
    sigma = gibbs_state(H, beta)
    neg_entropy = -float(entropy(sigma))
    fid = qc.fidelity_fn(model, sigma)
    family = f"qmhl/tfim-ring/n={n}/J={J:g}/h={h:g}/{ansatz}"
    if shots is None:
        return qc.Problem(key=f"{family}/beta={beta:g}/exact", family=family, model=model, loss_fn=loss_fn,
                          data=sigma, offset=neg_entropy, evaluate=lambda p: {"fidelity": fid(p)})
    data = measure_shadows(sigma, jax.random.PRNGKey(data_seed), int(shots), wires=model.wires)
    loss = qc.jitted_loss(qc.Problem("", family, model, loss_fn))
    return qc.Problem(key=f"{family}/beta={beta:g}/shots={shots}/data_seed={data_seed}", family=family,
                      model=model, loss_fn=loss_fn, data=jnp.asarray(data.physical_estimate()),
                      divergence=lambda p: loss(p, sigma) + neg_entropy,
                      evaluate=lambda p: {"fidelity": fid(p)})


def run_study(config: dict, outdir, *, fresh: bool = False, progress: bool = True, stop_after=None) -> dict:
    """Run (or resume) the study described by ``config``; write JSON, Markdown and PNGs in ``outdir``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    methods = qc.check_methods(config["methods"])
    grids = qc.GRIDS if config["grid"] == "full" else qc.SHORT_GRIDS
    sources = [None] + [int(s) for s in config["shots"]]
    cells = qc.Cells(Checkpoint(outdir / "checkpoint.pkl"), fresh=fresh, stop_after=stop_after)
    combos = [(n, float(b)) for n in config["n"] for b in config["betas"]]
    per_problem = len(methods) * len(config["seeds"])
    total = len(combos) * (sum(len(grids[m]) for m in methods) + len(sources) * per_problem)
    bar = tqdm(total=total, desc="learn", disable=not progress, dynamic_ncols=True)
    summary = {"study": "learn", "config": config, "grids": {m: list(grids[m]) for m in methods}, "problems": []}
    tables = []
    for n, beta in combos:
        exact = problem(n, beta, None, config["ansatz"], config["data_seed"])
        bar.set_description(f"learn n={n} β={beta:g}")
        search = qc.step_size_search(cells, exact, methods, grids, config["seeds"][0], config["search_steps"],
                                     progress=bar, max_cpu=config["max_cpu"])
        winners = {m: s["winner"] for m, s in search.items()}
        for shots in sources:
            prob = problem(n, beta, shots, config["ansatz"], config["data_seed"])
            runs = qc.long_runs(cells, prob, methods, winners, config["seeds"], config["steps"],
                                progress=bar, max_cpu=config["max_cpu"])
            d_star = qc.floor_estimate(runs)
            per_method = {m: qc.method_summary(runs[m], d_star) for m in methods}
            source = "exact σ" if shots is None else f"{shots} shadow shots"
            tag = f"n{n}_beta{beta:g}_{'exact' if shots is None else f'shots{shots}'}_{config['ansatz']}"
            title = (f"QMHL, TFIM ring n={n}, β={beta:g}, from {source}, ansatz {config['ansatz']} "
                     f"({qc.n_params(prob.model)} params)")
            plot = qc.plot_study(runs, outdir / f"curves_{tag}.png", title, d_star=d_star,
                                 ylabel=r"$D(\sigma_\beta\,\|\,\rho)$")
            tables.append(qc.format_table(title, d_star, per_method))
            summary["problems"].append({
                "n": n, "beta": beta, "shots": shots, "ansatz": config["ansatz"],
                "n_params": qc.n_params(prob.model), "D_star": d_star, "search": search,
                "methods": per_method, "plot": str(plot)})
    bar.close()
    return qc.write_summary(outdir, summary, tables)


def run_quick(outdir=None, *, progress: bool = True, **overrides) -> dict:
    """The short study (n = 4, β = 1, exact and 1000 shots)."""
    qc.enable_compile_cache()
    return run_study({**DEFAULT, **overrides}, outdir or results_dir("learn"), progress=progress)


def main(argv=None) -> int:
    parser = qc.study_parser("learn", __doc__.split("\n\n")[0])
    parser.add_argument("--shots", type=int, nargs="*", help="shot counts of the measured problems")
    parser.add_argument("--grid", choices=["short", "full"], help="step-size grids")
    parser.add_argument("--data-seed", type=int, help="seed of the simulated measurements")
    args = parser.parse_args(argv)
    config = qc.resolve_config(args, DEFAULT, FULL)
    qc.enable_compile_cache()
    outdir = args.out or results_dir("learn")
    summary = run_study(config, outdir, fresh=args.fresh, progress=not args.no_progress)
    print(summary["table"])
    for p in summary["problems"]:
        print(f"plot: {p['plot']}")
    print(f"summary: {Path(outdir) / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
