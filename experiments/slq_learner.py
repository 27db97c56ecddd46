"""The SLQ learner (Granziol, Zohren & Roberts, JMLR 2022) against tuned SGD and Adam.

Every ``period`` steps the learner runs stochastic Lanczos quadrature on the current batch's
Hessian (``probes`` Rademacher probes × ``lanczos_steps``) and sets heavy-ball SGD's learning
rate and momentum from it (``qgeom.spectral.slq_hyperparameters``: α = 4/(√λ_hi + √λ_lo)²,
ρ = ((√κ − 1)/(√κ + 1))², λ_hi the top Ritz value, λ_lo the density's mean positive
curvature; no tuning). A second, conservative variant (``slq-gd``) takes the classical step
α = 1/λ_hi without momentum. SGD (momentum 0.9) and Adam are tuned on learning-rate grids. On an
MNIST-1D tanh MLP (40-100-100-10, batch ``batch``): test accuracy every ``eval_every`` steps,
steps and process CPU seconds (training only, compilation and evaluation excluded; the
learner's SLQ included) to ``target`` test accuracy, for the learner, the best grid point of
each baseline and the baselines' whole grid (the tuning cost the learner avoids).

    qgeom slq-learner            # quick: 2 seeds, 2000 steps
    qgeom slq-learner --full     # 3 seeds, 4000 steps, finer grids

Writes ``results/slq_learner/{summary.json,summary.md,slq_learner.png}``; finished runs are
checkpointed (``Cells``).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from tqdm import tqdm

from classical.data import load_dataset
from classical.models import mlp
from experiments.harness.cli import Study
from experiments.harness.cli import main as cli_main
from experiments.harness.report import markdown_table
from experiments.harness.store import (
    Cells,
    Checkpoint,
    atomic_savefig,
    atomic_write_json,
    atomic_write_text,
    cell_key,
)
from qgeom.spectral import slq_hyperparameters

DEFAULT = {"num_samples": 6000, "hidden": [100, 100], "batch": 128, "steps": 2000, "eval_every": 50,
           "target": 0.6, "seeds": [0, 1], "period": 50, "probes": 3, "lanczos_steps": 20, "max_momentum": 0.99,
           "sgd_lrs": [0.01, 0.03, 0.1, 0.3, 1.0], "adam_lrs": [3e-4, 1e-3, 3e-3, 1e-2]}
FULL = dict(DEFAULT, steps=4000, seeds=[0, 1, 2], sgd_lrs=[0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
            adam_lrs=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])


@partial(jax.jit, static_argnums=(0,))
def _heavy_ball_chunk(net, params, velocity, lr, momentum, x, y, idx):
    """``len(idx)`` heavy-ball steps v ← ρv + g, θ ← θ − αv."""
    def step(carry, i):
        p, v = carry
        loss, g = jax.value_and_grad(net.loss)(p, x[i], y[i])
        v = jax.tree_util.tree_map(lambda a, b: momentum * a + b, v, g)
        return (jax.tree_util.tree_map(lambda a, b: a - lr * b, p, v), v), loss

    (params, velocity), losses = jax.lax.scan(step, (params, velocity), idx)
    return params, velocity, losses


@partial(jax.jit, static_argnums=(0,))
def _adam_chunk(net, params, state, lr, x, y, idx):
    tx = optax.adam(lr)

    def step(carry, i):
        p, s = carry
        loss, g = jax.value_and_grad(net.loss)(p, x[i], y[i])
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    (params, state), losses = jax.lax.scan(step, (params, state), idx)
    return params, state, losses


@partial(jax.jit, static_argnums=(0, 5, 6, 7))
def _slq_step(net, params, xb, yb, key, probes, steps, max_momentum):
    flat, unravel = ravel_pytree(params)
    grad = jax.grad(lambda f: net.loss(unravel(f), xb, yb))
    mv = lambda v: jax.jvp(grad, (flat,), (v.astype(flat.dtype),))[1]  # noqa: E731
    return slq_hyperparameters(mv, flat.shape[0], key, probes, steps, max_momentum, dtype=jnp.float32)


@partial(jax.jit, static_argnums=(0,))
def _accuracy(net, params, x, y):
    return jnp.mean(jnp.argmax(net.apply(params, x), -1) == y)


def _run(net, data, method, lr, seed, config):
    """One training run; returns accuracies, CPU seconds and (learner) hyper-parameters per eval."""
    x, y, xt, yt = data
    rng = np.random.default_rng(seed)
    params = net.init(jax.random.PRNGKey(seed))
    every = config["eval_every"]
    if method == "adam":
        state = optax.adam(lr).init(params)
    else:
        state = jax.tree_util.tree_map(jnp.zeros_like, params)
    key = jax.random.PRNGKey(seed + 1000)
    out = {"step": [0], "accuracy": [float(_accuracy(net, params, xt, yt))], "cpu": [0.0], "lr": [], "momentum": [],
           "lambda_max": [], "kappa": [], "status": "ok"}
    cpu, t = 0.0, 0
    alpha, rho = lr, 0.9
    while t < config["steps"]:
        idx = jnp.asarray(np.stack([rng.choice(len(x), config["batch"], replace=False) for _ in range(every)]))
        start = time.process_time()
        if method.startswith("slq") and t % config["period"] == 0:
            key, sub = jax.random.split(key)
            hp = _slq_step(net, params, x[idx[0]], y[idx[0]], sub, config["probes"], config["lanczos_steps"],
                           config["max_momentum"])
            alpha, rho = float(hp["learning_rate"]), float(hp["momentum"])
            if method == "slq-gd":
                alpha, rho = 1.0 / float(hp["lambda_max"]), 0.0
            out["lr"].append(alpha)
            out["momentum"].append(rho)
            out["lambda_max"].append(float(hp["lambda_max"]))
            out["kappa"].append(float(hp["kappa"]))
            if not np.isfinite(alpha):
                out["status"] = f"no positive curvature at step {t}"
                break
        if method == "adam":
            params, state, losses = _adam_chunk(net, params, state, jnp.float32(lr), x, y, idx)
        else:
            params, state, losses = _heavy_ball_chunk(net, params, state, jnp.float32(alpha), jnp.float32(rho),
                                                      x, y, idx)
        losses = np.asarray(losses)
        cpu += time.process_time() - start
        t += every
        if not np.all(np.isfinite(losses)):
            out["status"] = f"non-finite loss by step {t}"
            break
        out["step"].append(t)
        out["accuracy"].append(float(_accuracy(net, params, xt, yt)))
        out["cpu"].append(cpu)
    return out


def _compile(net, data, config):
    """Compile the chunk, SLQ and accuracy functions once (outside every clock)."""
    x, y, xt, yt = data
    p = net.init(jax.random.PRNGKey(0))
    idx = jnp.zeros((config["eval_every"], config["batch"]), jnp.int32)
    one = jnp.float32(1e-3)
    jax.block_until_ready((_heavy_ball_chunk(net, p, p, one, one, x, y, idx),
                           _adam_chunk(net, p, optax.adam(one).init(p), one, x, y, idx),
                           _slq_step(net, p, x[idx[0]], y[idx[0]], jax.random.PRNGKey(0), config["probes"],
                                     config["lanczos_steps"], config["max_momentum"]),
                           _accuracy(net, p, xt, yt)))


def _reach(run, target):
    for s, a, c in zip(run["step"], run["accuracy"], run["cpu"]):
        if a >= target:
            return s, c
    return None, None


def run(config, outdir=None, *, fresh=False, progress=False):
    """Run the study; writes summary.json, summary.md and slq_learner.png under ``outdir``."""
    from experiments.classical_methods import float32_mode, single_threaded_blas

    config = {**DEFAULT, **config}
    if config["steps"] % config["eval_every"] or config["period"] % config["eval_every"]:
        raise ValueError("steps and period must be multiples of eval_every")
    outdir = Path(outdir or Path("results") / "slq_learner")
    data = load_dataset("mnist1d", num_samples=config["num_samples"])
    cells = Cells(Checkpoint(outdir / "cells.pkl"), fresh=fresh)
    jobs = [("slq", None), ("slq-gd", None)] + [("sgd", lr) for lr in config["sgd_lrs"]] + [("adam", lr) for lr in config["adam_lrs"]]
    fixed = {k: config[k] for k in ("num_samples", "hidden", "batch", "steps", "eval_every")}
    runs = {}
    with float32_mode(), single_threaded_blas():
        arrays = tuple(jnp.asarray(a) for a in (data.x_train, data.y_train, data.x_test, data.y_test))
        net = mlp([arrays[0].shape[1], *config["hidden"], 10], "tanh", "categorical")
        _compile(net, arrays, config)
        todo = [(m, lr, s) for m, lr in jobs for s in config["seeds"]]
        for m, lr, s in tqdm(todo, desc="runs", disable=None if progress else True):
            extra = ({k: config[k] for k in ("period", "probes", "lanczos_steps", "max_momentum")}
                     if m.startswith("slq") else {})
            key = cell_key(method=m, lr=lr, seed=s, **fixed, **extra)
            runs.setdefault((m, lr), []).append(cells.run(key, lambda m=m, lr=lr, s=s: _run(net, arrays, m, lr, s,
                                                                                            config)))
    summary = _summarize(runs, config)
    summary["plot"] = str(outdir / "slq_learner.png")
    _plot(runs, summary, outdir / "slq_learner.png")
    atomic_write_json(outdir / "summary.json", summary)
    atomic_write_text(outdir / "summary.md", "# SLQ learner vs tuned SGD and Adam (MNIST-1D MLP)\n\n"
                      + summary["table"] + "\n")
    return summary


def _summarize(runs, config):
    target = config["target"]
    rows = {}
    for (m, lr), rs in runs.items():
        reach = [_reach(r, target) for r in rs]
        steps = [s for s, _ in reach if s is not None]
        cpus = [c for _, c in reach if c is not None]
        rows[(m, lr)] = {"method": m, "lr": lr, "reached": len(steps), "runs": len(rs),
                         "steps_to_target": float(np.mean(steps)) if len(steps) == len(rs) else None,
                         "cpu_to_target": float(np.mean(cpus)) if len(cpus) == len(rs) else None,
                         "final_accuracy": float(np.mean([r["accuracy"][-1] for r in rs])),
                         "cpu_total": float(np.mean([r["cpu"][-1] for r in rs])),
                         "status": sorted({r["status"] for r in rs})}
    best = {}
    for m in ("sgd", "adam"):
        cand = [r for r in rows.values() if r["method"] == m]
        ok = [r for r in cand if r["steps_to_target"] is not None]
        best[m] = min(ok, key=lambda r: r["steps_to_target"]) if ok else max(cand, key=lambda r: r["final_accuracy"])
        best[m] = dict(best[m], grid_cpu_total=float(sum(r["cpu_total"] * r["runs"] for r in cand)))
    slq_runs = runs[("slq", None)]
    learner = dict(rows[("slq", None)],
                   lr_range=[float(min(min(r["lr"]) for r in slq_runs)), float(max(max(r["lr"]) for r in slq_runs))],
                   momentum_range=[float(min(min(r["momentum"]) for r in slq_runs)),
                                   float(max(max(r["momentum"]) for r in slq_runs))])
    fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
    table = markdown_table(
        ["method", "lr", f"runs reaching {target:.0%}", "steps to target", "CPU-s to target", "final test acc",
         "CPU-s per run"],
        [[r["method"], "SLQ" if r["lr"] is None else f"{r['lr']:g}", f"{r['reached']}/{r['runs']}",
          fmt(r["steps_to_target"], ".0f"), fmt(r["cpu_to_target"], ".1f"), f"{r['final_accuracy']:.3f}",
          f"{r['cpu_total']:.1f}"] for r in rows.values()])
    table += ["", f"SLQ learner: lr ∈ [{learner['lr_range'][0]:.3g}, {learner['lr_range'][1]:.3g}], momentum ∈ "
              f"[{learner['momentum_range'][0]:.3f}, {learner['momentum_range'][1]:.3f}]"]
    for m, b in best.items():
        table.append(f"best {m}: lr {b['lr']:g}; its whole grid cost {b['grid_cpu_total']:.0f} CPU-s (all seeds)")
    return {"config": config, "rows": list(rows.values()), "best": best, "learner": learner, "table": "\n".join(table)}


def _plot(runs, summary, path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    show = [("slq", None, "SLQ learner"), ("slq-gd", None, "SLQ 1/λ_max, no momentum")] + [(m, summary["best"][m]["lr"], f"{m} lr {summary['best'][m]['lr']:g}")
                                             for m in ("sgd", "adam")]
    for m, lr, label in show:
        rs = runs[(m, lr)]
        n = min(len(r["step"]) for r in rs)
        acc = np.mean([r["accuracy"][:n] for r in rs], axis=0)
        axes[0].plot(rs[0]["step"][:n], acc, label=label)
        axes[1].plot(np.mean([r["cpu"][:n] for r in rs], axis=0), acc, label=label)
    for ax, xl in zip(axes[:2], ("step", "process CPU seconds (training)")):
        ax.axhline(summary["config"]["target"], ls=":", color="gray")
        ax.set(xlabel=xl, ylabel="test accuracy")
        ax.legend(fontsize=7)
    r = runs[("slq", None)][0]
    t = np.arange(len(r["lr"])) * summary["config"]["period"]
    axes[2].semilogy(t, r["lr"], label="lr α")
    axes[2].semilogy(t, 1 - np.asarray(r["momentum"]), label="1 − momentum ρ")
    axes[2].set(xlabel="step", title="SLQ learner's hyper-parameters (seed 0)")
    axes[2].legend(fontsize=7)
    atomic_savefig(fig, path)


def _flags(parser):
    parser.add_argument("--steps", type=int, help="training steps per run")
    parser.add_argument("--target", type=float, help="target test accuracy")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds")


STUDY = Study("slq-learner", __doc__, run, DEFAULT, FULL, _flags, lambda s: [f"plot: {s['plot']}"],
              results="slq_learner")


def main(argv=None) -> int:
    return cli_main(STUDY, argv)
