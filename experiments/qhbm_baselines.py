"""The QPMD authors' own sweep (google/qhbm-library ``baselines/``) run through qgeom.

Their ``config.py`` / ``train.py``: TFIM H = −J Σ Z_iZ_{i+1} − h Σ X_i on a ring of n = 4
qubits (J = h = 1); model: order-2 parity energy (their "KOBE", order 2) and the 7-layer
hardware-efficient circuit ``qhea`` (X^a Z^b on every qubit, parameterized CZ^c brickwork,
cirq exponent units), every parameter drawn from N(0, 0.1²). Two tasks:

* ``vqt``: VQT along β ∈ linspace(0.5, 2.25, 4), ``init_steps`` (1000) at the first β and
  ``num_steps`` (100) at each later one;
* ``qvartz``: VQT at β = 1 for ``init_steps``, then ``time_steps`` (3) first-order Trotter
  steps V = e^{−iΔtH_zz} e^{−iΔtH_x}, Δt = 1, each learned by QMHL (``num_steps`` each) from
  the previous *model* evolved by V; fidelity and relative entropy are measured against
  the exactly evolved thermal state.

Methods (``method`` × ``optimizer`` × ``init``, 12 per task, 24 in all): ``vanilla`` (the
optimizer on the gradient), ``natural`` (the optimizer on the BKM natural gradient
(G + λI)⁻¹g, their damping: λ = 1 when λ_min(G) ≤ 1, plus a 1e-2 ridge), ``mirror`` (QPMD,
η = 0.1, α = 0.5, 100 inner steps of the optimizer at 2.5e-3) with ``SGD`` or ``Adam`` at
lr 0.1; later points start from a fresh random draw (``random``) or the previous optimum
(``prev``, their "optimal"). As in their code the optimizer's state carries over along a
warm chain (a new optimizer at the first QMHL point), and a random start gets a new one.

Differences from their code, all stated in the README: our EBM block of the BKM metric is
exact (theirs: 500 samples); their solve is tf lstsq with an l2 term, (A² + 10⁻²)⁻¹A with
A = G + λI, ours (G + λ + 10⁻²)⁻¹ (within 1 % for λ ≥ 1); our QPMD inner optimizer restarts
every outer step (theirs keeps its Adam moments); float64 throughout (theirs float32).
``--setting ours`` runs the same tasks with our study defaults (ansatz cx3, init
N(0, 0.5²), Adam 0.1, QPNGD lr 1 with plain steps, QPMD η = 0.3 with 10 inner Adam steps
at 0.02) for the side-by-side table.

Logged per step: loss, gradient norm, natural-gradient norm (natural); every ``log_every``
steps and at each point's end: fidelity, relative entropy, the BKM metric's condition
number (λ_max/λ_min of G + λI with their λ; λ_min and λ_max of G itself); per point: the target loss (−log Z_β, or S(σ) of the exact target), the loss's own
floor (QMHL: S of the evolved model), CPU seconds. One resumable cell per chain.

    qgeom qhbm-baselines                     # 1 seed, reduced steps (200 / 50)
    qgeom qhbm-baselines --full              # their steps (1000 / 100), 3 seeds
    qgeom qhbm-baselines ... --completed-only   # tables of the runs finished so far
"""

from __future__ import annotations

import functools
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import qgeom.optimize as opt
from experiments.harness import Cells, Checkpoint, cell_key
from experiments.harness.cli import Study
from experiments.harness.report import markdown_table
from experiments.harness.store import atomic_savefig, atomic_write_json, atomic_write_text

TASKS, METHODS, OPTIMIZERS, INITS = ("vqt", "qvartz"), ("vanilla", "natural", "mirror"), ("SGD", "Adam"), \
    ("random", "prev")
THEIRS = dict(ansatz="qhea7", init_std=0.1, lr=0.1, inner_lr=2.5e-3, inner_steps=100, alpha=0.5)
OURS = dict(ansatz="cx3", init_std=0.5, lr={"vanilla": 0.1, "natural": 1.0, "mirror": 0.3}, inner_lr=0.02,
            inner_steps=10, alpha=0.5, optimizers={"vanilla": "Adam", "natural": "SGD", "mirror": "Adam"})
DEFAULT = dict(n=4, J=1.0, h=1.0, seeds=[0], tasks=list(TASKS), methods=list(METHODS), optimizers=list(OPTIMIZERS),
               inits=list(INITS), setting="theirs", init_steps=200, num_steps=50, betas=[0.5, 1.0833, 1.6667, 2.25],
               real_beta=1.0, dt=1.0, time_steps=3, log_every=10, completed_only=False)
