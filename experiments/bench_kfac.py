"""Milliseconds per training step on the MNIST deep autoencoder at batch 1000, side by side.

Contenders (one process, float32, same network, same batches):

* ``sgd`` — optax SGD, momentum 0.9;  ``adam`` — optax Adam;
* ``kfac-fixed`` — our K-FAC, fixed learning rate, momentum and damping;
* ``kfac-adaptive`` — our K-FAC, quadratic-model α and μ, Levenberg–Marquardt damping;
* ``kfac-fixed-sub`` / ``kfac-adaptive-sub`` — the same two with all curvature (statistics,
  quadratic-model products) from the first ``--curvature-batch-size`` examples (default 250)
  and statistics every ``--sub-stats-period`` steps (default 2): a setting kfac-jax cannot
  express (it has no curvature sub-batch), so not part of the equal-settings comparison;
* ``kfac-jax-fixed`` / ``kfac-jax-adaptive`` — kfac-jax with the same settings
  (skipped when kfac-jax is not installed);
* when named (``--methods``, comma- or space-separated) or with ``--full``: ``ekfac``,
  ``kfac-tridiag``, ``rs-kfac``, ``kld-wrm``, ``tnt``, ``mbf``, ``shampoo``, ``soap``, ``mfac`` —
  the autoencoder study's own registry entries (``experiments.kfac_autoencoder.METHODS``) at
  their untuned (middle) grid point, the curvature family's inverse period set to
  ``--inverse-period``; optax ones as bare steps like ``sgd``. ``sgd`` always runs (the ratios'
  base); ``--methods`` picks the contenders exactly, ``--full`` runs them all.

K-FAC settings shared by both implementations: inverse period 20, curvature EMA 0.95,
statistics every step, damping interval 5, no burn-in, optimizer state donated to the step
(kfac-jax's default; ours ``donate_state=True``). Every method is first warmed up
(all compiled branches), then restarted at step 0 and timed in blocks of
``--block`` steps (= the inverse period, so every block holds exactly one inverse
refresh); blocks of all methods are interleaved round-robin, in a rotating order, so
the load of this shared machine falls on all of them alike. BLAS/LAPACK is limited to
one thread for every contender (``classical_methods.single_threaded_blas``). A block's amortised cost
is its mean ms per step; we report the median over blocks (robust to load spikes)
and the overall mean, plus the median of the inverse-refresh steps and of the other
steps (where the time goes). The last line is

    kfac_step_vs_kfac_jax=<adaptive ours / adaptive kfac-jax> kfac_step_vs_sgd=<fixed ours / sgd>

(targets from issue 5: ≤ 0.8 and ≤ 2). The first compares equal settings. For the second
our fixed-lr step takes its factor statistics from a curvature sub-batch
(``--curvature-batch-size``, default 250 of the 1000, every ``--sub-stats-period`` = 2
steps; ``--curvature-batch-size 0`` for the whole batch every step); the line before the last
says which, and the whole-batch ratio is printed as well.

Before it, a roofline: every contender's multiply–adds per step (``experiments.kfac_flops``,
checked against XLA's cost analysis in the tests), the step time they imply at SGD's measured
throughput, and how close each contender runs to that floor. On a compute-bound CPU this
bounds what any implementation of the same algorithm can reach.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from classical.data import batch_indices, load_mnist
from experiments import classical_methods as cm
from experiments import kfac_flops as kflops
from experiments.classical_problems import autoencoder_problem
from experiments.harness.cli import methods_type
from experiments.harness.methods import kfac_shaped_method, optax_method, tree_copy

BASE = ("sgd", "adam", "kfac-fixed", "kfac-adaptive", "kfac-fixed-sub", "kfac-adaptive-sub", "kfac-jax-fixed",
        "kfac-jax-adaptive")
FAMILY = ("ekfac", "kfac-tridiag", "rs-kfac", "kld-wrm", "shampoo", "soap", "tnt", "mbf", "mfac")


def family_contender(name, problem, inverse_period):
    """``name`` from the autoencoder study's registry at its middle grid point, as a ``Method``."""
    from experiments.harness import as_method
    from experiments.kfac_autoencoder import METHODS

    spec = METHODS[name]
    point = dict(spec.grid[len(spec.grid) // 2])
    if name not in ("shampoo", "soap", "mfac"):
        point["inverse_period"] = inverse_period
    built = spec.make(point, problem=problem, seed=0)
    if isinstance(built, optax.GradientTransformation):
        return optax_method(problem.loss, built, check_finite=False)
    return as_method(built, problem.loss)


def build(args, problem, batches) -> dict:
    """The contenders as harness ``Method``s, built by the studies' own builders
    (``experiments.classical_methods``, ``experiments.classical_family``): optax bare steps, our
    K-FAC, kfac-jax and the family named in ``args.methods``."""
    period, k = args.inverse_period, args.stats_period
    shared = dict(damping=args.damping, inverse_period=period, damping_interval=5, ema=0.95)
    fixed = dict(lr=args.lr, momentum=args.momentum, adapt_damping=False)

    def ours(adaptive, **kw):
        return kfac_shaped_method(cm.kfac(problem, **shared, **({} if adaptive else fixed), **kw))

    out = {
        "sgd": optax_method(problem.loss, optax.sgd(args.sgd_lr, momentum=0.9), check_finite=False),
        "adam": optax_method(problem.loss, optax.adam(1e-3), check_finite=False),
        "kfac-fixed": ours(False, stats_period=k),
        "kfac-adaptive": ours(True, stats_period=k),
    }
    if args.curvature_batch_size:  # ours only: kfac-jax has no curvature sub-batch (not an equal setting)
        sub = dict(curvature_batch_size=args.curvature_batch_size, stats_period=args.sub_stats_period)
        out["kfac-fixed-sub"], out["kfac-adaptive-sub"] = ours(False, **sub), ours(True, **sub)
    if importlib.util.find_spec("kfac_jax") is not None and not args.no_kfac_jax:
        for name, adaptive in (("kfac-jax-fixed", False), ("kfac-jax-adaptive", True)):
            out[name] = cm.kfac_jax(problem, args.damping, adaptive, args.lr, args.momentum, damping_interval=5,
                                    inverse_period=period, burnin=0, ema=0.95, stats_period=k)
    for name in FAMILY:
        if name in args.methods:
            out[name] = family_contender(name, problem, period)
    return {name: method for name, method in out.items() if name in args.methods}


def run(args):
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    problem = autoencoder_problem()
    mnist = load_mnist()
    n_batches = 8
    batches = [tuple(jnp.asarray(mnist.x_train[batch_indices(60000, args.batch_size, 0, k)]) for _ in range(2))
               for k in range(n_batches)]
    params0 = problem.net.init(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(0)
    contenders = build(args, problem, batches)
    names = list(contenders)

    def fresh(method):
        return [method.init(tree_copy(params0), key, lambda t: batches[t % n_batches]), 0]

    def step(method, state, t):
        state, info = method.step(state, batches[t % n_batches], jax.random.fold_in(key, t), t)
        return state, info["loss"]

    state = {}
    print(f"warming up (compiling) {len(names)} contenders at batch {args.batch_size} ...", flush=True)
    for name in names:
        start = time.perf_counter()
        s, _ = fresh(contenders[name])
        for t in range(args.block + 2):  # every branch: inverse refresh, damping adaptation, plain
            s, loss = step(contenders[name], s, t)
        jax.block_until_ready(s)
        print(f"  {name:18s} warm-up {time.perf_counter() - start:6.1f} s, loss {float(loss):.2f}", flush=True)
        state[name] = fresh(contenders[name])  # restart at step 0 (compiled code is cached)
    times = {n: [] for n in names}
    for rep in range(args.reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            s, t = state[name]
            block = []
            for _ in range(args.block):
                start = time.perf_counter()
                s, loss = step(contenders[name], s, t)
                jax.block_until_ready((s, loss))
                block.append(time.perf_counter() - start)
                t += 1
            if not np.isfinite(float(loss)):
                print(f"  warning: {name} loss is non-finite at step {t}")
            state[name] = [s, t]
            times[name].append(block)
        print(f"  repetition {rep + 1}/{args.reps} done", flush=True)
    return times, state


def report(times, args) -> dict:
    rows = {}
    for name, blocks in times.items():
        arr = 1e3 * np.asarray(blocks)  # (reps, block) ms
        rows[name] = {
            "median_ms": float(np.median(arr.mean(1))),
            "mean_ms": float(arr.mean()),
            "inverse_step_ms": float(np.median(arr[:, 0])),
            "other_step_ms": float(np.median(arr[:, 1:])) if arr.shape[1] > 1 else float("nan"),
        }
    sgd = rows["sgd"]["median_ms"]
    load = os.getloadavg()
    print(f"\nbatch {args.batch_size}, inverse period {args.inverse_period}, factor statistics every "
          f"{args.stats_period} step(s), {args.reps} interleaved blocks of "
          f"{args.block} steps per contender; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          f"on {os.cpu_count()} cores; BLAS/LAPACK 1 thread for all")
    print(f"{'contender':18s} {'median ms':>10s} {'mean ms':>9s} {'inverse-step':>13s} {'other-step':>11s} {'x SGD':>6s}")
    for name, r in rows.items():
        print(f"{name:18s} {r['median_ms']:10.1f} {r['mean_ms']:9.1f} {r['inverse_step_ms']:13.1f} "
              f"{r['other_step_ms']:11.1f} {r['median_ms'] / sgd:6.2f}")
    ratios = {f"{name.replace('-', '_')}_vs_sgd": rows[name]["median_ms"] / sgd
              for name in ("kfac-fixed", "kfac-adaptive", *FAMILY) if name in rows}
    if "kfac-jax-adaptive" in rows:
        ratios["kfac_adaptive_vs_kfac_jax_adaptive"] = rows["kfac-adaptive"]["median_ms"] / rows["kfac-jax-adaptive"]["median_ms"]
        ratios["kfac_fixed_vs_kfac_jax_fixed"] = rows["kfac-fixed"]["median_ms"] / rows["kfac-jax-fixed"]["median_ms"]
        ratios["kfac_jax_adaptive_vs_sgd"] = rows["kfac-jax-adaptive"]["median_ms"] / sgd
        ratios["kfac_jax_fixed_vs_sgd"] = rows["kfac-jax-fixed"]["median_ms"] / sgd
    floors = flop_floors(args, rows)
    print("\n" + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()))
    if "kfac-fixed" not in rows:
        return {"rows": rows, "ratios": ratios, "load": load, "flop_floors": floors}
    vs_sgd = ratios["kfac_fixed_vs_sgd"]
    if "kfac-fixed-sub" in rows:
        vs_sgd = ratios["kfac_fixed_sub_vs_sgd"] = rows["kfac-fixed-sub"]["median_ms"] / sgd
        if "kfac-jax-adaptive" in rows:
            ratios["kfac_adaptive_sub_vs_kfac_jax_adaptive"] = (rows["kfac-adaptive-sub"]["median_ms"]
                                                                / rows["kfac-jax-adaptive"]["median_ms"])
    vs_jax = ratios.get("kfac_adaptive_vs_kfac_jax_adaptive", float("nan"))
    print("kfac_step_vs_kfac_jax: adaptive vs adaptive, equal settings (statistics on the whole batch); "
          + (f"kfac_step_vs_sgd: kfac-fixed-sub, factor statistics on {args.curvature_batch_size} of the "
             f"{args.batch_size} examples every {args.sub_stats_period} step(s) (whole batch, every "
             f"{args.stats_period} step(s): kfac_fixed_vs_sgd above)"
             if "kfac-fixed-sub" in rows else "kfac_step_vs_sgd: kfac-fixed (statistics on the whole batch)"))
    print(f"kfac_step_vs_kfac_jax={vs_jax:.2f} kfac_step_vs_sgd={vs_sgd:.2f}")
    return {"rows": rows, "ratios": ratios, "load": load, "flop_floors": floors}


def _contender_cost(name, args, shapes):
    if name in ("sgd", "adam"):
        return kflops.step_cost("sgd", shapes, args.batch_size)
    sub = name.endswith("-sub")
    common = {"inverse_period": args.inverse_period, "damping_interval": 5,
              "stats_period": args.sub_stats_period if sub else args.stats_period}
    method = "kfac-adaptive" if "adaptive" in name else "kfac-fixed"
    sub = args.curvature_batch_size if sub else None
    return kflops.step_cost(method, shapes, args.batch_size, curvature_batch=sub, **common)


def flop_floors(args, rows) -> dict:
    """Multiply–adds per step (``experiments.kfac_flops``) and the step time they imply at SGD's
    measured throughput: the floor for any implementation of the same algorithm."""
    shapes = [(d_in - 1, d_out) for d_in, d_out in autoencoder_problem().net.layer_shapes.values()]
    sgd_macs = kflops.step_cost("sgd", shapes, args.batch_size).total
    sgd_ms = rows["sgd"]["median_ms"]
    out = {"sgd_gflops": 2 * sgd_macs / sgd_ms / 1e6}
    print(f"\nmultiply-adds per step (experiments.kfac_flops) and the floor they set at SGD's measured "
          f"throughput ({out['sgd_gflops']:.0f} GFLOP/s):")
    print(f"{'contender':18s} {'GMAC':>6s} {'floor x SGD':>12s} {'measured x SGD':>15s} {'floor/measured':>15s}")
    for name, r in rows.items():
        if name in FAMILY:  # no cost model for the family (experiments.kfac_flops covers SGD and K-FAC)
            continue
        macs = _contender_cost(name, args, shapes).total
        floor = macs / sgd_macs
        out[name] = {"gmac": macs / 1e9, "floor_vs_sgd": floor, "floor_over_measured": floor * sgd_ms / r["median_ms"]}
        print(f"{name:18s} {macs / 1e9:6.2f} {floor:12.2f} {r['median_ms'] / sgd_ms:15.2f} "
              f"{out[name]['floor_over_measured']:15.2f}")
    peak = out["peak_gemm_gflops"] = peak_gemm_gflops()
    if "kfac-jax-adaptive" in rows:
        jax_ms = rows["kfac-jax-adaptive"]["median_ms"]
        bound = out["kfac-adaptive"]["floor_vs_sgd"] * sgd_ms / jax_ms
        need = 2 * out["kfac-adaptive"]["gmac"] * 1e9 / (0.8 * jax_ms) / 1e6
        print(f"equal settings: at SGD's throughput the adaptive step cannot beat {bound:.2f}x kfac-jax's "
              f"(kfac-jax runs at {out['kfac-jax-adaptive']['floor_over_measured']:.0%} of that floor); 0.8x would "
              f"take {need:.0f} GFLOP/s over the whole step, {need / peak:.0%} of XLA's best single "
              f"{GEMM_N}^3 float32 product here ({peak:.0f} GFLOP/s)")
        out["kfac_vs_kfac_jax_bound"], out["gflops_needed_for_0.8"] = bound, need
    return out


GEMM_N = 1000


def peak_gemm_gflops(reps=20) -> float:
    """Best-of-``reps`` GFLOP/s of one jitted float32 GEMM of size ``GEMM_N``³: the throughput ceiling."""
    a = jax.random.normal(jax.random.PRNGKey(0), (GEMM_N, GEMM_N), jnp.float32)
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, a))
    best = np.inf
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(f(a, a))
        best = min(best, time.perf_counter() - start)
    return 2 * GEMM_N**3 / best / 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(prog="qgeom bench-kfac", description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=4, help="interleaved timed blocks per contender")
    ap.add_argument("--block", type=int, default=20, help="steps per timed block (default: the inverse period)")
    ap.add_argument("--inverse-period", type=int, default=20)
    ap.add_argument("--stats-period", type=int, default=1,
                    help="factor statistics every k steps, for both K-FACs (ours: stats_period, kfac-jax: "
                         "curvature_update_period); at most the inverse period")
    ap.add_argument("--lr", type=float, default=0.2, help="fixed K-FAC learning rate")
    ap.add_argument("--momentum", type=float, default=0.9, help="fixed K-FAC momentum")
    ap.add_argument("--damping", type=float, default=150.0, help="(initial) K-FAC damping")
    ap.add_argument("--sgd-lr", type=float, default=1e-2)
    ap.add_argument("--curvature-batch-size", type=int, default=250,
                    help="also time our fixed-lr K-FAC with curvature on this sub-batch (kfac-fixed-sub; it is "
                         "then the kfac_step_vs_sgd contender); 0: don't")
    ap.add_argument("--sub-stats-period", type=int, default=2,
                    help="factor statistics every k steps for the two -sub contenders (default 2)")
    ap.add_argument("--no-kfac-jax", action="store_true", help="skip kfac-jax even if installed")
    ap.add_argument("--methods", type=methods_type, nargs="+",
                    help=f"contenders to time (sgd always): any of {', '.join(BASE + FAMILY)}")
    ap.add_argument("--full", action="store_true", help="every contender, the K-FAC family included")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    chosen = [m for group in args.methods for m in group] if args.methods else list(BASE + FAMILY if args.full
                                                                                   else BASE)
    bad = sorted(set(chosen) - set(BASE + FAMILY))
    if bad:
        raise ValueError(f"unknown contenders {bad}; choose from {list(BASE + FAMILY)}")
    args.methods = ["sgd"] + [m for m in dict.fromkeys(chosen) if m != "sgd"]
    if not 0 <= args.curvature_batch_size <= args.batch_size:
        raise ValueError("--curvature-batch-size must be in [0, --batch-size]")
    for name in ("stats_period", "sub_stats_period"):
        if not 1 <= getattr(args, name) <= args.inverse_period:
            raise SystemExit(f"--{name.replace('_', '-')} must lie in [1, inverse period], got {getattr(args, name)}")
    for name in ("batch_size", "reps", "block", "inverse_period"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.batch_size > 60000:
        raise ValueError("--batch-size must be <= 60000 (MNIST's training set)")
    with cm.float32_mode(), cm.single_threaded_blas():
        times, _ = run(args)
    out = report(times, args)
    if args.json:
        from experiments.harness.store import atomic_write_json

        atomic_write_json(args.json, {"args": vars(args), **out, "times_ms": {k: 1e3 * np.asarray(v) for k, v in times.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
