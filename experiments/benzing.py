"""Benzing's verdict (ICML 2022): does K-FAC beat exact natural gradient, and FOOF beat K-FAC?

Two problems (``problem``): ``"mnist1d-mlp"``, an MNIST-1D tanh MLP classifier (40-100-100-10,
softmax), and ``"mnist-autoencoder"``, a deep autoencoder on the first ``num_samples`` real
MNIST images (784-h₁-…-h_k-…-h₁-784 with ``hidden`` = [h₁, …, h_k]: tanh, linear code layer,
sigmoid cross-entropy summed over pixels — the K-FAC paper's 784-1000-500-250-30 is
``hidden=[1000, 500, 250, 30]``). Equal tuning budgets (``len(grid)`` points each, best by
the mean final training loss over the first ``tune_seeds`` seeds; the winner is then run on
the remaining seeds): exact natural gradient — ``classical.HessianFree`` solving
(F + λI)δ = −∇h by CG to relative residual ``cg_tol`` on exact Fisher(= GGN)-vector products,
Levenberg–Marquardt λ (above a floor ``min_damping`` where the grid sets one) —, K-FAC
(quadratic-model α, μ and LM damping, §6–7 of Martens & Grosse), FOOF (fixed lr, momentum 0.9,
damping) and Adam. Training loss on the whole training set per step and per process CPU
second (training only); the winners are compared per step (final loss, paired by seed) and
per second (loss at the CPU time of the fastest winner's run, log-linear interpolation).

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

    qgeom benzing                                      # MNIST-1D, quick: 300 steps, 1 seed
    qgeom benzing --full                               # MNIST-1D: 600 steps, 3 seeds
    qgeom benzing --problem mnist-autoencoder --full --out results/benzing_autoencoder

The settings of each problem and scale are in ``PROBLEMS``; a key given in the config (not
None) overrides them. Writes ``{summary.json,summary.md,benzing.png}`` under the output folder;
finished runs are checkpointed (``Cells``).
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

_MNIST1D = {"num_samples": 6000, "hidden": [100, 100], "batch": 256, "steps": 300, "eval_every": 25, "seeds": [0],
            "tune_seeds": None, "cg_tol": 1e-3, "cg_maxiter": 500, "probe_steps": [25, 100, 300],
            "probe_cg_tol": 1e-6, "probe_cg_maxiter": None,
            "grids": {"hf": [{"damping": d} for d in (1e-2, 1e-1, 1.0, 10.0)],
                      "kfac": [{"damping": d} for d in (1e-3, 1e-2, 1e-1, 1.0)],
                      "foof": [{"lr": lr, "damping": d} for lr in (0.03, 0.3) for d in (0.1, 1.0)],
                      "adam": [{"lr": lr} for lr in (1e-3, 3e-3, 1e-2, 3e-2)]}}
# the autoencoder's loss is summed over 784 pixels: larger dampings, smaller first-order lrs;
# HF's λ floor keeps its CG solves to 1e-3 within cg_maxiter (at λ → 0.06 they passed 500 iterations)
_AUTOENCODER = {"num_samples": 2000, "hidden": [250, 100, 30], "batch": 250, "steps": 20, "eval_every": 5,
                "seeds": [0], "tune_seeds": 1, "cg_tol": 1e-3, "cg_maxiter": 1000, "probe_steps": [10, 20],
                "probe_cg_tol": 1e-4, "probe_cg_maxiter": 3000,
                "grids": {"hf": [{"damping": d, "min_damping": d} for d in (0.3, 1.0, 3.0)],
                          "kfac": [{"damping": d} for d in (1.5, 15.0, 150.0)],
                          "foof": [{"lr": lr, "damping": 1.0} for lr in (1e-3, 3e-3, 1e-2)],
                          "adam": [{"lr": lr} for lr in (3e-4, 1e-3, 3e-3)]}}
PROBLEMS = {"mnist1d-mlp": {"quick": _MNIST1D,
                            "full": dict(_MNIST1D, steps=600, seeds=[0, 1, 2], probe_steps=[25, 150, 300, 600])},
            "mnist-autoencoder": {"quick": _AUTOENCODER,
                                  "full": dict(_AUTOENCODER, num_samples=10000, steps=100, eval_every=10,
                                               seeds=[0, 1, 2], probe_steps=[10, 50, 100])}}
DEFAULT = {"problem": "mnist1d-mlp", "scale": "quick", **{k: None for k in _MNIST1D}}
FULL = dict(DEFAULT, scale="full")
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


def setup(config):
    """(net, x, y) of ``config["problem"]``: the classifier on MNIST-1D (labels) or the
    autoencoder on the first ``num_samples`` MNIST training images (targets = inputs)."""
    if config["problem"] == "mnist1d-mlp":
        data = load_dataset("mnist1d", num_samples=config["num_samples"])
        x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
        return mlp([x.shape[1], *config["hidden"], 10], "tanh", "categorical"), x, y
    if config["problem"] == "mnist-autoencoder":
        x = jnp.asarray(load_dataset("mnist").x_train[: config["num_samples"]])
        h = list(config["hidden"])
        acts = ["tanh"] * (len(h) - 1) + ["linear"] + ["tanh"] * (len(h) - 1) + ["linear"]
        return mlp([784, *h, *h[-2::-1], 784], acts, "bernoulli"), x, x
    raise ValueError(f"unknown problem {config['problem']!r}; choose from {sorted(PROBLEMS)}")


def resolve(config):
    """The problem's settings at ``config["scale"]``, overridden by the keys of ``config`` that are not None."""
    config = {**DEFAULT, **config}
    if config["problem"] not in PROBLEMS or config["scale"] not in ("quick", "full"):
        raise ValueError(f"problem must be one of {sorted(PROBLEMS)} and scale quick or full, got "
                         f"{config['problem']!r}, {config['scale']!r}")
    config = {**PROBLEMS[config["problem"]][config["scale"]], **{k: v for k, v in config.items() if v is not None}}
    if any(not g for g in config["grids"].values()) or len({len(g) for g in config["grids"].values()}) != 1:
        raise ValueError("every method needs a non-empty grid of the same size (equal tuning budgets)")
    if set(config["grids"]) != set(LABELS):
        raise ValueError(f"grids must name exactly the methods {sorted(LABELS)}, got {sorted(config['grids'])}")
    if not config["seeds"] or not 1 <= (config["tune_seeds"] or len(config["seeds"])) <= len(config["seeds"]):
        raise ValueError(f"need seeds and 1 <= tune_seeds <= {len(config['seeds'])}, got {config['tune_seeds']!r}")
    return config


