"""Batch-size scaling of stable learning rates and damping (Granziol, Zohren & Roberts, JMLR 2022).

The paper's spiked random-matrix model makes the batch Hessian's outliers grow as B shrinks,
λ_max(H_B) ≈ λ_max(H) + c/B, and predicts three rules while that noise term dominates:
the largest stable SGD learning rate ∝ B, the largest stable Adam learning rate ∝ √B, and the
smallest stable damping of a stochastic second-order method ∝ lr/B (at fixed lr: ∝ 1/B).

On a tanh MLP classifier (``problem``: ``"mnist1d-mlp"``, MNIST-1D 40-100-100-10, or
``"mnist-mlp"``, real MNIST 784-100-100-10 on the first ``num_samples`` training images; one
initialization), for every batch size B:

* λ_max of the batch Hessian and Gauss–Newton matrix at the initialization (Lanczos, mean over
  batches) and the full-data value; the classical edge of stability 2/λ_max(H_B);
* the largest stable learning rate of plain SGD and of Adam, by bisection on divergence
  (``bisect_edge``): a run of ``stability_steps`` steps diverges when a loss is non-finite or
  the final training loss exceeds the initial one; every run of one B sees the same batches;
* the best learning rate on a log grid after ``grid_epochs`` epochs (held-out loss), SGD and Adam;
* K-FAC's smallest stable damping at the fixed learning rate ``kfac_lr`` (``classical.KFAC``,
  momentum 0, fixed damping, inverses every step; a rejected step counts as divergence).

Each quantity q(B) is fitted as q ∝ B^s on log–log axes (``fit_power_law``: least squares, 95 %
t interval), over all B and over B ≤ ``small_b`` (where the noise term should dominate).

    qgeom batch-scaling            # quick: B ∈ {16, 64, 256, 1024, 4096}
    qgeom batch-scaling --full     # B = 16, 32, …, 4096, more bisection steps and epochs
    qgeom batch-scaling --problem mnist-mlp --out results/batch_scaling_mnist

Writes ``results/batch_scaling/{summary.json,summary.md,batch_scaling.png}``; finished batch
sizes are checkpointed (``Cells``), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import math
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
from experiments.harness.analysis import fit_power_law
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

DEFAULT = {"problem": "mnist1d-mlp", "num_samples": 6000, "hidden": [100, 100], "batch_sizes": [16, 64, 256, 1024, 4096],
           "seed": 0, "stability_steps": 150, "bisect_iters": 6, "grid_epochs": 3, "sgd_grid": [-3.0, 1.5, 10],
           "adam_grid": [-4.0, 0.0, 9], "kfac_lr": 1.0, "kfac_steps": 60, "lanczos_steps": 30,
           "lanczos_batches": 3, "small_b": 256}
FULL = dict(DEFAULT, batch_sizes=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096], bisect_iters=8, grid_epochs=5,
            sgd_grid=[-3.0, 1.5, 19], adam_grid=[-4.0, 0.0, 17], kfac_steps=100)
OPTIMIZERS = {"sgd": optax.sgd, "adam": optax.adam}
PROBLEMS = ("mnist1d-mlp", "mnist-mlp")


def load_problem(problem, num_samples):
    """(x_train, y_train, x_test, y_test) of a classification ``problem``: MNIST-1D with
    ``num_samples`` samples (80 % training), or real MNIST's first ``num_samples`` training
    and first ``num_samples // 4`` test images (the same 4 : 1 ratio)."""
    if problem == "mnist1d-mlp":
        d = load_dataset("mnist1d", num_samples=num_samples)
        return d.x_train, d.y_train, d.x_test, d.y_test
    if problem == "mnist-mlp":
        d = load_dataset("mnist")
        return d.x_train[:num_samples], d.y_train[:num_samples], d.x_test[:num_samples // 4], d.y_test[:num_samples // 4]
    raise ValueError(f"unknown problem {problem!r}; choose from {PROBLEMS}")


def bisect_edge(unstable, lo, hi, iters, grow=4.0, max_expand=10):
    """Edge of a threshold predicate on a log scale: ``unstable(x)`` False below the edge, True
    above. The bracket [lo, hi] is widened by ``grow`` until ``lo`` is stable and ``hi``
    unstable, then halved geometrically ``iters`` times. Returns (last stable x, first unstable
    x); the edge lies between (ratio (hi/lo)^(2^-iters)). A side that never flips within
    ``max_expand`` widenings is returned as None."""
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lo < hi, got {lo!r}, {hi!r}")
    for _ in range(max_expand):
        if not unstable(lo):
            break
        lo, hi = lo / grow, lo
    else:
        return None, lo
    for _ in range(max_expand):
        if unstable(hi):
            break
        lo, hi = hi, hi * grow
    else:
        return hi, None
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if unstable(mid) else (mid, hi)
    return lo, hi


def _batches(n, b, steps, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n)[:b] for _ in range(steps)])


