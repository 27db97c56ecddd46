"""Curvature spectra versus batch size (Granziol, Zohren & Roberts, JMLR 2022) and Nyström-PCG on GGNs.

Part 1 (``qgeom spectra``): an MNIST-1D MLP is trained briefly with Adam; at that point, for
every batch size B, the largest eigenvalue of the mini-batch Hessian and Gauss–Newton matrix
(Lanczos, with Ritz-residual bounds) over several random batches, and SLQ spectral densities
(Rademacher probes, Gaussian broadening, log scale), against the same quantities on the
whole training set. The excess λ_max(B) − λ_max(full) is fitted on log–log axes,
excess ∝ B^s, with a 95 % confidence interval on s (least squares, t quantile).

Part 2 (``--pcg``): conjugate-gradient iterations to relative residual ``pcg_tol`` for the
damped Gauss–Newton system (G + λI)x = −∇h of the MNIST deep autoencoder
(784-1000-500-250-30-250-500-1000-784) on one batch, plain CG versus Nyström-PCG (rank ℓ),
with the mat-vec counts (sketch included) and seconds measured side by side.

    qgeom spectra                 # quick: B ∈ {16, 64, 256, 1024}, 200 Adam steps
    qgeom spectra --full          # B from 16 to 4096 on 10⁴ MNIST-1D samples, 5 batches per B
    qgeom spectra --pcg           # add the autoencoder CG / Nyström-PCG comparison

Writes ``results/spectra/{summary.json,summary.md,spectra.png}`` atomically.
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

from classical.data import load_dataset, load_mnist
from classical.hessian_free import HessianFree
from classical.models import autoencoder, mlp
from experiments.harness.analysis import fit_power_law
from experiments.harness.cli import Study
from experiments.harness.cli import main as cli_main
from experiments.harness.report import markdown_table
from experiments.harness.store import atomic_savefig, atomic_write_json, atomic_write_text
from qgeom.spectral import extremal_eigenvalues, nystrom_pcg, pcg, slq, spectral_density

DEFAULT = {"num_samples": 5000, "hidden": [100, 100], "train_steps": 200, "train_batch": 128, "lr": 1e-3,
           "batch_sizes": [16, 64, 256, 1024], "batches_per_size": 3, "lanczos_steps": 30,
           "slq_probes": 4, "slq_steps": 40, "seed": 0, "pcg": False, "pcg_batch": 100,
           "pcg_dampings": [150.0, 1.0], "pcg_rank": 64, "pcg_tol": 1e-3, "pcg_maxiter": 500}
FULL = dict(DEFAULT, num_samples=10000, train_steps=1000, batch_sizes=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
            batches_per_size=5, slq_probes=8, slq_steps=60)


TITLES = {"ggn": "Gauss–Newton", "hessian": "Hessian"}


def _hvp_fn(net, kind):
    """(params, x, y) ↦ 1-D mat-vec of the batch Hessian or Gauss–Newton matrix."""
    if kind == "hessian":
        def make(params, x, y):
            flat, unravel = ravel_pytree(params)
            grad = jax.grad(lambda f: net.loss(unravel(f), x, y))
            return lambda v: jax.jvp(grad, (flat,), (v.astype(flat.dtype),))[1]
    else:
        opt = HessianFree(net)

        def make(params, x, y):
            return opt.ggn_mv(params, x)
    return make


@partial(jax.jit, static_argnums=(0, 5))
def _lambda_max(make, params, x, y, v0, steps):
    ext = extremal_eigenvalues(make(params, x, y), v0, steps)
    return ext.largest[0], ext.largest_bound[0]


@partial(jax.jit, static_argnums=(0, 5, 6, 7))
def _slq(make, params, x, y, key, dim, probes, steps):
    return slq(make(params, x, y), dim, key, probes, steps, dtype=jnp.float32)


def _train(net, x, y, config):
    params = net.init(jax.random.PRNGKey(config["seed"]))
    tx = optax.adam(config["lr"])
    state = tx.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        grads = jax.grad(net.loss)(params, xb, yb)
        updates, state = tx.update(grads, state)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(config["seed"])
    for _ in range(config["train_steps"]):
        idx = rng.choice(len(x), config["train_batch"], replace=False)
        params, state = step(params, state, x[idx], y[idx])
    return params


def spectra(config):
    """λ_max of batch Hessian / GGN per batch size, SLQ densities, log–log fits."""
    data = load_dataset("mnist1d", num_samples=config["num_samples"])
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    bs = [b for b in config["batch_sizes"] if b <= len(x)]
    if not bs:
        raise ValueError(f"no batch size in {config['batch_sizes']} fits the {len(x)} training samples")
    net = mlp([x.shape[1], *config["hidden"], 10], "tanh", "categorical")
    params = _train(net, x, y, config)
    dim = ravel_pytree(params)[0].shape[0]
    rng = np.random.default_rng(config["seed"] + 1)
    key = jax.random.PRNGKey(config["seed"] + 2)
    out = {"dim": dim, "train_samples": len(x), "loss": float(net.loss(params, x, y)), "kinds": {}}
    for kind in ("ggn", "hessian"):
        make = _hvp_fn(net, kind)
        v0 = jnp.asarray(rng.standard_normal(dim), jnp.float32)
        full, full_bound = _lambda_max(make, params, x, y, v0, config["lanczos_steps"])
        rows, dens = [], {}
        for b in bs:
            vals, bounds = [], []
            for _ in range(config["batches_per_size"]):
                idx = rng.choice(len(x), b, replace=False)
                lam, r = _lambda_max(make, params, x[idx], y[idx], v0, config["lanczos_steps"])
                vals.append(float(lam))
                bounds.append(float(r))
            key, sub = jax.random.split(key)
            dens[b] = _slq(make, params, x[idx], y[idx], sub, dim, config["slq_probes"], config["slq_steps"])
            rows.append({"batch": b, "lambda_max_mean": float(np.mean(vals)), "lambda_max_std": float(np.std(vals)),
                         "residual_bound_max": float(np.max(bounds))})
        key, sub = jax.random.split(key)
        dens["full"] = _slq(make, params, x, y, sub, dim, config["slq_probes"], config["slq_steps"])
        excess = [r["lambda_max_mean"] - float(full) for r in rows]
        out["kinds"][kind] = {"full_lambda_max": float(full), "full_residual_bound": float(full_bound),
                              "batches": rows, "excess_fit": fit_power_law(bs, excess),
                              "lambda_max_fit": fit_power_law(bs, [r["lambda_max_mean"] for r in rows]),
                              "densities": {str(k): (np.asarray(n), np.asarray(w)) for k, (n, w) in dens.items()}}
    return out


def pcg_comparison(config):
    """CG vs Nyström-PCG iterations on the autoencoder's damped GGN (one batch, at initialization)."""
    x = jnp.asarray(load_mnist().x_train[: config["pcg_batch"]])
    net = autoencoder()
    params = net.init(jax.random.PRNGKey(config["seed"]))
    opt = HessianFree(net)
    ggn = jax.jit(opt.ggn_mv(params, x))
    g = ravel_pytree(jax.grad(net.loss)(params, x, x))[0]
    rows = []
    for lam in config["pcg_dampings"]:
        lam = float(lam)
        solve_cg = jax.jit(lambda b, lam=lam: pcg(lambda v: ggn(v) + lam * v, b, tol=config["pcg_tol"],
                                                   maxiter=config["pcg_maxiter"]))
        solve_ny = jax.jit(lambda b, lam=lam: nystrom_pcg(ggn, b, lam, config["pcg_rank"], jax.random.PRNGKey(0),
                                                          tol=config["pcg_tol"], maxiter=config["pcg_maxiter"])[:2])
        res = {}
        for name, solve in (("cg", solve_cg), ("nystrom", solve_ny)):
            solve = solve.lower(-g).compile()  # compile outside the timing, run once
            t, c = time.perf_counter(), time.process_time()
            _, info = jax.block_until_ready(solve(-g))
            it = int(info["iterations"])
            extra = config["pcg_rank"] if name == "nystrom" else 0
            res[name] = {"iterations": it, "matvecs": it + extra, "seconds": time.perf_counter() - t,
                         "cpu_seconds": time.process_time() - c, "residual": float(info["residual"])}
        rows.append({"damping": lam, **res,
                     "cpu_ratio_cg_over_nystrom": res["cg"]["cpu_seconds"] / res["nystrom"]["cpu_seconds"]})
    return {"batch": config["pcg_batch"], "rank": config["pcg_rank"], "tol": config["pcg_tol"],
            "dim": int(g.shape[0]), "rows": rows}


