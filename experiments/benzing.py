"""Benzing's verdict (ICML 2022): does K-FAC beat exact natural gradient, and FOOF beat K-FAC?

On an MNIST-1D tanh MLP classifier (40-100-100-10, batch ``batch``), with equal tuning
budgets (``len(grid)`` points each, best by final training loss): exact natural gradient —
``classical.HessianFree`` solving (F + λI)δ = −∇h by CG to relative residual ``cg_tol`` on
exact Fisher(= GGN)-vector products, Levenberg–Marquardt λ —, K-FAC (quadratic-model α, μ and
LM damping, §6–7 of Martens & Grosse), FOOF (fixed lr, momentum 0.9, damping) and Adam.
Training loss on the whole training set per step and per process CPU second (training only).

Why (the spectra): along the best K-FAC run, at ``probe_steps``, on a fresh batch with the
exact Fisher F and λ = K-FAC's damping there, each preconditioner's direction d = P⁻¹g
(K-FAC F̃⁻¹, FOOF (A + λ_F I)⁻¹ per layer from the same A factor, SGD d = g) is compared with
exact NGD d* = (F + λI)⁻¹g:

* efficiency e = (gᵀd)² / (dᵀ(F + λI)d · gᵀd*) ∈ [0, 1]: the decrease of the damped quadratic
  model along d with its best step, relative to the exact step's (= cos² of d and d* in the
  F + λI inner product);
* Rayleigh ratio r = dᵀFd / dᵀPd = dᵀFd / gᵀd: the Fisher's curvature along d relative to the
  curvature P assumes there (1: P right along its own step; < 1: P over-estimates, the step
  is short);
* the Euclidean cosine of d and d*;
* transfer: each direction's (exact NGD's included) efficiency in the damped quadratic model
  of a second, fresh batch — how much of a step fitted to one batch's curvature survives on
  the next.

    qgeom benzing            # quick: 300 steps, 1 seed
    qgeom benzing --full     # 600 steps, 2 seeds

Writes ``results/benzing/{summary.json,summary.md,benzing.png}``; finished runs are
checkpointed (``Cells``).
"""

from __future__ import annotations

import time
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

DEFAULT = {"num_samples": 6000, "hidden": [100, 100], "batch": 256, "steps": 300, "eval_every": 25, "seeds": [0],
           "cg_tol": 1e-3, "cg_maxiter": 500, "probe_steps": [25, 100, 300],
           "grids": {"hf": [{"damping": d} for d in (1e-2, 1e-1, 1.0, 10.0)],
                     "kfac": [{"damping": d} for d in (1e-3, 1e-2, 1e-1, 1.0)],
                     "foof": [{"lr": lr, "damping": d} for lr in (0.03, 0.3) for d in (0.1, 1.0)],
                     "adam": [{"lr": lr} for lr in (1e-3, 3e-3, 1e-2, 3e-2)]}}
FULL = dict(DEFAULT, steps=600, seeds=[0, 1], probe_steps=[25, 150, 300, 600])
LABELS = {"hf": "exact NGD (Hessian-free, CG)", "kfac": "K-FAC", "foof": "FOOF", "adam": "Adam"}


class _Adam:
    """optax Adam with the ``init`` / ``step(params, state, batch)`` shape of the curvature optimizers."""

    def __init__(self, net, lr):
        self.net, self.tx = net, optax.adam(lr)
        self._step = jax.jit(self._fused)

    def init(self, params):
        return self.tx.init(params)

    def _fused(self, params, state, x, y):
        loss, g = jax.value_and_grad(self.net.loss)(params, x, y)
        u, state = self.tx.update(g, state, params)
        return optax.apply_updates(params, u), state, {"loss": loss}

    def step(self, params, state, batch):
        return self._step(params, state, *batch)