def _build(net, method, hp, config, seed):
    from classical.foof import FOOF
    from classical.hessian_free import HessianFree
    from classical.kfac import KFAC

    if method == "hf":  # hp: damping (initial λ) and optionally min_damping (LM floor)
        return HessianFree(net, cg_tol=config["cg_tol"], cg_maxiter=config["cg_maxiter"], seed=seed, **hp)
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


def _directions(net, opt, params, state, batch, fresh, foof_damping, cg_tol=1e-6, cg_maxiter=None):
    """Efficiency e, Rayleigh ratio r and cosine of K-FAC, FOOF and SGD directions against
    exact NGD (F + λI)⁻¹g with λ = K-FAC's damping (+ l2) at this state, all from ``batch``;
    ``transfer``: the same directions' efficiency in the damped quadratic model of the
    ``fresh`` batch (exact NGD's included), e₂(d) = (g₂ᵀd)₊² / (dᵀ(F₂ + λI)d · g₂ᵀ(F₂ + λI)⁻¹g₂).
    The reference solves run CG to relative residual ``cg_tol`` (``cg_maxiter``: 5·P if None)."""
    from classical.hessian_free import HessianFree
    from qgeom.spectral import pcg

    lam = float(state.damping) + opt.l2_reg

    def model(xb, yb):
        grads = jax.grad(net.loss)(params, xb, yb)
        fmv = HessianFree(net).ggn_mv(params, xb)
        g = ravel_pytree(grads)[0]
        d_star, info = pcg(lambda v: fmv(v) + lam * v, g, tol=cg_tol, maxiter=cg_maxiter or 5 * g.shape[0])
        return grads, g, fmv, d_star, info

    def efficiency(g, fmv, gd_star, d):
        return max(float(g @ d), 0.0) ** 2 / ((float(d @ fmv(d)) + lam * float(d @ d)) * gd_star)

    grads, g, fmv, d_star, info = model(*batch)
    _, g2, fmv2, d2_star, info2 = model(*fresh)
    foof = {k: jnp.linalg.solve(a + foof_damping * jnp.eye(a.shape[0]), grads[k]) for k, a in state.A.items()}
    dirs = {"kfac": ravel_pytree(opt.precondition(state, grads))[0], "foof": ravel_pytree(foof)[0], "sgd": g}
    gd_star, g2d2_star = float(g @ d_star), float(g2 @ d2_star)
    res = {"lambda": lam, "cg_converged": bool(info["converged"]) and bool(info2["converged"]),
           "cg_iterations": [int(info["iterations"]), int(info2["iterations"])], "grad_norm": float(jnp.linalg.norm(g)),
           "transfer": {"ngd": efficiency(g2, fmv2, g2d2_star, d_star)}}
    for name, d in dirs.items():
        res[name] = {"efficiency": efficiency(g, fmv, gd_star, d), "rayleigh": float(d @ fmv(d)) / float(g @ d),
                     "cosine": float(d @ d_star / (jnp.linalg.norm(d) * jnp.linalg.norm(d_star)))}
        res["transfer"][name] = efficiency(g2, fmv2, g2d2_star, d)
    return res


