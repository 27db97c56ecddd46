"""Helmholtz machines on binarized MNIST: wake-sleep, reweighted wake-sleep (SGD, Adam) and natural RWS.

The NRWS paper's setting (Várady, Volpi, Malagò & Ay 2022): real MNIST from
``classical.data.load_mnist()`` binarized stochastically (one fixed draw, seed 0),
generative/recognition SBNs [784, 200, 100, 10], batch 32, K = 5 importance samples,
SGD at 0.01 (Adam at 1e-3 for RWS-Adam), NRWS damping α = 0.1 with the (1 + α) rescaling.
Test log-likelihood by importance sampling with the recognition net as proposal
(``classical.helmholtz.log_likelihood``) on a fixed test subset, against epochs and
process CPU seconds (the harness's clock of the steps alone; wall time is kept too).
The baselines may run ``baseline_steps`` (more steps than NRWS, which costs ≈ 30× more
per step) so their curves cover more of NRWS's CPU time.

Every (method, seed) run is checkpointed at each evaluation and its finished result stored
as a cell (``results/nrws/checkpoints/``): a killed study resumes to the same numbers;
``--fresh`` starts over. ``--first-seed k`` runs seeds k, …, seeds − 1 only (a second process
with its own ``--out``; its ``checkpoints/cells.pkl`` entries can be merged into the first's).

    qgeom nrws            # quick: 3 200 training images, 150 steps, 1 seed
    qgeom nrws --full     # reduced study: 10 000 images, NRWS 1 248 steps (4 epochs),
                          # baselines 2 496 (8 epochs), 3 seeds, final LL with K = 500

Writes ``results/nrws/{summary.json,summary.md,curves.png}``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np
import optax

from classical.data import load_mnist
from classical.helmholtz import HelmholtzMachine, log_likelihood
from experiments.harness import Cells, Checkpoint, Method, MethodSpec, Registry, cell_key, train
from experiments.harness.analysis import first_below
from experiments.harness.cli import Study
from experiments.harness.report import fmt, markdown_table, save_panels
from experiments.harness.store import atomic_write_json, atomic_write_text, checkpoint_dir


def _hm(method, opt):
    def build(lr, sizes):
        return HelmholtzMachine(sizes, method, opt(lr))
    return build


METHODS = Registry(
    MethodSpec("ws", "WS (SGD)", _hm("ws", optax.sgd), (0.01,)),
    MethodSpec("rws-sgd", "RWS (SGD)", _hm("rws", optax.sgd), (0.01,)),
    MethodSpec("rws-adam", "RWS (Adam)", _hm("rws", optax.adam), (1e-3,)),
    MethodSpec("nrws", "NRWS (SGD, α = 0.1)", _hm("nrws", optax.sgd), (0.01,)),
)

DEFAULT = {"methods": list(METHODS), "hidden": [200, 100, 10], "train_size": 3200, "steps": 150,
           "baseline_steps": 150, "seeds": 1, "first_seed": 0, "batch_size": 32, "eval_every": 50, "eval_size": 100,
           "eval_k": 100, "final_size": 200, "final_k": 500}
FULL = dict(DEFAULT, methods=["nrws", "rws-adam", "rws-sgd", "ws"], train_size=10000, steps=1248,
            baseline_steps=2496, seeds=3, eval_every=156, eval_size=200, eval_k=100, final_size=1000, final_k=500)


@functools.cache
def _binarized():
    d = load_mnist()
    rng = np.random.default_rng(0)
    xtr = (rng.uniform(size=d.x_train.shape) < d.x_train).astype(np.float32)
    xte = (rng.uniform(size=d.x_test.shape) < d.x_test).astype(np.float32)
    return xtr, xte


def binarized_mnist(train_size):
    """The first ``train_size`` training images and the test set, binarized stochastically (one draw, seed 0)."""
    xtr, xte = _binarized()
    return xtr[:train_size], xte


def check_config(config):
    """Refuse bad settings before any training."""
    for k in ("train_size", "steps", "baseline_steps", "seeds", "batch_size", "eval_every", "eval_size",
              "eval_k", "final_size", "final_k"):
        if int(config[k]) != config[k] or config[k] < 1:
            raise ValueError(f"{k} must be a positive integer, got {config[k]!r}")
    if not 0 <= config["first_seed"] < config["seeds"]:
        raise ValueError(f"need 0 <= first_seed < seeds, got {config['first_seed']}, {config['seeds']}")
    if config["batch_size"] > config["train_size"]:
        raise ValueError("batch_size exceeds train_size")
    for k in ("eval_k", "final_k"):
        if config[k] < 2 or config[k] % min(config[k], 100):
            raise ValueError(f"{k} must be >= 2 and, above 100, a multiple of 100, got {config[k]}")
    if not config["hidden"] or any(int(h) < 1 for h in config["hidden"]):
        raise ValueError(f"hidden must list positive layer widths, got {config['hidden']}")
    METHODS.select(config["methods"])


_LL = jax.jit(lambda p, x, k, n: log_likelihood(p, x, k, n, chunk=min(n, 100)), static_argnums=3)


@functools.cache
def machine(name: str, sizes: tuple) -> tuple[HelmholtzMachine, object]:
    """The method's Helmholtz machine and its jitted step (built once per process)."""
    spec = METHODS[name]
    hm = spec.build(spec.grid[0], list(sizes))
    return hm, jax.jit(hm.step)