def _build(net, method, hp, config, seed):
    from classical.foof import FOOF
    from classical.hessian_free import HessianFree
    from classical.kfac import KFAC

    if method == "hf":
        return HessianFree(net, damping=hp["damping"], cg_tol=config["cg_tol"], cg_maxiter=config["cg_maxiter"],
                           seed=seed)
    if method == "kfac":
        return KFAC(net, damping=hp["damping"], min_damping=1e-5, max_damping=1e3, seed=seed)
    if method == "foof":
        return FOOF(net, learning_rate=hp["lr"], damping=hp["damping"], seed=seed)
    return _Adam(net, hp["lr"])


def _train(net, data, method, hp, seed, config, keep=()):
    """One run: full training loss every ``eval_every`` steps, CPU seconds, CG statistics, and
    (``keep``) the K-FAC params/state at those steps."""
    x, y = data
    opt = _build(net, method, hp, config, seed)
    params = net.init(jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed + 1)
    jax.block_until_ready(opt.step(params, opt.init(params), (x[:config["batch"]], y[:config["batch"]])))  # compile
    state = opt.init(params)
    loss_fn = jax.jit(net.loss)
    out = {"step": [0], "loss": [float(loss_fn(params, x, y))], "cpu": [0.0], "cg_iterations": [],
           "cg_residual": [], "status": "ok"}
    kept = {}
    cpu = 0.0
    for t in range(1, config["steps"] + 1):
        if t - 1 in keep:
            kept[t - 1] = (params, state)
        idx = rng.choice(len(x), config["batch"], replace=False)
        start = time.process_time()
        params, state, info = opt.step(params, state, (x[idx], y[idx]))
        jax.block_until_ready(params)
        cpu += time.process_time() - start
        if method == "hf":
            out["cg_iterations"].append(int(info["cg_iterations"]))
            out["cg_residual"].append(float(info["cg_residual"]))
        if t % config["eval_every"] == 0 or t == config["steps"]:
            out["step"].append(t)
            out["loss"].append(float(loss_fn(params, x, y)))
            out["cpu"].append(cpu)
            if not np.isfinite(out["loss"][-1]):
                out["status"] = f"non-finite loss at step {t}"
                break
    if config["steps"] in keep:
        kept[config["steps"]] = (params, state)
    return out, kept


def _directions(net, opt, params, state, batch, fresh, foof_damping, cg_tol=1e-6):
    """Efficiency e, Rayleigh ratio r and cosine of K-FAC, FOOF and SGD directions against
    exact NGD (F + λI)⁻¹g with λ = K-FAC's damping (+ l2) at this state, all from ``batch``;
    ``transfer``: the same directions' efficiency in the damped quadratic model of the
    ``fresh`` batch (exact NGD's included), e₂(d) = (g₂ᵀd)₊² / (dᵀ(F₂ + λI)d · g₂ᵀ(F₂ + λI)⁻¹g₂)."""
    from classical.hessian_free import HessianFree
    from qgeom.spectral import pcg

    lam = float(state.damping) + opt.l2_reg

    def model(xb, yb):
        grads = jax.grad(net.loss)(params, xb, yb)
        fmv = HessianFree(net).ggn_mv(params, xb)
        g = ravel_pytree(grads)[0]
        d_star, info = pcg(lambda v: fmv(v) + lam * v, g, tol=cg_tol, maxiter=5 * g.shape[0])
        return grads, g, fmv, d_star, bool(info["converged"])

    def efficiency(g, fmv, gd_star, d):
        return max(float(g @ d), 0.0) ** 2 / ((float(d @ fmv(d)) + lam * float(d @ d)) * gd_star)

    grads, g, fmv, d_star, ok = model(*batch)
    _, g2, fmv2, d2_star, ok2 = model(*fresh)
    foof = {k: jnp.linalg.solve(a + foof_damping * jnp.eye(a.shape[0]), grads[k]) for k, a in state.A.items()}
    dirs = {"kfac": ravel_pytree(opt.precondition(state, grads))[0], "foof": ravel_pytree(foof)[0], "sgd": g}
    gd_star, g2d2_star = float(g @ d_star), float(g2 @ d2_star)
    res = {"lambda": lam, "cg_converged": ok and ok2, "grad_norm": float(jnp.linalg.norm(g)),
           "transfer": {"ngd": efficiency(g2, fmv2, g2d2_star, d_star)}}
    for name, d in dirs.items():
        res[name] = {"efficiency": efficiency(g, fmv, gd_star, d), "rayleigh": float(d @ fmv(d)) / float(g @ d),
                     "cosine": float(d @ d_star / (jnp.linalg.norm(d) * jnp.linalg.norm(d_star)))}
        res["transfer"][name] = efficiency(g2, fmv2, g2d2_star, d)
    return res