def run(config, outdir=None, *, fresh=False, progress=False):
    """Run the study; writes summary.json, summary.md and benzing.png under ``outdir``."""
    from experiments.classical_methods import float32_mode, single_threaded_blas

    config = resolve(config)
    outdir = Path(outdir or Path("results") / "benzing")
    cells = Cells(Checkpoint(outdir / "cells.pkl"), fresh=fresh)
    fixed = {k: config[k] for k in ("problem", "num_samples", "hidden", "batch", "steps", "eval_every", "cg_tol",
                                    "cg_maxiter")}
    seeds = list(config["seeds"])
    tune = seeds[: config["tune_seeds"] or len(seeds)]
    grids = config["grids"]
    runs = {}
    with float32_mode(), single_threaded_blas():
        net, x, y = setup(config)
        bar = tqdm(total=len(grids) * (len(next(iter(grids.values()))) * len(tune) + len(seeds) - len(tune)),
                   desc="runs", disable=None if progress else True)

        def one(m, i, s):
            hp = grids[m][i]
            key = cell_key(method=m, seed=s, **hp, **fixed)
            runs.setdefault((m, i), []).append(cells.run(key, lambda: _train(net, (x, y), m, hp, s, config)[0]))
            bar.update()

        for m, grid in grids.items():  # tuning: every grid point on the tuning seeds
            for i in range(len(grid)):
                for s in tune:
                    one(m, i, s)
        final = {k: float(np.mean([r["loss"][-1] if np.isfinite(r["loss"][-1]) else np.inf for r in rs]))
                 for k, rs in runs.items()}
        best = {m: min(range(len(g)), key=lambda i, m=m: final[(m, i)]) for m, g in grids.items()}
        for m in grids:  # the winners on the remaining seeds
            for s in seeds[len(tune):]:
                one(m, best[m], s)
        bar.close()
        probes = _probe(net, (x, y), config, best)
    summary = _summarize(runs, final, best, probes, config)
    summary["plot"] = str(outdir / "benzing.png")
    _plot(runs, summary, outdir / "benzing.png")
    atomic_write_json(outdir / "summary.json", summary)
    atomic_write_text(outdir / "summary.md", f"# Benzing's verdict ({config['problem']})\n\n" + summary["table"] + "\n")
    return summary


def _probe(net, data, config, best):
    """Direction diagnostics along the best K-FAC run (first seed)."""
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
                                             foof_damping, config["probe_cg_tol"], config["probe_cg_maxiter"])})
    return out