def _plot(result, path):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    kinds = result["kinds"]
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(5 * (len(kinds) + 1), 4))
    for ax, (kind, res) in zip(axes, kinds.items()):
        nodes_all = np.concatenate([n.ravel() for n, _ in res["densities"].values()])
        lo, hi = float(nodes_all.min()), float(nodes_all.max())
        steps = next(iter(res["densities"].values()))[0].shape[-1]
        sigma = (hi - lo) / (steps - 1) / np.sqrt(8 * np.log(3.0))  # Papyan (2020), κ = 3
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 2000)
        for label, (n, w) in res["densities"].items():
            phi = np.asarray(spectral_density(n, w, grid, sigma))
            ax.semilogy(grid, np.maximum(phi, 1e-12), label=f"B = {label}")
        ax.set_ylim(1e-8, None)
        ax.set(xlabel="eigenvalue", ylabel="density (SLQ)", title=f"{TITLES[kind]} spectral density")
        ax.legend(fontsize=7)
    ax = axes[-1]
    for kind, res in kinds.items():
        b = [r["batch"] for r in res["batches"]]
        ax.errorbar(b, [r["lambda_max_mean"] for r in res["batches"]], [r["lambda_max_std"] for r in res["batches"]],
                    marker="o", label=f"{kind} batch")
        ax.axhline(res["full_lambda_max"], ls="--", color=ax.lines[-1].get_color(), label=f"{kind} full data")
    ax.set(xscale="log", yscale="log", xlabel="batch size B", ylabel="λ_max", title="largest eigenvalue")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)
    atomic_savefig(fig, path)