FULL = dict(DEFAULT, seeds=[0, 1, 2], init_steps=1000, num_steps=100)


def settings(setting: str, method: str) -> dict:
    """Step sizes and model of ``setting`` ("theirs" or "ours") for ``method``."""
    if setting not in ("theirs", "ours"):
        raise ValueError(f"setting must be 'theirs' or 'ours', got {setting!r}")
    s = dict(THEIRS if setting == "theirs" else OURS)
    s["lr"] = s["lr"][method] if isinstance(s["lr"], dict) else s["lr"]
    return s


@functools.cache
def model(n: int, ansatz: str):
    """Order-2 parity EBM + ``qhea7`` (theirs) or the studies' ``cx3``."""
    from experiments.quantum_problems import make_model
    from qgeom.quantum import QHBM, Parity
    from qgeom.quantum.circuits import qhea

    if ansatz.startswith("qhea"):
        return QHBM(Parity(n, 2), qhea(n, int(ansatz[4:])))
    return make_model(n, ansatz)


def init_params(m, key, std: float) -> dict:
    k1, k2 = jax.random.split(key)
    return {"theta": m.ebm.init(k1, std), "phi": m.circuit.init(k2, std)}


def _outer(name: str, lr: float):
    return {"SGD": optax.sgd, "Adam": optax.adam}[name](lr)


@functools.cache
def _stepper(n: int, J: float, h: float, setting: str, family: str, method: str, optimizer: str):
    """(init_state, jitted step(params, state, data) → (params, state, loss, ‖g‖, ‖ng‖)) for one
    loss ``family`` ("vqt": data = β; "qmhl": data = σ), compiled once for every point and chain."""
    from experiments.quantum_problems import ring
    from qgeom.quantum import qmhl_loss, tfim, vqt_loss

    s = settings(setting, method)
    m = model(n, s["ansatz"])
    if family == "vqt":
        obs = m.prepare(tfim(ring(n), J=J, h=h))

        def loss_fn(p, beta):
            return vqt_loss(m, obs, beta)(p)
    else:
        def loss_fn(p, sigma):
            return qmhl_loss(m, sigma)(p)
    outer = _outer(optimizer, s["lr"])
    if method == "mirror":  # their inner loss is ours / η: an SGD inner step needs lr / η to match
        inner = optax.adam(s["inner_lr"]) if optimizer == "Adam" else optax.sgd(s["inner_lr"] / s["lr"])
        outer = opt.qpmd(m, s["lr"], alpha=s["alpha"], inner_steps=s["inner_steps"], inner_optimizer=inner)
    pre = opt.qpngd(m, 1.0) if method == "natural" else None

    def init_state(params):
        return (pre.init(params) if pre else None, outer.init(params))

    @jax.jit
    def step(params, state, data):
        loss, g = jax.value_and_grad(loss_fn)(params, data)
        pre_state, outer_state = state
        direction = g
        if pre is not None:
            neg, pre_state = pre.update(g, pre_state, params)
            direction = jax.tree_util.tree_map(jnp.negative, neg)
        updates, outer_state = outer.update(direction, outer_state, params)
        norm = optax.tree_utils.tree_norm
        return optax.apply_updates(params, updates), (pre_state, outer_state), loss, norm(g), norm(direction)

    return m, init_state, step


@functools.cache
def _evaluator(n: int, ansatz: str):
    """params, σ → (fidelity, D(ρ‖σ), D(σ‖ρ), λ_min and λ_max of the BKM metric G, condition number
    of their damped matrix G + λI)."""
    from qgeom.metrics import qhbm_bkm
    from qgeom.quantum import fidelity, relative_entropy

    m = model(n, ansatz)

    @jax.jit
    def evaluate(params, sigma):
        rho = m.density_matrix(params)
        w = jnp.linalg.eigvalsh(qhbm_bkm(m, params).dense())
        reg = jnp.where(w[0] <= 1.0, 1.0 + jnp.abs(jnp.minimum(w[0], 0.0)), 0.0)  # their damping
        return fidelity(rho, sigma), relative_entropy(rho, sigma), relative_entropy(sigma, rho), w[0], w[-1], \
            (w[-1] + reg) / (w[0] + reg)

    return m, evaluate