def _loss_at_cpu(run, t):
    """A run's whole-set loss at process CPU time t (log-linear interpolation between evaluations)."""
    loss = np.asarray(run["loss"], float)
    return float(np.exp(np.interp(t, run["cpu"], np.log(np.where(np.isfinite(loss) & (loss > 0), loss, np.inf)))))


def _winners(runs, best, config):
    """Per method, the winner's per-seed final loss, CPU and CG statistics."""
    out = {}
    for m, i in best.items():
        rs = runs[(m, i)]
        cg = [c for r in rs for c in r["cg_iterations"]]
        resid = [c for r in rs for c in r["cg_residual"]]
        out[m] = {"hp": config["grids"][m][i], "seeds": config["seeds"][: len(rs)],
                  "final": [float(r["loss"][-1]) for r in rs], "cpu_total": [float(r["cpu"][-1]) for r in rs],
                  "cpu_per_step": float(np.mean([r["cpu"][-1] / max(r["step"][-1], 1) for r in rs])),
                  "cg_iterations_mean": float(np.mean(cg)) if cg else None,
                  "cg_iterations_max": int(np.max(cg)) if cg else None,
                  "cg_at_maxiter": int(np.sum(np.asarray(cg) >= config["cg_maxiter"])) if cg else None,
                  "cg_converged_fraction": float(np.mean(np.asarray(resid) <= config["cg_tol"] * 1.0001))
                  if resid else None, "status": sorted({r["status"] for r in rs})}
    return out


def _verdict(runs, best, a, b):
    """``a`` beats ``b``: lower mean loss, and on how many seeds (paired: same initialization and
    batch order), per step (final loss) and per CPU second (loss at the CPU time T at which the
    faster of the two winners' runs end, mean over seeds)."""
    ra, rb = runs[(a, best[a])], runs[(b, best[b])]
    t = min(float(np.mean([r["cpu"][-1] for r in rs])) for rs in (ra, rb))
    out = {"cpu_seconds": t}
    for name, f in (("per_step", lambda r: r["loss"][-1]), ("per_cpu_second", lambda r: _loss_at_cpu(r, t))):
        la, lb = np.asarray([f(r) for r in ra]), np.asarray([f(r) for r in rb])
        n = min(len(la), len(lb))
        out[name] = {"holds": bool(np.mean(la) < np.mean(lb)), "seeds_won": int(np.sum(la[:n] < lb[:n])),
                     "seeds": n, "loss": [float(np.mean(la)), float(np.mean(lb))], "ratio": float(np.mean(lb) / np.mean(la))}
    return out