@partial(jax.jit, static_argnums=(0, 1))
def _train(net, name, lr, params, x, y, idx, xe, ye):
    """``len(idx)`` steps of optax ``name`` at learning rate ``lr`` on batches x[idx[t]];
    returns (per-step batch losses, final loss on (xe, ye), final params)."""
    tx = OPTIMIZERS[name](lr)

    def step(carry, i):
        p, s = carry
        loss, g = jax.value_and_grad(net.loss)(p, x[i], y[i])
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), idx)
    return losses, net.loss(params, xe, ye), params


def _diverged(losses, final, initial):
    return bool(~np.all(np.isfinite(losses)) | ~np.isfinite(final) | (final > initial))


def _hessian_mv(net, params, x, y):
    flat, unravel = ravel_pytree(params)
    grad = jax.grad(lambda f: net.loss(unravel(f), x, y))
    return lambda v: jax.jvp(grad, (flat,), (v.astype(flat.dtype),))[1]


@partial(jax.jit, static_argnums=(0, 1, 6))
def _lambda_max(net, kind, params, x, y, v0, steps):
    from classical.hessian_free import HessianFree
    from qgeom.spectral import extremal_eigenvalues

    mv = _hessian_mv(net, params, x, y) if kind == "hessian" else HessianFree(net).ggn_mv(params, x)
    return extremal_eigenvalues(mv, v0, steps).largest[0]


def _kfac_tester(net, params, x, y, idx, lr, initial):
    """damping ↦ whether fixed-damping K-FAC at learning rate ``lr`` diverges on batches x[idx[t]]
    (one optimizer, so one compilation; the damping is set in the state)."""
    from classical.kfac import KFAC

    opt = KFAC(net, learning_rate=lr, momentum=0.0, adapt_damping=False, inverse_period=1,
               reject_damping_factor=1.0, min_damping=1e-12, max_damping=1e12)

    def unstable(damping):
        p, state = params, opt.init(params)._replace(damping=jnp.asarray(damping, jnp.float32))
        for i in idx:
            p, state, info = opt.step(p, state, (x[i], y[i]))
            if bool(info["rejected"]) or not np.isfinite(float(info["loss"])):
                return True
        return bool(float(net.loss(p, x, y)) > initial)

    return unstable


def _one_batch_size(net, params0, data, b, config):
    """Everything measured at batch size b (one result cell)."""
    x, y, xt, yt = data
    n, seed = len(x), config["seed"]
    loss0 = float(net.loss(params0, x, y))
    out = {"batch": b, "initial_loss": loss0}
    rng = np.random.default_rng(seed + b)
    dim = ravel_pytree(params0)[0].shape[0]
    v0 = jnp.asarray(rng.standard_normal(dim), jnp.float32)
    for kind in ("hessian", "ggn"):
        lams = [float(_lambda_max(net, kind, params0, x[i], y[i], v0, config["lanczos_steps"]))
                for i in _batches(n, b, config["lanczos_batches"], seed + 7)]
        out[f"{kind}_lambda_max"] = float(np.mean(lams))
    idx = jnp.asarray(_batches(n, b, config["stability_steps"], seed + 1))
    for name in OPTIMIZERS:
        def unstable(lr, name=name):
            losses, final, _ = _train(net, name, jnp.float32(lr), params0, x, y, idx, x, y)
            return _diverged(np.asarray(losses), float(final), loss0)
        lo, hi = bisect_edge(unstable, 1e-2 if name == "sgd" else 1e-3, 10.0 if name == "sgd" else 1.0,
                             config["bisect_iters"])
        out[f"{name}_max_lr"] = None if lo is None or hi is None else math.sqrt(lo * hi)
        out[f"{name}_max_lr_bracket"] = [lo, hi]
        lo_e, hi_e, num = config[f"{name}_grid"]
        grid = np.logspace(lo_e, hi_e, int(num))
        steps = max(1, math.ceil(config["grid_epochs"] * n / b))
        gidx = jnp.asarray(_batches(n, b, steps, seed + 2))
        finals = [float(_train(net, name, jnp.float32(lr), params0, x, y, gidx, xt, yt)[1]) for lr in grid]
        finals = [f if np.isfinite(f) else np.inf for f in finals]
        best = int(np.argmin(finals))
        out[f"{name}_best_lr"], out[f"{name}_grid_loss"] = float(grid[best]), finals
        out[f"{name}_best_at_grid_edge"] = best in (0, len(grid) - 1)
    unstable = _kfac_tester(net, params0, x, y, _batches(n, b, config["kfac_steps"], seed + 3), config["kfac_lr"],
                            loss0)
    lo, hi = bisect_edge(lambda inv: unstable(1.0 / inv), 1e-2, 1e2, config["bisect_iters"])
    out["kfac_min_damping"] = None if lo is None or hi is None else 1.0 / math.sqrt(lo * hi)
    out["kfac_min_damping_bracket"] = [None if hi is None else 1.0 / hi, None if lo is None else 1.0 / lo]
    return out