def run(config, outdir=None, *, fresh=False, progress=False):
    """Run the study; writes summary.json, summary.md and benzing.png under ``outdir``."""
    from experiments.classical_methods import float32_mode, single_threaded_blas

    config = {**DEFAULT, **config}
    if any(not g for g in config["grids"].values()) or len({len(g) for g in config["grids"].values()}) != 1:
        raise ValueError("every method needs a non-empty grid of the same size (equal tuning budgets)")
    outdir = Path(outdir or Path("results") / "benzing")
    data = load_dataset("mnist1d", num_samples=config["num_samples"])
    cells = Cells(Checkpoint(outdir / "cells.pkl"), fresh=fresh)
    fixed = {k: config[k] for k in ("num_samples", "hidden", "batch", "steps", "eval_every", "cg_tol", "cg_maxiter")}
    runs = {}
    with float32_mode(), single_threaded_blas():
        x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
        net = mlp([x.shape[1], *config["hidden"], 10], "tanh", "categorical")
        todo = [(m, i, s) for m, grid in config["grids"].items() for i in range(len(grid)) for s in config["seeds"]]
        for m, i, s in tqdm(todo, desc="runs", disable=None if progress else True):
            hp = config["grids"][m][i]
            key = cell_key(method=m, seed=s, **hp, **fixed)
            runs.setdefault((m, i), []).append(cells.run(key, lambda m=m, hp=hp, s=s: _train(net, (x, y), m, hp, s,
                                                                                              config)[0]))
        final = {k: float(np.mean([r["loss"][-1] if np.isfinite(r["loss"][-1]) else np.inf for r in rs]))
                 for k, rs in runs.items()}
        best = {m: min(range(len(g)), key=lambda i, m=m: final[(m, i)]) for m, g in config["grids"].items()}
        probes = _probe(net, (x, y), config, best)
    summary = _summarize(runs, final, best, probes, config)
    summary["plot"] = str(outdir / "benzing.png")
    _plot(runs, summary, outdir / "benzing.png")
    atomic_write_json(outdir / "summary.json", summary)
    atomic_write_text(outdir / "summary.md", "# Benzing's verdict (MNIST-1D MLP)\n\n" + summary["table"] + "\n")
    return summary


def _probe(net, data, config, best):
    """Direction diagnostics along the best K-FAC run (seed of the first run)."""
    x, y = data
    hp = config["grids"]["kfac"][best["kfac"]]
    seed = config["seeds"][0]
    keep = [s for s in config["probe_steps"] if s <= config["steps"]]
    _, kept = _train(net, data, "kfac", hp, seed, config, keep=set(keep))
    opt = _build(net, "kfac", hp, config, seed)
    foof_damping = config["grids"]["foof"][best["foof"]]["damping"]
    rng = np.random.default_rng(seed + 99)
    out = []
    for s in keep:
        params, state = kept[s]
        idx, idx2 = (rng.choice(len(x), config["batch"], replace=False) for _ in range(2))
        out.append({"step": s, **_directions(net, opt, params, state, (x[idx], y[idx]), (x[idx2], y[idx2]),
                                             foof_damping)})
    return out