def _table(result):
    head = ["matrix", "B", "λ_max mean", "std", "max residual bound"]
    rows = []
    for kind, res in result["kinds"].items():
        rows += [[kind, str(r["batch"]), f"{r['lambda_max_mean']:.4g}", f"{r['lambda_max_std']:.2g}",
                  f"{r['residual_bound_max']:.1e}"] for r in res["batches"]]
        rows.append([kind, "full", f"{res['full_lambda_max']:.4g}", "", f"{res['full_residual_bound']:.1e}"])
    lines = markdown_table(head, rows)
    for kind, res in result["kinds"].items():
        for name in ("excess_fit", "lambda_max_fit"):
            f = res[name]
            if f["slope"] is not None:
                lines.append(f"{kind} {name.replace('_', ' ')}: slope {f['slope']:.3f}, "
                             f"95% CI [{f['ci95'][0]:.3f}, {f['ci95'][1]:.3f}] ({f['points']} points)")
    if "pcg" in result:
        p = result["pcg"]
        lines += ["", f"autoencoder damped GGN, batch {p['batch']}, P = {p['dim']}, tol {p['tol']}, rank {p['rank']}:"]
        lines += markdown_table(["λ", "CG iters", "Nyström iters (+ℓ sketch)", "CG CPU-s", "Nyström CPU-s",
                                 "CG/Nyström CPU", "CG wall s", "Nyström wall s"],
                                [[f"{r['damping']:g}", str(r["cg"]["iterations"]), str(r["nystrom"]["iterations"]),
                                  f"{r['cg']['cpu_seconds']:.2f}", f"{r['nystrom']['cpu_seconds']:.2f}",
                                  f"{r['cpu_ratio_cg_over_nystrom']:.2f}", f"{r['cg']['seconds']:.2f}",
                                  f"{r['nystrom']['seconds']:.2f}"] for r in p["rows"]])
    return "\n".join(lines)


def run(config, outdir=None, *, fresh=False, progress=False):
    """Run the study; writes summary.json, summary.md and spectra.png under ``outdir``."""
    del fresh, progress  # no checkpoints: every part takes minutes at most
    config = {**DEFAULT, **config}
    outdir = Path(outdir or Path("results") / "spectra")
    result = spectra(config)
    if config["pcg"]:
        result["pcg"] = pcg_comparison(config)
    _plot(result, outdir / "spectra.png")
    table = _table(result)
    summary = {"config": config, **{k: v for k, v in result.items() if k != "kinds"},
               "kinds": {k: {n: v for n, v in r.items() if n != "densities"} for k, r in result["kinds"].items()},
               "table": table, "plot": str(outdir / "spectra.png")}
    atomic_write_json(outdir / "summary.json", summary)
    atomic_write_text(outdir / "summary.md", "# Curvature spectra vs batch size\n\n" + table + "\n")
    return summary


def _flags(parser):
    parser.add_argument("--batch-sizes", dest="batch_sizes", type=int, nargs="+", help="batch sizes B")
    parser.add_argument("--train-steps", dest="train_steps", type=int, help="Adam steps before measuring")
    parser.add_argument("--pcg", action="store_const", const=True, help="add the autoencoder CG vs Nyström-PCG part")
    parser.add_argument("--pcg-rank", dest="pcg_rank", type=int, help="Nyström sketch rank ℓ")


STUDY = Study("spectra", __doc__, run, DEFAULT, FULL, _flags, lambda s: [f"plot: {s['plot']}"])


def main(argv=None) -> int:
    return cli_main(STUDY, argv)