QUANTITIES = {"sgd_max_lr": ("SGD largest stable lr", 1.0), "adam_max_lr": ("Adam largest stable lr", 0.5),
              "sgd_best_lr": ("SGD best grid lr", 1.0), "adam_best_lr": ("Adam best grid lr", 0.5),
              "kfac_min_damping": ("K-FAC smallest stable damping", -1.0),
              "hessian_lambda_max": ("λ_max batch Hessian", None), "ggn_lambda_max": ("λ_max batch GGN", None)}


def run(config, outdir=None, *, fresh=False, progress=False):
    """Run the study; writes summary.json, summary.md and batch_scaling.png under ``outdir``."""
    from experiments.classical_methods import float32_mode, single_threaded_blas

    config = {**DEFAULT, **config}
    outdir = Path(outdir or Path("results") / "batch_scaling")
    data = load_problem(config["problem"], config["num_samples"])
    bs = sorted(int(b) for b in config["batch_sizes"])
    if not bs or bs[0] < 1 or bs[-1] > len(data[0]):
        raise ValueError(f"batch sizes must lie in [1, {len(data[0])}] (the training set), got {bs}")
    cells = Cells(Checkpoint(outdir / "cells.pkl"), fresh=fresh)
    rows, cpu0 = [], time.process_time()
    with float32_mode(), single_threaded_blas():
        arrays = tuple(jnp.asarray(a) for a in data)
        net = mlp([arrays[0].shape[1], *config["hidden"], 10], "tanh", "categorical")
        params0 = net.init(jax.random.PRNGKey(config["seed"]))
        full = {k: float(_lambda_max(net, k, params0, arrays[0], arrays[1],
                                     jnp.ones(ravel_pytree(params0)[0].shape[0], jnp.float32), config["lanczos_steps"]))
                for k in ("hessian", "ggn")}
        keyed = {k: v for k, v in config.items() if k not in ("batch_sizes", "small_b")}
        for b in tqdm(bs, desc="batch sizes", disable=None if progress else True):
            rows.append(cells.run(cell_key(batch=b, **keyed),
                                  lambda b=b: _one_batch_size(net, params0, arrays, b, config)))
    fits = {}
    for q in QUANTITIES:
        vals = [r[q] for r in rows]
        fits[q] = {"all": fit_power_law(bs, vals),
                   "small_b": fit_power_law([b for b in bs if b <= config["small_b"]],
                                            [v for b, v in zip(bs, vals) if b <= config["small_b"]])}
    excess = {k: fit_power_law(bs, [r[f"{k}_lambda_max"] - full[k] for r in rows]) for k in full}
    summary = {"config": config, "train_samples": len(arrays[0]), "full_lambda_max": full, "rows": rows,
               "fits": fits, "excess_lambda_fits": excess, "cpu_seconds": time.process_time() - cpu0,
               "plot": str(outdir / "batch_scaling.png")}
    summary["table"] = _table(summary)
    _plot(summary, outdir / "batch_scaling.png")
    atomic_write_json(outdir / "summary.json", summary)
    atomic_write_text(outdir / "summary.md", f"# Batch-size scaling ({config['problem']})\n\n" + summary["table"] + "\n")
    return summary


def _fmt(v):
    return "—" if v is None else f"{v:.3g}"