def _summarize(runs, final, best, probes, config):
    rows = []
    for (m, i), rs in runs.items():
        hp = config["grids"][m][i]
        cg = [c for r in rs for c in r["cg_iterations"]]
        resid = [c for r in rs for c in r["cg_residual"]]
        rows.append({"method": m, "hp": hp, "final_loss": final[(m, i)], "best": best[m] == i,
                     "cpu_per_step": float(np.mean([r["cpu"][-1] / max(r["step"][-1], 1) for r in rs])),
                     "cg_iterations_mean": float(np.mean(cg)) if cg else None,
                     "cg_converged_fraction": float(np.mean(np.asarray(resid) <= config["cg_tol"] * 1.0001))
                     if resid else None, "status": sorted({r["status"] for r in rs})})
    fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
    lines = markdown_table(["method", "setting", "final train loss", "best of grid", "CPU-ms / step",
                            "mean CG iterations", "CG converged"],
                           [[LABELS[r["method"]], ", ".join(f"{k} {v:g}" for k, v in r["hp"].items()),
                             f"{r['final_loss']:.4f}", "✓" if r["best"] else "", f"{1e3 * r['cpu_per_step']:.1f}",
                             fmt(r["cg_iterations_mean"], ".0f"), fmt(r["cg_converged_fraction"], ".0%")]
                            for r in rows])
    lines += ["", "Directions along the best K-FAC run vs exact NGD (F + λI)⁻¹g (λ = K-FAC's damping):", ""]
    lines += markdown_table(["step", "λ", "e K-FAC", "e FOOF", "e SGD", "r K-FAC", "r FOOF", "r SGD", "cos K-FAC",
                             "cos FOOF", "cos SGD"],
                            [[str(p["step"]), f"{p['lambda']:.3g}"]
                             + [f"{p[k]['efficiency']:.3f}" for k in ("kfac", "foof", "sgd")]
                             + [f"{p[k]['rayleigh']:.3g}" for k in ("kfac", "foof", "sgd")]
                             + [f"{p[k]['cosine']:.3f}" for k in ("kfac", "foof", "sgd")] for p in probes])
    lines += ["", "Transfer: efficiency e₂ of the same directions in a fresh batch's damped quadratic model:", ""]
    lines += markdown_table(["step", "exact NGD", "K-FAC", "FOOF", "SGD"],
                            [[str(p["step"])] + [f"{p['transfer'][k]:.3f}" for k in ("ngd", "kfac", "foof", "sgd")]
                             for p in probes])
    bests = {m: next(r for r in rows if r["method"] == m and r["best"]) for m in best}
    verdicts = {"kfac_beats_exact_ngd": bests["kfac"]["final_loss"] < bests["hf"]["final_loss"],
                "foof_beats_kfac": bests["foof"]["final_loss"] < bests["kfac"]["final_loss"]}
    lines += ["", f"K-FAC beats exact NGD (final loss, equal steps): {verdicts['kfac_beats_exact_ngd']}; "
              f"FOOF beats K-FAC: {verdicts['foof_beats_kfac']}"]
    return {"config": config, "rows": rows, "best": {m: config["grids"][m][i] for m, i in best.items()},
            "probes": probes, "verdicts": verdicts, "table": "\n".join(lines)}


def _plot(runs, summary, path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m, hp in summary["best"].items():
        i = summary["config"]["grids"][m].index(hp)
        rs = runs[(m, i)]
        n = min(len(r["step"]) for r in rs)
        loss = np.mean([r["loss"][:n] for r in rs], axis=0)
        label = f"{LABELS[m]} ({', '.join(f'{k} {v:g}' for k, v in hp.items())})"
        axes[0].semilogy(rs[0]["step"][:n], loss, label=label)
        axes[1].semilogy(np.mean([r["cpu"][:n] for r in rs], axis=0), loss, label=label)
    axes[0].set(xlabel="step", ylabel="training loss (whole set)")
    axes[1].set(xlabel="process CPU seconds (training)", ylabel="training loss (whole set)")
    for ax in axes:
        ax.legend(fontsize=7)
    atomic_savefig(fig, path)


def _flags(parser):
    parser.add_argument("--steps", type=int, help="steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds")


STUDY = Study("benzing", __doc__, run, DEFAULT, FULL, _flags, lambda s: [f"plot: {s['plot']}"])


def main(argv=None) -> int:
    return cli_main(STUDY, argv)