def run_chain(config: dict, task: str, method: str, optimizer: str, init: str, seed: int) -> dict:
    """One run of the sweep: the whole sequence of points (module docstring) as plain arrays."""
    from experiments.quantum_problems import ring
    from qgeom.optimize.sequence import trotter_step
    from qgeom.quantum import entropy, gibbs_state, hamiltonian_matrix, log_partition, tfim

    n, J, h, setting = config["n"], config["J"], config["h"], config["setting"]
    s = settings(setting, method)
    H = hamiltonian_matrix(tfim(ring(n), J=J, h=h))
    key = jax.random.PRNGKey(seed)
    m, evaluate = _evaluator(n, s["ansatz"])
    if task == "vqt":
        points = [("vqt", float(b)) for b in config["betas"]]
    else:
        points = [("vqt", float(config["real_beta"]))] + [("qmhl", k * config["dt"])
                                                         for k in range(1, config["time_steps"] + 1)]
        v = trotter_step(tfim(ring(n), J=J, h=0.0), tfim(ring(n), J=0.0, h=h), config["dt"], m.wires)
    params, state, exact, out = None, None, None, []
    for k, (family, label) in enumerate(points):
        m, init_state, step = _stepper(n, J, h, setting, family, method, optimizer)
        steps = config["init_steps"] if k == 0 else config["num_steps"]
        fresh = params is None or init == "random"
        if fresh:
            params = init_params(m, jax.random.fold_in(key, k), s["init_std"])
        if fresh or (task == "qvartz" and k == 1):  # their code: a new optimizer here
            state = init_state(params)
        if family == "vqt":
            beta = label
            exact, data = gibbs_state(H, beta), jnp.asarray(beta)
            target, floor = -float(log_partition(H, beta)), -float(log_partition(H, beta))
        else:
            exact = v @ exact @ v.conj().T
            data = v @ m.density_matrix(out[-1]["params_end"]) @ v.conj().T
            data = 0.5 * (data + data.conj().T)
            target, floor = float(entropy(exact)), float(entropy(data))
        rec = {"family": family, "label": label, "target_loss": target, "loss_floor": floor,
               "loss": np.full(steps, np.nan), "grad_norm": np.full(steps, np.nan),
               "natgrad_norm": np.full(steps, np.nan), "log_steps": [], "fidelity": [], "rel_entropy": [],
               "eig_min": [], "eig_max": [], "cond": [], "cpu_s": 0.0, "status": "ok"}
        step(params, state, data)  # compile outside the clock (cached after the first chain)

        def log(t, p):
            f, d_rho_sigma, d_sigma_rho, lo, hi, c = evaluate(p, exact)
            rec["log_steps"].append(t)
            rec["fidelity"].append(float(f))
            rec["rel_entropy"].append(float(d_rho_sigma if family == "vqt" else d_sigma_rho))
            rec["eig_min"].append(float(lo))
            rec["eig_max"].append(float(hi))
            rec["cond"].append(float(c))

        for t in range(steps):
            if t % config["log_every"] == 0:
                log(t, params)
            c0 = time.process_time()
            new, state, loss, gn, ngn = step(params, state, data)
            loss = float(loss)
            rec["cpu_s"] += time.process_time() - c0
            rec["loss"][t], rec["grad_norm"][t] = loss, float(gn)
            if method == "natural":
                rec["natgrad_norm"][t] = float(ngn)
            if not (np.isfinite(loss) and all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(new))):
                rec["status"] = f"non-finite at step {t}"
                break
            params = new
        log(steps, params)
        rec["params_end"] = jax.tree_util.tree_map(np.asarray, params)
        out.append(rec)
        if rec["status"] != "ok":
            break
    return {"task": task, "method": method, "optimizer": optimizer, "init": init, "seed": seed, "points": out}


def _combos(config):
    if config["setting"] == "ours":
        return [(t, m, OURS["optimizers"][m], i) for t in config["tasks"] for m in config["methods"]
                for i in config["inits"]]
    return list(itertools.product(config["tasks"], config["methods"], config["optimizers"], config["inits"]))


def check_config(config: dict) -> dict:
    config = dict(config)
    for key, allowed in (("tasks", TASKS), ("methods", METHODS), ("optimizers", OPTIMIZERS), ("inits", INITS)):
        bad = [x for x in config[key] if x not in allowed]
        if bad or not config[key]:
            raise ValueError(f"{key} must be a non-empty subset of {list(allowed)}, got {config[key]}")
    settings(config["setting"], "vanilla")
    for key in ("init_steps", "num_steps", "time_steps", "log_every", "n"):
        if int(config[key]) != config[key] or config[key] < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {config[key]}")
    if config["n"] < 3:
        raise ValueError(f"a ring needs n >= 3, got {config['n']}")
    if not config["seeds"]:
        raise ValueError("need at least one seed")
    if any(not b > 0 for b in config["betas"]) or not config["real_beta"] > 0 or not config["dt"] > 0:
        raise ValueError("betas, real_beta and dt must be > 0")
    return config