def _table(s):
    cols = ["sgd_max_lr", "adam_max_lr", "sgd_best_lr", "adam_best_lr", "kfac_min_damping",
            "hessian_lambda_max", "ggn_lambda_max"]
    rows = [[str(r["batch"])] + [_fmt(r[c]) for c in cols] + [_fmt(2 / r["hessian_lambda_max"])] for r in s["rows"]]
    lines = markdown_table(["B", "SGD max lr", "Adam max lr", "SGD best lr", "Adam best lr",
                            f"K-FAC min damping (lr {s['config']['kfac_lr']:g})", "λ_max H_B", "λ_max G_B",
                            "2/λ_max H_B"], rows)
    lines += ["", "—: no edge inside the widened bracket (K-FAC stable at every damping tried, down to ~1e-8)",
              f"full data: λ_max H = {s['full_lambda_max']['hessian']:.4g}, "
              f"λ_max G = {s['full_lambda_max']['ggn']:.4g}", ""]
    frow = []
    for q, (label, predicted) in QUANTITIES.items():
        cells = [label, "—" if predicted is None else f"{predicted:+g}"]
        for part in ("all", "small_b"):
            f = s["fits"][q][part]
            cells.append("—" if f["slope"] is None else
                         f"{f['slope']:+.2f} [{f['ci95'][0]:+.2f}, {f['ci95'][1]:+.2f}] ({f['points']})")
        frow.append(cells)
    lines += markdown_table(["quantity ∝ B^s", "paper's s", "fitted s, all B [95% CI] (points)",
                             f"fitted s, B ≤ {s['config']['small_b']}"], frow)
    for k, f in s["excess_lambda_fits"].items():
        if f["slope"] is not None:
            lines.append(f"λ_max({k}, B) − λ_max({k}, full) ∝ B^{f['slope']:+.2f} "
                         f"[{f['ci95'][0]:+.2f}, {f['ci95'][1]:+.2f}] (RMT: −1)")
    lines.append(f"process CPU seconds: {s['cpu_seconds']:.0f}")
    return "\n".join(lines)


def _plot(s, path):
    import matplotlib.pyplot as plt

    bs = [r["batch"] for r in s["rows"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [(axes[0], ("sgd_max_lr", "adam_max_lr", "sgd_best_lr", "adam_best_lr"), "learning rate"),
              (axes[1], ("kfac_min_damping",), "damping"),
              (axes[2], ("hessian_lambda_max", "ggn_lambda_max"), "λ_max")]
    for ax, qs, ylabel in panels:
        for q in qs:
            vals = [r[q] if r[q] is not None else np.nan for r in s["rows"]]
            line, = ax.plot(bs, vals, "o-", label=QUANTITIES[q][0])
            f = s["fits"][q]["all"]
            if f["slope"] is not None:
                ax.plot(bs, f["prefactor"] * np.asarray(bs, float) ** f["slope"], ":", color=line.get_color(),
                        label=f"fit B^{f['slope']:.2f}")
        ax.set(xscale="log", yscale="log", xlabel="batch size B", ylabel=ylabel)
        ax.legend(fontsize=7)
    for v in s["full_lambda_max"].values():
        axes[2].axhline(v, ls="--", color="gray")
    axes[0].plot(bs, [2 / r["hessian_lambda_max"] for r in s["rows"]], "k^--", label="2/λ_max H_B")
    axes[0].legend(fontsize=7)
    axes[0].set_title("stable (bisection) and best (grid) learning rates")
    axes[1].set_title(f"K-FAC smallest stable damping, lr {s['config']['kfac_lr']:g}")
    axes[2].set_title("curvature at initialization (dashed: full data)")
    atomic_savefig(fig, path)


def _flags(parser):
    parser.add_argument("--problem", choices=PROBLEMS, help="MNIST-1D MLP (default) or MNIST MLP 784-100-100-10")
    parser.add_argument("--num-samples", dest="num_samples", type=int, help="samples (MNIST: training images)")
    parser.add_argument("--batch-sizes", dest="batch_sizes", type=int, nargs="+", help="batch sizes B")
    parser.add_argument("--kfac-lr", dest="kfac_lr", type=float, help="K-FAC's fixed learning rate")
    parser.add_argument("--stability-steps", dest="stability_steps", type=int, help="steps per divergence test")


STUDY = Study("batch-scaling", __doc__, run, DEFAULT, FULL, _flags, lambda s: [f"plot: {s['plot']}"],
              results="batch_scaling")


def main(argv=None) -> int:
    return cli_main(STUDY, argv)