def one_run(name, sizes, xtr, xte, config, seed, steps, checkpoint=None, on_step=None):
    """Train one (method, seed): eval-point test LL, then the final LL (K = final_k) with its SEs."""
    (hm, step), ll = machine(name, tuple(sizes)), _LL
    bs, n = config["batch_size"], xtr.shape[0]

    def do_step(st, batch, key, t):
        st, info = step(st, batch, key)
        return st, {"loss": info["loss"], "ok": info["finite"]}

    method = Method(init=lambda params, key, batch_at: hm.init(key), step=do_step, params=lambda st: st.params,
                    keyed=True)

    def batch_at(t):
        epoch, i = divmod(t * bs, n - n % bs)
        perm = np.random.default_rng(1000 * seed + epoch).permutation(n)
        return xtr[perm[i : i + bs]]

    def evaluate(params, t):
        est, _ = ll(params, xte[: config["eval_size"]], jax.random.PRNGKey(7), config["eval_k"])
        return {"test_ll": float(np.mean(est))}

    every = config["eval_every"]
    run = train(method, None, steps, key=jax.random.PRNGKey(seed), batch_at=batch_at, evaluate=evaluate,
                eval_at=lambda t: t % every == 0, checkpoint=checkpoint, on_step=on_step)
    est, se = ll(run["state"].params, xte[: config["final_size"]], jax.random.PRNGKey(8), config["final_k"])
    est, ev = np.asarray(est), run["evals"]
    if run["diverged"]:
        print(f"[{hm.method} s{seed}] {run['status']}: stopped at step {run['t']}")
    return {"steps": ev["step"], "epochs": [s * bs / n for s in ev["step"]], "wall": ev["wall_time"],
            "cpu": ev["cpu_time"], "test_ll": ev["test_ll"], "final_ll": float(est.mean()),
            "final_ll_se": float(est.std(ddof=1) / np.sqrt(len(est))), "final_mc_se": float(np.mean(se)),
            "status": run["status"], "diverged": run["diverged"]}


def _at_step(r, step):
    """Eval-point test LL at the last evaluation ≤ ``step``."""
    return r["test_ll"][max(i for i, s in enumerate(r["steps"]) if s <= step)]


