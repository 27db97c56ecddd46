"""Hamiltonian learning (QMHL) of TFIM-ring thermal states, from the exact state and from shots.

Target: σ_β = e^{−βH}/Z, H the TFIM ring (J = h = 1). Loss: L(ρ) = −Tr(σ log ρ)
(quantum modular Hamiltonian learning), so D(σ‖ρ) = L + Tr σ log σ.

* ``exact``: L from the density matrix σ; D is exact at every iterate.
* ``shots=S``: L from S classical-shadow measurements of σ (random local Pauli bases;
  ``qgeom.quantum.measure_shadows``) with σ replaced, once before training, by an
  ``estimator``: ``physical`` — the density matrix nearest to the shadow estimate σ̂
  (Smolin–Gambetta–Smith; the loss is bounded below) — or ``unbiased`` — σ̂ itself, which
  is not positive, so the empirical loss is unbounded below and few shots overfit without
  limit. D(σ‖ρ) and the fidelity are evaluated exactly on the side (an oracle the learner
  does not have).

Every method gets the same step-size search (on the exact problem, one seed; winner =
lowest mean D over the last tenth) and runs at its winner on every problem and seed.
Fidelity F(ρ, σ) (squared) at sparse iterates. Per (n, β) the summary tabulates the final
D(σ‖ρ) and fidelity (mean ± std over seeds) per method against the shot count, and plots
final D and fidelity versus shots (``final_vs_shots_*.png``).

    qgeom learn                              # short: n = 4, β = 1, exact + 1000 shots
    qgeom learn --shots 100 1000 10000 --seeds 0 1 2 --steps 400
    qgeom learn --shots 100 1000 --estimators physical unbiased
    qgeom learn --full                       # n = 4, 6 × β = 0.5, 1, 2, shots 100…100000, both estimators
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from experiments import quantum_study as qs
from experiments.harness import Cells, Checkpoint
from experiments.harness.analysis import floor_estimate
from experiments.harness.cli import Study
from experiments.harness.store import atomic_savefig
from experiments.quantum_methods import QUANTUM
from experiments.quantum_problems import (
    Problem,
    fidelity_fn,
    jitted_loss,
    make_model,
    n_params,
    ring,
)

ESTIMATORS = ("physical", "unbiased")
DEFAULT = dict(n=[4], betas=[1.0], shots=[1000], estimators=["physical"], seeds=[0, 1], steps=150,
               search_steps=60, methods=list(QUANTUM), ansatz="cx3", grid="short", max_cpu=None, data_seed=1234,
               parallel="auto")
FULL = dict(n=[4, 6], betas=[0.5, 1.0, 2.0], shots=[100, 1000, 10000, 100000], estimators=list(ESTIMATORS),
            seeds=[0, 1, 2], steps=1000, search_steps=300, methods=list(QUANTUM), ansatz="cx3", grid="full",
            max_cpu=600.0, data_seed=1234, parallel="auto")


@functools.cache
def _family(n, ansatz, J, h):
    from qgeom.quantum import hamiltonian_matrix, qmhl_loss, tfim

    model = make_model(n, ansatz)
    # σ enters as the traced argument: one compile serves every β, shot record and estimator.
    return hamiltonian_matrix(tfim(ring(n), J=J, h=h)), model, lambda params, s: qmhl_loss(model, s)(params)


@functools.cache
def _shadow_estimates(n, beta, shots, data_seed, J, h):
    """{estimator: σ estimate} from one simulated record of ``shots`` shadow measurements."""
    from qgeom.quantum import gibbs_state, hamiltonian_matrix, measure_shadows, tfim

    sigma = gibbs_state(hamiltonian_matrix(tfim(ring(n), J=J, h=h)), beta)
    data = measure_shadows(sigma, jax.random.PRNGKey(data_seed), int(shots))
    return {"physical": data.physical_estimate(), "unbiased": data.unbiased_estimate()}


@functools.cache
def problem(n: int, beta: float, shots: int | None = None, ansatz: str = "cx3", data_seed: int = 1234,
            estimator: str = "physical", J: float = 1.0, h: float = 1.0) -> Problem:
    """QMHL of σ_β from the exact state (``shots=None``) or from ``shots`` shadow measurements
    turned into a target by ``estimator`` ("physical" or "unbiased")."""
    from qgeom.quantum import entropy, gibbs_state

    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if shots is not None and (int(shots) != shots or shots < 1):
        raise ValueError(f"shots must be a positive integer, got {shots}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    H, model, loss_fn = _family(n, ansatz, J, h)
    sigma = gibbs_state(H, beta)
    neg_entropy = -float(entropy(sigma))
    fid = fidelity_fn(model, sigma)
    family = f"qmhl/tfim-ring/n={n}/J={J:g}/h={h:g}/{ansatz}"
    if shots is None:
        return Problem(key=f"{family}/beta={beta:g}/exact", family=family, model=model, loss_fn=loss_fn,
                          data=sigma, offset=neg_entropy, evaluate=lambda p: {"fidelity": fid(p)})
    loss = jitted_loss(Problem("", family, model, loss_fn))
    return Problem(key=f"{family}/beta={beta:g}/shots={shots}/data_seed={data_seed}/estimator={estimator}",
                      family=family, model=model, loss_fn=loss_fn,
                      data=jnp.asarray(_shadow_estimates(n, beta, int(shots), data_seed, J, h)[estimator]),
                      divergence=lambda p: loss(p, sigma) + neg_entropy,
                      evaluate=lambda p: {"fidelity": fid(p)})


def format_shots_table(title: str, rows: list[dict], shots: list[int]) -> str:
    """Final D and fidelity per (method, estimator) against the shot count (columns)."""
    sources = [None] + list(shots)
    head = ["method", "target"] + [("exact σ" if s is None else f"{s} shots") for s in sources]
    keyed = {(r["method"], r["estimator"], r["shots"]): r for r in rows}
    lines = [f"### {title}", "", "final D(σ‖ρ) / final fidelity (squared), mean ± std over seeds; "
             "'physical' = nearest density matrix to the shadow estimate, 'unbiased' = the raw estimate", ""]
    for what, key, spec in (("final D(σ‖ρ)", "final_D", ".4f"), ("final fidelity", "final_fidelity", ".4f")):
        lines += [f"{what}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        pairs = [(r["method"], r["estimator"]) for r in rows if r["shots"] is not None]
        for method, estimator in dict.fromkeys(pairs or [(r["method"], "exact") for r in rows]):
            cells = [QUANTUM.label(method), estimator]
            for s in sources:
                r = keyed.get((method, "exact" if s is None else estimator, s))
                cells.append("—" if r is None else f"{r[key]:{spec}}±{r[key + '_std']:{spec}}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


def plot_vs_shots(rows: list[dict], path, title: str):
    """Final D (log–log) and fidelity versus shots, one colour per method, mean ± std error
    bars; solid: physical estimate, dotted: unbiased; dashed horizontal: from exact σ."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for i, method in enumerate(methods):
        color = f"C{i % 10}"
        for ax, key in zip(axes, ("final_D", "final_fidelity")):
            exact = [r for r in rows if r["method"] == method and r["shots"] is None]
            if exact:
                ax.axhline(exact[0][key], color=color, ls="--", lw=1, alpha=0.8)
            for estimator, ls, marker in (("physical", "-", "o"), ("unbiased", ":", "x")):
                pts = sorted((r for r in rows if r["method"] == method and r["estimator"] == estimator
                              and r["shots"] is not None), key=lambda r: r["shots"])
                if pts:
                    ax.errorbar([r["shots"] for r in pts], [r[key] for r in pts], yerr=[r[key + "_std"] for r in pts],
                                color=color, ls=ls, marker=marker, capsize=3,
                                label=f"{QUANTUM.label(method)}, {estimator}")
    axes[0].set(xscale="log", yscale="log", xlabel="shots (classical-shadow measurements)",
                ylabel=r"final $D(\sigma_\beta\,\|\,\rho)$")
    axes[1].set(xscale="log", xlabel="shots (classical-shadow measurements)", ylabel="final fidelity (squared)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize="x-small")
    fig.suptitle(title + "\nmean ± std over seeds; dashed: trained on the exact σ", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    return atomic_savefig(fig, path)


def run_study(config: dict, outdir, *, fresh: bool = False, progress: bool = True, stop_after=None) -> dict:
    """Run (or resume) the study described by ``config``; write JSON, Markdown and PNGs in ``outdir``."""
    config, outdir = qs.prepare(config, outdir)
    methods = config["methods"]
    estimators = list(config["estimators"])
    if not estimators or set(estimators) - set(ESTIMATORS):
        raise ValueError(f"estimators must be a non-empty subset of {list(ESTIMATORS)}, got {estimators}")
    shots_list = [int(s) for s in config["shots"]]
    if any(s < 1 for s in shots_list):
        raise ValueError(f"shots must be positive integers, got {config['shots']}")
    short = config["grid"] != "full"
    parallel = qs.use_parallel(config)
    sources = [(None, "exact")] + [(s, e) for s in shots_list for e in estimators]
    cells = Cells(Checkpoint(outdir / "checkpoint.pkl"), fresh=fresh, stop_after=stop_after)
    combos = [(n, float(b)) for n in config["n"] for b in config["betas"]]
    per_problem = len(methods) * len(config["seeds"])
    total = len(combos) * (sum(len(QUANTUM[m].grid_for(short)) for m in methods) + len(sources) * per_problem)
    bar = tqdm(total=total, desc="learn", disable=None if progress else True, dynamic_ncols=True)
    summary = {"study": "learn", "config": config, "parallel": qs.parallel_info(parallel),
               "grids": {m: list(QUANTUM[m].grid_for(short)) for m in methods}, "problems": [],
               "shots_summary": []}
    tables = []
    for n, beta in combos:
        exact = problem(n, beta, None, config["ansatz"], config["data_seed"])
        bar.set_description(f"learn n={n} β={beta:g}")
        search = qs.step_size_search(cells, exact, methods, short, config["seeds"][0], config["search_steps"],
                                     progress=bar, max_cpu=config["max_cpu"], parallel=parallel)
        winners = {m: s["winner"] for m, s in search.items()}
        shot_rows, problem_tables = [], []
        for shots, estimator in sources:
            prob = problem(n, beta, shots, config["ansatz"], config["data_seed"],
                           "physical" if shots is None else estimator)
            runs = qs.long_runs(cells, prob, methods, winners, config["seeds"], config["steps"],
                                progress=bar, max_cpu=config["max_cpu"], parallel=parallel)
            d_star = floor_estimate(runs)
            per_method = {m: qs.method_summary(runs[m], d_star) for m in methods}
            shot_rows += [{"method": m, "shots": shots, "estimator": estimator, "seeds": len(runs[m]),
                           **{k: per_method[m][k] for k in ("final_D", "final_D_std", "final_fidelity",
                                                            "final_fidelity_std")}}
                          for m in methods]
            source = "exact σ" if shots is None else f"{shots} shadow shots, {estimator} estimate"
            tag = f"n{n}_beta{beta:g}_{'exact' if shots is None else f'shots{shots}_{estimator}'}_{config['ansatz']}"
            title = (f"QMHL, TFIM ring n={n}, β={beta:g}, from {source}, ansatz {config['ansatz']} "
                     f"({n_params(prob.model)} params)")
            plot = qs.plot_study(runs, outdir / f"curves_{tag}.png", title, d_star=d_star,
                                 ylabel=r"$D(\sigma_\beta\,\|\,\rho)$")
            problem_tables.append(qs.format_table(title, d_star, per_method))
            summary["problems"].append({
                "n": n, "beta": beta, "shots": shots, "estimator": estimator, "ansatz": config["ansatz"],
                "n_params": n_params(prob.model), "D_star": d_star, "search": search,
                "methods": per_method, "plot": str(plot)})
        title = f"QMHL, TFIM ring n={n}, β={beta:g}, ansatz {config['ansatz']}: final D and fidelity vs shots"
        plot = plot_vs_shots(shot_rows, outdir / f"final_vs_shots_n{n}_beta{beta:g}_{config['ansatz']}.png", title)
        tables += [format_shots_table(title, shot_rows, shots_list)] + problem_tables
        summary["shots_summary"].append({"n": n, "beta": beta, "rows": shot_rows, "plot": str(plot)})
    bar.close()
    return qs.write_summary(outdir, summary, tables)


def _flags(parser):
    parser.add_argument("--shots", type=int, nargs="*", help="shot counts of the measured problems")
    parser.add_argument("--estimators", nargs="+", choices=ESTIMATORS,
                        help="targets made from the shots: physical (nearest density matrix), unbiased (raw)")
    parser.add_argument("--grid", choices=["short", "full"], help="step-size grids")
    parser.add_argument("--data-seed", type=int, help="seed of the simulated measurements")


def _report(summary: dict) -> list[str]:
    return ([f"plot: {s['plot']}" for s in summary["shots_summary"]]
            + [f"plot: {p['plot']}" for p in summary["problems"]])


STUDY = Study("learn", __doc__, run_study, DEFAULT, FULL, (qs.flags, qs.parallel_flag, _flags), _report)
main = STUDY.main


if __name__ == "__main__":
    raise SystemExit(main())
