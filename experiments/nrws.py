"""Helmholtz machines on binarized MNIST: wake-sleep, reweighted wake-sleep (SGD, Adam) and natural RWS.

The NRWS paper's setting (Várady, Volpi, Malagò & Ay 2022): real MNIST from
``classical.data.load_mnist()`` binarized stochastically (one fixed draw, seed 0),
generative/recognition SBNs [784, 200, 100, 10], batch 32, K = 5 importance samples,
SGD at 0.01 (Adam at 1e-3 for RWS-Adam), NRWS damping α = 0.1 with the (1 + α) rescaling.
Test log-likelihood by importance sampling with the recognition net as proposal
(``classical.helmholtz.log_likelihood``), on a test subset, against steps and wall time.

    qgeom nrws            # quick: 3 200 training images, 150 steps, 1 seed
    qgeom nrws --full     # 60 000 images, 3 epochs, 3 seeds, final LL with K = 1000

Writes ``results/nrws/{summary.json,summary.md,curves.png}``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import optax

from classical.data import load_mnist
from classical.helmholtz import HelmholtzMachine, log_likelihood
from experiments.harness import Method, MethodSpec, Registry, train
from experiments.harness.cli import Study
from experiments.harness.report import markdown_table, save_panels
from experiments.harness.store import atomic_write_json, atomic_write_text

SIZES = [784, 200, 100, 10]


def _hm(method, opt):
    def build(lr):
        return HelmholtzMachine(SIZES, method, opt(lr))
    return build


METHODS = Registry(
    MethodSpec("ws", "WS (SGD)", _hm("ws", optax.sgd), (0.01,)),
    MethodSpec("rws-sgd", "RWS (SGD)", _hm("rws", optax.sgd), (0.01,)),
    MethodSpec("rws-adam", "RWS (Adam)", _hm("rws", optax.adam), (1e-3,)),
    MethodSpec("nrws", "NRWS (SGD, α = 0.1)", _hm("nrws", optax.sgd), (0.01,)),
)

DEFAULT = {"methods": list(METHODS), "train_size": 3200, "steps": 150, "seeds": 1, "batch_size": 32,
           "eval_every": 50, "eval_size": 100, "eval_k": 100, "final_size": 200, "final_k": 500}
FULL = dict(DEFAULT, train_size=60000, steps=5625, seeds=3, eval_every=625, eval_size=500, eval_k=200,
            final_size=1000, final_k=1000)


def binarized_mnist(train_size):
    d = load_mnist()
    rng = np.random.default_rng(0)
    xtr = (rng.uniform(size=d.x_train.shape) < d.x_train).astype(np.float32)[:train_size]
    xte = (rng.uniform(size=d.x_test.shape) < d.x_test).astype(np.float32)
    return xtr, xte


def one_run(hm: HelmholtzMachine, xtr, xte, config, seed):
    ll = jax.jit(lambda p, x, k, n: log_likelihood(p, x, k, n, chunk=min(n, 100)), static_argnums=3)
    step = jax.jit(hm.step)
    bs, n = config["batch_size"], xtr.shape[0]
    method = Method(init=lambda params, key, batch_at: hm.init(key),
                    step=lambda st, batch, key, t: step(st, batch, key),
                    params=lambda st: st.params, keyed=True)

    def batch_at(t):
        epoch, i = divmod(t * bs, n)
        perm = np.random.default_rng(1000 * seed + epoch).permutation(n)
        return xtr[perm[i : i + bs]]

    def evaluate(params, t):
        est, _ = ll(params, xte[: config["eval_size"]], jax.random.PRNGKey(7), config["eval_k"])
        return {"test_ll": float(np.mean(est))}

    every = config["eval_every"]
    run = train(method, None, config["steps"], key=jax.random.PRNGKey(seed), batch_at=batch_at,
                evaluate=evaluate, eval_at=lambda t: t % every == 0)
    est, se = ll(run["state"].params, xte[: config["final_size"]], jax.random.PRNGKey(8), config["final_k"])
    est = np.asarray(est)
    return {"steps": run["evals"]["step"], "wall": run["evals"]["wall_time"], "test_ll": run["evals"]["test_ll"],
            "final_ll": float(est.mean()), "final_ll_se": float(est.std(ddof=1) / np.sqrt(len(est))),
            "final_mc_se": float(np.mean(se)), "status": run["status"], "wall_total": run["evals"]["wall_time"][-1]}


def run_study(config: dict, outdir, *, fresh: bool = False, progress: bool = True):
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    names = METHODS.select(config["methods"])
    xtr, xte = binarized_mnist(config["train_size"])
    runs = {}
    for name in names:
        spec = METHODS[name]
        runs[name] = [one_run(spec.make(spec.grid[0]), xtr, xte, config, seed) for seed in range(config["seeds"])]
        print(f"{spec.label}: final test LL {np.mean([r['final_ll'] for r in runs[name]]):.2f} nats")
    rows, table = [], {}
    for name in names:
        fin = np.array([r["final_ll"] for r in runs[name]])
        wall = np.mean([r["wall_total"] for r in runs[name]])
        table[name] = {"final_ll_mean": float(fin.mean()), "final_ll_sd_seeds": float(fin.std()),
                       "final_ll_se_test": float(np.mean([r["final_ll_se"] for r in runs[name]])),
                       "final_mc_se": float(np.mean([r["final_mc_se"] for r in runs[name]])),
                       "wall_s": float(wall), "s_per_step": float(wall / config["steps"])}
        t = table[name]
        rows.append([METHODS.label(name), f"{t['final_ll_mean']:.2f} ± {t['final_ll_sd_seeds']:.2f}",
                     f"{t['final_ll_se_test']:.2f}", f"{t['final_mc_se']:.3f}", f"{t['wall_s']:.1f}",
                     f"{1e3 * t['s_per_step']:.1f}"])
    lines = markdown_table(["method", f"test LL (K={config['final_k']}, {config['final_size']} images; mean ± sd "
                            f"over {config['seeds']} seeds)", "SE over images", "IS SE per image", "train wall s",
                            "ms/step"], rows)
    best = max(names, key=lambda m: table[m]["final_ll_mean"])
    verdict = (f"Best final test LL: {METHODS.label(best)}. "
               + ("NRWS reaches the best log-likelihood in this run" if best == "nrws" else
                  "NRWS does not reach the best log-likelihood in this run")
               + f" ({config['steps']} steps of batch {config['batch_size']}; a short run is not the paper's study).")
    curves = {METHODS.label(m): [np.asarray(r["test_ll"]) for r in runs[m]] for m in names}
    xs_step = {METHODS.label(m): [np.asarray(r["steps"], float) for r in runs[m]] for m in names}
    xs_wall = {METHODS.label(m): [np.asarray(r["wall"]) for r in runs[m]] for m in names}
    plot = save_panels(outdir / "curves.png", [
        {"curves": curves, "xs": xs_step, "xlabel": "step", "ylabel": "test log-likelihood (nats)",
         "title": "test LL vs steps"},
        {"curves": curves, "xs": xs_wall, "xlabel": "wall time (s)", "ylabel": "test log-likelihood (nats)",
         "title": "test LL vs wall time"}], suptitle="Helmholtz machines, binarized MNIST [200,100,10]")
    summary = {"config": config, "methods": table, "runs": runs, "verdict": verdict, "plot": str(plot),
               "table": "\n".join(lines)}
    atomic_write_json(outdir / "summary.json", summary)
    atomic_write_text(outdir / "summary.md", "# NRWS study\n\n" + "\n".join(lines) + f"\n\n{verdict}\n")
    return summary


def _flags(parser) -> None:
    for k in ("train_size", "steps", "seeds", "eval_every", "eval_size", "eval_k", "final_size", "final_k"):
        parser.add_argument("--" + k.replace("_", "-"), dest=k, type=int)


STUDY = Study("nrws", __doc__, run_study, DEFAULT, FULL, _flags, lambda s: [s["verdict"], f"plot: {s['plot']}"])
main = STUDY.main


if __name__ == "__main__":
    raise SystemExit(main())