def summarize(runs, config):
    """Per-method table: final LL (mean, SE over seeds), LL at NRWS's step count, CPU cost, and the
    CPU seconds / epochs to reach the best baseline's last eval-point LL."""
    names = list(runs)
    horizon = min(max(r["steps"][-1] for r in rs) for rs in runs.values())
    base = [m for m in names if m != "nrws"]
    target = max(np.mean([r["test_ll"][-1] for r in runs[m]]) for m in base) if base else None
    table = {}
    for m in names:
        rs = runs[m]
        fin = np.array([r["final_ll"] for r in rs])
        cpu = np.mean([r["cpu"][-1] for r in rs])
        steps = np.mean([r["steps"][-1] for r in rs])
        hits = [None if target is None else first_below(-np.asarray(r["test_ll"]), -target) for r in rs]
        ok = [(r["cpu"][k], r["epochs"][k]) for r, k in zip(rs, hits) if k is not None]
        table[m] = {"final_ll_mean": float(fin.mean()),
                    "final_ll_se_seeds": float(fin.std(ddof=1) / np.sqrt(len(fin))) if len(fin) > 1 else None,
                    "final_ll_se_test": float(np.mean([r["final_ll_se"] for r in rs])),
                    "final_mc_se": float(np.mean([r["final_mc_se"] for r in rs])),
                    "ll_at_horizon": float(np.mean([_at_step(r, horizon) for r in rs])),
                    "steps": float(steps), "epochs": float(np.mean([r["epochs"][-1] for r in rs])),
                    "cpu_s": float(cpu), "wall_s": float(np.mean([r["wall"][-1] for r in rs])),
                    "cpu_ms_per_step": float(1e3 * cpu / steps),
                    "cpu_to_target": float(np.mean([c for c, _ in ok])) if ok else None,
                    "epochs_to_target": float(np.mean([e for _, e in ok])) if ok else None,
                    "reached": f"{len(ok)}/{len(rs)}", "diverged": int(sum(r["diverged"] for r in rs))}
    return table, horizon, target


def run_study(config: dict, outdir, *, fresh: bool = False, progress: bool = True, on_step=None):
    check_config(config)
    outdir = Path(outdir)
    ckdir = checkpoint_dir(outdir, fresh=fresh)
    cells = Cells(Checkpoint(ckdir / "cells.pkl"))
    names = METHODS.select(config["methods"])
    xtr, xte = binarized_mnist(config["train_size"])
    sizes = [784, *config["hidden"]]
    fields = {k: config[k] for k in ("hidden", "train_size", "batch_size", "eval_every", "eval_size", "eval_k",
                                     "final_size", "final_k")}
    runs = {name: [] for name in names}
    for seed in range(config["first_seed"], config["seeds"]):  # seeds outer: a cut-short study has whole seeds
        for name in names:
            spec, steps = METHODS[name], config["steps" if name == "nrws" else "baseline_steps"]
            key = cell_key(method=name, lr=spec.grid[0], seed=seed, steps=steps, **fields)
            path = ckdir / f"{name}-s{seed}-{key[:16]}.run.pkl"
            runs[name].append(cells.run(key, lambda: one_run(name, sizes, xtr, xte, config, seed, steps,
                                                               Checkpoint(path), on_step)))
            Checkpoint(path).clear()  # the cell holds the result now
            print(f"{spec.label} seed {seed}: final test LL {runs[name][-1]['final_ll']:.2f} nats", flush=True)
    table, horizon, target = summarize(runs, config)
    lines = _table_lines(table, names, config, horizon, target)
    verdict = _verdict(table, horizon, target)
    labels = {m: METHODS.label(m) for m in names}
    curves = {labels[m]: [np.asarray(r["test_ll"])[1:] for r in runs[m]] for m in names}  # from the 1st eval on

    def xs(key):
        return {labels[m]: [np.asarray(r[key], float)[1:] for r in runs[m]] for m in names}

    ylabel = f"test LL (nats, K={config['eval_k']}, {config['eval_size']} images)"
    plot = save_panels(outdir / "curves.png", [
        {"curves": curves, "xs": xs("epochs"), "xlabel": "epoch", "ylabel": ylabel, "title": "test LL vs epochs"},
        {"curves": curves, "xs": xs("cpu"), "xlabel": "process CPU seconds (training steps)", "ylabel": ylabel,
         "title": "test LL vs CPU time"}],
        suptitle=f"Helmholtz machines, binarized MNIST {config['hidden']}, {config['train_size']} training images")
    summary = {"config": config, "methods": table, "runs": runs, "horizon_steps": horizon, "target_ll": target,
               "verdict": verdict, "plot": str(plot), "table": "\n".join(lines)}
    atomic_write_json(outdir / "summary.json", summary)
    atomic_write_text(outdir / "summary.md", "# NRWS study\n\n" + "\n".join(lines) + f"\n\n{verdict}\n")
    return summary