def _summarize(runs, final, best, probes, config):
    fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
    hp_text = lambda hp: ", ".join(f"{k} {v:g}" for k, v in hp.items())  # noqa: E731
    rows = [{"method": m, "hp": config["grids"][m][i], "final_loss": final[(m, i)], "best": best[m] == i,
             "tune_seeds": len(config["seeds"][: config["tune_seeds"] or len(config["seeds"])])}
            for (m, i) in runs]
    lines = ["Grid (mean final training loss over the tuning seeds):", ""]
    lines += markdown_table(["method", "setting", "final train loss", "best of grid"],
                            [[LABELS[r["method"]], hp_text(r["hp"]), f"{r['final_loss']:.4g}", "✓" if r["best"] else ""]
                             for r in rows])
    w = _winners(runs, best, config)
    lines += ["", f"Winners on {len(config['seeds'])} seeds (mean ± sd [min, max]):", ""]
    ms = lambda v: f"{np.mean(v):.4g} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.2g} [{min(v):.4g}, {max(v):.4g}]"  # noqa: E731
    lines += markdown_table(["method", "setting", "final train loss", "CPU-s / run", "CPU-ms / step",
                             "CG iterations mean / max", "CG at maxiter", "CG converged"],
                            [[LABELS[m], hp_text(v["hp"]), ms(v["final"]), f"{np.mean(v['cpu_total']):.3g}",
                              f"{1e3 * v['cpu_per_step']:.1f}",
                              "—" if v["cg_iterations_mean"] is None else
                              f"{v['cg_iterations_mean']:.0f} / {v['cg_iterations_max']}",
                              fmt(v["cg_at_maxiter"], "d"), fmt(v["cg_converged_fraction"], ".0%")]
                             for m, v in w.items()])
    lines += ["", "Directions along the best K-FAC run vs exact NGD (F + λI)⁻¹g (λ = K-FAC's damping):", ""]
    lines += markdown_table(["step", "λ", "e K-FAC", "e FOOF", "e SGD", "r K-FAC", "r FOOF", "r SGD", "cos K-FAC",
                             "cos FOOF", "cos SGD", "CG its (converged)"],
                            [[str(p["step"]), f"{p['lambda']:.3g}"]
                             + [f"{p[k]['efficiency']:.3f}" for k in ("kfac", "foof", "sgd")]
                             + [f"{p[k]['rayleigh']:.3g}" for k in ("kfac", "foof", "sgd")]
                             + [f"{p[k]['cosine']:.3f}" for k in ("kfac", "foof", "sgd")]
                             + [f"{p['cg_iterations']} ({'yes' if p['cg_converged'] else 'NO'})"] for p in probes])
    lines += ["", "Transfer: efficiency e₂ of the same directions in a fresh batch's damped quadratic model:", ""]
    lines += markdown_table(["step", "exact NGD", "K-FAC", "FOOF", "SGD"],
                            [[str(p["step"])] + [f"{p['transfer'][k]:.3f}" for k in ("ngd", "kfac", "foof", "sgd")]
                             for p in probes])
    verdicts = {"kfac_beats_exact_ngd": _verdict(runs, best, "kfac", "hf"),
                "foof_beats_kfac": _verdict(runs, best, "foof", "kfac")}
    for name, v in verdicts.items():
        lines += ["", f"{name.replace('_', ' ')}: " + "; ".join(
            f"{k.replace('_', ' ')} {v[k]['holds']} ({v[k]['seeds_won']}/{v[k]['seeds']} seeds, loss "
            f"{v[k]['loss'][0]:.4g} vs {v[k]['loss'][1]:.4g})" for k in ("per_step", "per_cpu_second"))
            + f" — per second at {v['cpu_seconds']:.3g} CPU-s"]
    return {"config": config, "rows": rows, "winners": w, "best": {m: config["grids"][m][i] for m, i in best.items()},
            "probes": probes, "verdicts": verdicts, "table": "\n".join(lines)}


def _plot(runs, summary, path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m, hp in summary["best"].items():
        rs = runs[(m, summary["config"]["grids"][m].index(hp))]
        n = min(len(r["step"]) for r in rs)
        losses = np.asarray([r["loss"][:n] for r in rs])
        label = f"{LABELS[m]} ({', '.join(f'{k} {v:g}' for k, v in hp.items())}), {len(rs)} seeds"
        cpu = np.mean([r["cpu"][:n] for r in rs], axis=0)
        for ax, xs, a in ((axes[0], rs[0]["step"][:n], 0), (axes[1], cpu, 1)):  # log CPU axis: from the 1st eval
            line, = ax.semilogy(xs[a:], losses.mean(0)[a:], label=label)
            ax.fill_between(xs[a:], losses.min(0)[a:], losses.max(0)[a:], color=line.get_color(), alpha=0.2)
    axes[0].set(xlabel="step", ylabel="training loss (whole set)")
    axes[1].set(xscale="log", xlabel="process CPU seconds (training)", ylabel="training loss (whole set)")
    fig.suptitle(f"{summary['config']['problem']}: mean over seeds, band min–max")
    for ax in axes:
        ax.legend(fontsize=7)
    atomic_savefig(fig, path)


def _flags(parser):
    parser.add_argument("--problem", choices=sorted(PROBLEMS), help="MNIST-1D MLP (default) or MNIST autoencoder")
    parser.add_argument("--steps", type=int, help="steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (initializations and batch orders)")
    parser.add_argument("--tune-seeds", dest="tune_seeds", type=int, help="the first n seeds tune the grid")


STUDY = Study("benzing", __doc__, run, DEFAULT, FULL, _flags, lambda s: [f"plot: {s['plot']}"])


def main(argv=None) -> int:
    return cli_main(STUDY, argv)