def _label(run: dict) -> str:
    return f"{run['method']}/{run['optimizer']}/{run['init']}"


def summarize(runs: list[dict]) -> dict:
    """Per (method, optimizer, init): mean ± std over seeds of each point's final relative entropy,
    fidelity and loss − target, CPU seconds, and the largest natural-gradient norm and metric condition."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(_label(r), []).append(r)
    out = {}
    for name, rs in groups.items():
        n_points = max(len(r["points"]) for r in rs)
        row = {"seeds": len(rs), "status": sorted({p["status"] for r in rs for p in r["points"]}), "points": []}
        for k in range(n_points):
            ps = [r["points"][k] for r in rs if len(r["points"]) > k]
            d = [p["rel_entropy"][-1] for p in ps]
            gap = [np.nanmin(p["loss"][np.isfinite(p["loss"])][-1:]) - p["target_loss"] for p in ps]
            row["points"].append({
                "label": ps[0]["label"], "family": ps[0]["family"], "runs": len(ps),
                "D": float(np.mean(d)), "D_std": float(np.std(d)),
                "fidelity": float(np.mean([p["fidelity"][-1] for p in ps])),
                "loss_minus_target": float(np.mean(gap)),
                "loss_floor_minus_target": float(np.mean([p["loss_floor"] - p["target_loss"] for p in ps])),
                "D_after_first_log": float(np.mean([p["rel_entropy"][min(1, len(p["rel_entropy"]) - 1)] for p in ps])),
                "cpu_s": float(np.mean([p["cpu_s"] for p in ps])),
                "max_grad_norm": float(np.nanmax([np.nanmax(p["grad_norm"]) for p in ps])),
                "max_natgrad_norm": float(np.nanmax([np.nanmax(p["natgrad_norm"]) for p in ps]))
                if rs[0]["method"] == "natural" else None,
                "median_cond": float(np.median(np.concatenate([p["cond"] for p in ps]))),
                "median_eig_min": float(np.median(np.concatenate([p["eig_min"] for p in ps]))),
                "median_eig_max": float(np.median(np.concatenate([p["eig_max"] for p in ps])))})
        out[name] = row
    return out


def format_table(title: str, summary: dict, labels: list[str], log_every: int) -> str:
    head = ["method / optimizer / init (seeds)"]
    for lab in labels:
        head += [f"D @ {lab}"]
    head += ["F (last point)", f"D after {log_every} steps (later points, mean)", "CPU s (all points)", "median λ_min, λ_max of G", "median cond(G + λI)"]
    rows = []
    for name, s in summary.items():
        pts = s["points"]
        row = [f"{name} ({s['seeds']})"] + [f"{p['D']:.4f}±{p['D_std']:.4f}" for p in pts] + ["—"] * (len(labels) - len(pts))
        later = [p["D_after_first_log"] for p in pts[1:]]
        row += [f"{pts[-1]['fidelity']:.4f}", f"{np.mean(later):.4f}" if later else "—",
                f"{sum(p['cpu_s'] for p in pts):.1f}",
                f"{np.median([p['median_eig_min'] for p in pts]):.2g}, {np.median([p['median_eig_max'] for p in pts]):.3g}",
                f"{np.median([p['median_cond'] for p in pts]):.3g}"]
        if s["status"] != ["ok"]:
            row[0] += " †"
        rows.append(row)
    return "\n".join([f"### {title}", ""] + markdown_table(head, rows))


def plot_task(runs: list[dict], path, title: str):
    """Relative entropy against step, one panel per point, mean over seeds per combination."""
    import matplotlib.pyplot as plt

    labels = sorted({_label(r) for r in runs})
    n_points = max(len(r["points"]) for r in runs)
    fig, axes = plt.subplots(1, n_points, figsize=(4 * n_points, 3.6), squeeze=False)
    styles = {"vanilla": "tab:gray", "natural": "tab:blue", "mirror": "tab:red"}
    for k, ax in enumerate(axes[0]):
        for lab in labels:
            ps = [r["points"][k] for r in runs if _label(r) == lab and len(r["points"]) > k]
            if not ps:
                continue
            steps = ps[0]["log_steps"]
            curve = np.nanmean([p["rel_entropy"] for p in ps if len(p["rel_entropy"]) == len(steps)], axis=0)
            method, optimizer, init = lab.split("/")
            ax.semilogy(steps, np.maximum(curve, 1e-6), color=styles[method],
                        ls="-" if optimizer == "Adam" else "--", lw=1.8 if init == "prev" else 0.8,
                        label=lab)
        p0 = runs[0]["points"][k] if len(runs[0]["points"]) > k else None
        if p0 is not None:
            kind = "β" if p0["family"] == "vqt" else "t"
            ax.set_title(f"{kind} = {p0['label']:g} ({p0['family'].upper()})", fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("relative entropy")
    axes[0][-1].legend(fontsize=6, loc="upper right")
    fig.suptitle(title + " — colour: method; solid Adam, dashed SGD; thick: previous-optimum init", fontsize=9)
    fig.tight_layout()
    return atomic_savefig(fig, path)


def run_study(config: dict, outdir, *, fresh: bool = False, progress: bool = True, stop_after=None) -> dict:
    """Run (or resume) the sweep of ``config``; write summary.json, summary.md and one PNG per task."""
    from pathlib import Path

    config = check_config(config)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cells = Cells(Checkpoint(outdir / "checkpoint.pkl"), fresh=fresh, stop_after=stop_after)
    combos = _combos(config)
    bar = tqdm(total=len(combos) * len(config["seeds"]), desc="qhbm-baselines", disable=None if progress else True)
    common = {k: config[k] for k in ("n", "J", "h", "setting", "init_steps", "num_steps", "betas", "real_beta", "dt",
                                     "time_steps", "log_every")}
    runs = []
    for task, method, optimizer, init in combos:
        for seed in config["seeds"]:
            key = cell_key(study="qhbm-baselines", task=task, method=method, optimizer=optimizer, init=init,
                           seed=seed, settings=settings(config["setting"], method), **common)
            bar.set_postfix_str(f"{task} {method}/{optimizer}/{init} seed={seed}")
            if config["completed_only"] and key not in cells.done:
                continue
            runs.append(cells.run(key, lambda t=task, m=method, o=optimizer, i=init, s=seed:
                                  run_chain(config, t, m, o, i, s)))
            bar.update()
    bar.close()
    summary = {"study": "qhbm-baselines", "config": config, "tasks": {}}
    tables = []
    for task in config["tasks"]:
        task_runs = [r for r in runs if r["task"] == task]
        if not task_runs:
            continue
        s = summarize(task_runs)
        first = next(iter(s.values()))["points"]
        labels = [("β=" if p["family"] == "vqt" else "t=") + f"{p['label']:g}" for p in first]
        what = ("VQT along β" if task == "vqt" else "real time: VQT β=1, then QMHL Trotter steps")
        title = (f"{what}, TFIM ring n={config['n']}, setting '{config['setting']}' "
                 f"({len(config['seeds'])} seeds, {config['init_steps']}/{config['num_steps']} steps)")
        plot = plot_task(task_runs, outdir / f"curves_{task}_{config['setting']}.png", title)
        tables.append(format_table(title, s, labels, config["log_every"]))
        summary["tasks"][task] = {"methods": s, "plot": str(plot), "targets": [
            {"label": p["label"], "target_loss": p["target_loss"], "loss_floor": p["loss_floor"]}
            for p in task_runs[0]["points"]]}
    summary["table"] = "\n\n".join(tables)
    atomic_write_json(outdir / "summary.json", summary)
    atomic_write_text(outdir / "summary.md", summary["table"] + "\n")
    return summary


def _report(summary: dict) -> list[str]:
    lines = []
    for task, t in summary["tasks"].items():
        best = min(t["methods"].items(), key=lambda kv: kv[1]["points"][-1]["D"])
        lines.append(f"{task}: lowest final relative entropy {best[1]['points'][-1]['D']:.4f} by {best[0]}; "
                     f"plot {t['plot']}")
    return lines


def _flags(parser) -> None:
    parser.add_argument("--seeds", type=int, nargs="+", help="random seeds")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, help="vqt (β sweep) and/or qvartz (real time)")
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, help="SGD and/or Adam")
    parser.add_argument("--inits", nargs="+", choices=INITS, help="random and/or prev (previous optimum)")
    parser.add_argument("--setting", choices=["theirs", "ours"], help="their settings or our study defaults")
    parser.add_argument("--init-steps", type=int, help="steps at the first point (theirs: 1000)")
    parser.add_argument("--num-steps", type=int, help="steps at each later point (theirs: 100)")
    parser.add_argument("--log-every", type=int, help="steps between fidelity / relative entropy / cond logs")
    parser.add_argument("--completed-only", action="store_true", default=None,
                        help="summarize the runs already in the checkpoint, start no new one")


STUDY = Study("qhbm-baselines", __doc__, run_study, DEFAULT, FULL, _flags, _report)
main = STUDY.main


if __name__ == "__main__":
    raise SystemExit(main())