def _table_lines(table, names, config, horizon, target):
    rows = []
    for m in names:
        t = table[m]
        rows.append([METHODS.label(m), f"{t['final_ll_mean']:.2f} ± {fmt(t['final_ll_se_seeds'], '.2f')}",
                     f"{t['final_ll_se_test']:.2f}", f"{t['final_mc_se']:.3f}", f"{t['ll_at_horizon']:.2f}",
                     f"{t['epochs']:.1f}", f"{t['cpu_s']:.0f}", f"{t['cpu_ms_per_step']:.1f}",
                     f"{fmt(t['epochs_to_target'], '.2f')} / {fmt(t['cpu_to_target'], '.1f')} ({t['reached']})"])
    head = ["method", f"final test LL (K={config['final_k']}, {config['final_size']} images; mean ± SE over "
            f"{config['seeds']} seeds)", "SE over images", "IS SE per image", f"eval LL at step {horizon}",
            "epochs", "CPU s", "CPU ms/step",
            f"epochs / CPU s to eval LL ≥ {fmt(target, '.2f')} (best baseline's last)"]
    return markdown_table(head, rows)


def _verdict(table, horizon, target):
    if "nrws" not in table or len(table) < 2:
        return "No verdict: the comparison needs NRWS and at least one baseline."
    base = [m for m in table if m != "nrws"]
    nrws = table["nrws"]
    best_eq = max(base, key=lambda m: table[m]["ll_at_horizon"])
    better = nrws["ll_at_horizon"] > table[best_eq]["ll_at_horizon"]
    cheaper = [m for m in base if table[m]["cpu_to_target"] is not None and (
        nrws["cpu_to_target"] is None or table[m]["cpu_to_target"] < nrws["cpu_to_target"])]
    return (f"At equal steps ({horizon}) NRWS's eval LL is {nrws['ll_at_horizon']:.2f} against the best baseline's "
            f"{table[best_eq]['ll_at_horizon']:.2f} ({METHODS.label(best_eq)}): "
            + ("better" if better else "not better") + ". In CPU seconds to the best baseline's last eval LL "
            f"({target:.2f}): NRWS " + (f"{nrws['cpu_to_target']:.1f} s" if nrws["cpu_to_target"] is not None else
                                        "never reaches it")
            + ("; no baseline gets there sooner." if not cheaper else
               "; sooner: " + ", ".join(f"{METHODS.label(m)} {table[m]['cpu_to_target']:.1f} s" for m in cheaper) + "."))


def _flags(parser) -> None:
    for k in ("train_size", "steps", "baseline_steps", "seeds", "first_seed", "eval_every", "eval_size", "eval_k",
              "final_size", "final_k"):
        parser.add_argument("--" + k.replace("_", "-"), dest=k, type=int)
    parser.add_argument("--hidden", type=int, nargs="+", help="hidden layer widths (default 200 100 10)")


STUDY = Study("nrws", __doc__, run_study, DEFAULT, FULL, _flags, lambda s: [s["verdict"], f"plot: {s['plot']}"])
main = STUDY.main


if __name__ == "__main__":
    raise SystemExit(main())
