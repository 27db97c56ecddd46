"""Why Shampoo, SOAP, TNT, MBF and M-FAC cost more than 1.5 SGD steps at batch 1000: a roofline.

Each method's step is split into parts, each counted in multiply–adds (MACs) and timed alone
(process CPU seconds, jitted, BLAS on one thread as in the studies) on the ReLU autoencoder's
weights (``relu_autoencoder``; W of shape a × b, a = d_in + 1 with the bias row, P = Σ ab):

    gradient (the SGD step)   N P + N P + N (P − P₁)            forward, weight and input grads
    Shampoo   statistics      Σ ab(a + b)                       L += GGᵀ, R += GᵀG
              precondition    Σ ab(a + b)                       L^{-1/4} G R^{-1/4}
              refresh / T     Σ_n (9/2 n³ + n³)                 eigh (9n³ flops, Golub & Van Loan
                                                                §8.3) + V diag Vᵀ, per factor
    SOAP      statistics      Σ ab(a + b)
              rotations       2 Σ ab(a + b)                     G in, m/(√v + ε) out
              refresh / f     Σ_n (n³ + 4/3 n³) + 2 Σ ab(a + b) S·Q, QR with Q (8/3 n³ flops), m re-rotated
    TNT       sampled backward N (P − P₁)                       taps for sampled targets
              statistics      N P + Σ ab(a + b)                 Ḡ = Σ_n ā gᵀ, then ḠḠᵀ, ḠᵀḠ
              precondition    Σ ab(a + b)
              refresh / T     Σ_n 5/3 n³                        Cholesky inverse (kfac_flops)
    MBF       statistics      N P s                             mini-blocks of s rows: g²ā āᵀ
              precondition    P s
              refresh / T     5/3 P s²                          batched Cholesky inverses
    M-FAC     window          2 m d + m³/6                      G g, Gᵀ y, m × m Cholesky;
                                                                memory: 2·m·d·4 bytes read

(n runs over the factors' sizes; s = MBF's mini-block size; m = M-FAC's window, d = P.) The
rest of a measured step ("elementwise and other": grafting, momentum, norms, selects, the
engine's bookkeeping) is the whole step minus the parts. A part whose MACs alone exceed half
an SGD step's keeps the method above 1.5× at any refresh period. ``qgeom bench-shape``
prints the tables; ``tests/test_bench_shape.py`` checks the MAC counts against XLA's cost
analysis.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

EIGH, ROOT, QR, CHOL_INV = 4.5, 1.0, 4 / 3, 1 / 6 + 1 / 2 + 1  # MACs per n³
PARTS = ("gradient", "sampled backward", "statistics", "precondition", "rotations", "refresh", "window")


def _gemm(shapes):
    """Σ ab(a + b): both Gram products of every W (or both sides of a two-sided product)."""
    return sum(a * b * (a + b) for a, b in shapes)


def _factors(shapes, block_size=None):
    """The sizes of every Kronecker factor: two per W, or per block when axes are cut at ``block_size``."""
    return [k for blk in (_blocked(shapes, block_size) if block_size else shapes) for k in blk]


def _blocked(shapes, block_size):
    """The (a', b') blocks Shampoo preconditions when every axis is cut at ``block_size``."""
    cut = lambda n: [block_size] * (n // block_size) + ([n % block_size] if n % block_size else [])
    return [(x, y) for a, b in shapes for x in cut(a) for y in cut(b)]


def gradient_macs(shapes, n):
    """Forward N P, weight gradients N P, input gradients N (P − P₁)."""
    p = sum(a * b for a, b in shapes)
    return 3 * n * p - n * shapes[0][0] * shapes[0][1]


def part_macs(method, shapes, n, *, period=20, block_size=1024, mini=16, window=32) -> dict:
    """MACs per step of each part of ``method`` (refresh amortised over ``period``)."""
    p = sum(a * b for a, b in shapes)
    parts = {"gradient": gradient_macs(shapes, n)}
    if method == "shampoo":
        blocks = _blocked(shapes, block_size)
        parts.update(statistics=_gemm(blocks), precondition=_gemm(blocks),
                     refresh=sum((EIGH + ROOT) * k**3 for k in _factors(shapes, block_size)) / period)
    elif method == "soap":
        parts.update(statistics=_gemm(shapes), rotations=2 * _gemm(shapes),
                     refresh=(sum((1 + QR) * k**3 for k in _factors(shapes)) + 2 * _gemm(shapes)) / period)
    elif method == "tnt":
        parts.update({"sampled backward": n * (p - shapes[0][0] * shapes[0][1]),
                      "statistics": n * p + _gemm(shapes), "precondition": _gemm(shapes),
                      "refresh": sum(CHOL_INV * k**3 for k in _factors(shapes)) / period})
    elif method == "mbf":
        parts.update(statistics=n * p * mini, precondition=p * mini, refresh=CHOL_INV * p * mini**2 / period)
    elif method == "mfac":
        parts.update(window=2 * window * p + window**3 / 6)
    else:
        raise ValueError(f"unknown method {method!r}")
    return parts


def _cpu(fn, *args, repeats=3):
    """Median process CPU seconds of ``fn(*args)`` after one warm-up call (compilation)."""
    import jax

    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.process_time()
        jax.block_until_ready(fn(*args))
        ts.append(time.process_time() - t0)
    return float(np.median(ts))


def _stepper(fn, state, repeats):
    """CPU seconds per call of ``state ← fn(state)`` (state threaded: donation-safe), after one call."""
    import jax

    state = jax.block_until_ready(fn(state))
    ts = []
    for _ in range(repeats):
        t0 = time.process_time()
        state = jax.block_until_ready(fn(state))
        ts.append(time.process_time() - t0)
    return float(np.median(ts)), state


def measure(n=1000, *, period=20, mini=16, window=32, repeats=3, methods=("shampoo", "soap", "tnt", "mbf", "mfac"),
            seed=0, shampoo_blocks=()) -> dict:
    """CPU seconds of each part (``part_macs``' names) and of whole plain / refresh steps; for each
    size in ``shampoo_blocks``, Shampoo's whole steps with axes cut into blocks of that size."""
    import functools

    import jax
    import jax.numpy as jnp
    import optax

    from classical import transforms
    from classical.blocks.base import LayerBatch
    from classical.blocks.mini_block import MiniBlockFisherBlock
    from classical.blocks.tnt import TNTBlock
    from classical.transforms.soap import _refresh as soap_refresh
    from classical.transforms.tensor_ops import axis_gram, inverse_root, mode_dot
    from experiments import classical_family as cf
    from experiments.classical_methods import float32_mode, single_threaded_blas
    from experiments.relu_autoencoder import relu_autoencoder_problem

    problem = relu_autoencoder_problem()
    names, shapes = list(problem.net.layer_shapes), list(problem.net.layer_shapes.values())
    out = {}
    with float32_mode(), single_threaded_blas():
        key = jax.random.PRNGKey(seed)
        params = problem.net.init(key)
        x = jax.random.uniform(jax.random.fold_in(key, 1), (n, shapes[0][0] - 1), jnp.float32)
        batch = (x, x)
        g = jax.grad(problem.loss)(params, batch)
        ws = [g[k] for k in names]
        fresh = lambda: jax.tree_util.tree_map(jnp.copy, params)  # the steps donate their state

        def optax_step(tx):
            @functools.partial(jax.jit, donate_argnums=(0,))
            def step(state):
                p, s = state
                grads = jax.grad(problem.loss)(p, batch)
                u, s = tx.update(grads, s, p)
                return optax.apply_updates(p, u), s
            return step

        sgd = optax.sgd(1e-3, momentum=0.9)
        out["sgd"] = {"step": _stepper(optax_step(sgd), (fresh(), sgd.init(params)), repeats)[0],
                      "gradient": _cpu(jax.jit(jax.value_and_grad(problem.loss)), params, batch, repeats=repeats)}
        grams = jax.jit(lambda ws: [(axis_gram(w, 0), axis_gram(w, 1)) for w in ws])
        two_sided = jax.jit(lambda ws, fs: [mode_dot(mode_dot(w, f[0], 0), f[1], 1) for w, f in zip(ws, fs)])
        fs = grams(ws)
        eye = [(jnp.eye(a), jnp.eye(b)) for a, b in shapes]

        def timed_steps(step, state, k_plain, refresh_every):
            """(plain-step s, refresh-step s): calls 1…k_plain are plain, call 0 and k·refresh_every refresh."""
            t_plain, state = _stepper(step, state, k_plain)
            return t_plain, _stepper(step, state, 1)[0] if refresh_every else None

        if "shampoo" in methods:
            tx = transforms.shampoo(1e-3, precondition_every=repeats + 2, start_preconditioning_step=0)
            roots = jax.jit(lambda fs: [tuple(inverse_root(s, 4, 1e-6)[0] for s in f) for f in fs])
            plain, refresh = timed_steps(optax_step(tx), (fresh(), tx.init(params)), repeats, 1)
            out["shampoo"] = {"statistics": _cpu(grams, ws, repeats=repeats),
                              "precondition": _cpu(two_sided, ws, fs, repeats=repeats),
                              "refresh": _cpu(roots, fs, repeats=1), "step": plain, "refresh_step": refresh}
        for bs in shampoo_blocks:
            tx = transforms.shampoo(1e-3, precondition_every=repeats + 2, start_preconditioning_step=0, block_size=bs)
            plain, refresh = timed_steps(optax_step(tx), (fresh(), tx.init(params)), repeats, 1)
            out[f"shampoo@{bs}"] = {"step": plain, "refresh_step": refresh, "block_size": bs}
        if "soap" in methods:
            tx = transforms.soap(1e-3, weight_decay=0.0, precondition_frequency=repeats + 3)
            qr = jax.jit(lambda fs, qs, ms: [soap_refresh(f, q, m, m) for f, q, m in zip(fs, qs, ms)])
            rot = jax.jit(lambda ws, qs: [mode_dot(mode_dot(mode_dot(mode_dot(w, q[0].T, 0), q[1].T, 1), q[0], 0),
                                                   q[1], 1) for w, q in zip(ws, qs)])
            state = (fresh(), tx.init(params))
            state = optax_step(tx)(state)  # the first call builds the bases (eigh), not timed
            plain, refresh = timed_steps(optax_step(tx), state, repeats, 1)
            out["soap"] = {"statistics": _cpu(grams, ws, repeats=repeats), "rotations": _cpu(rot, ws, eye, repeats=repeats),
                           "refresh": _cpu(qr, fs, eye, ws, repeats=1), "step": plain, "refresh_step": refresh}
        layer_batches = [LayerBatch(jax.random.normal(jax.random.fold_in(key, 10 + i), (n, 1, a - 1)),
                                    jax.random.normal(jax.random.fold_in(key, 50 + i), (n, 1, b)) / n)
                         for i, (a, b) in enumerate(shapes)]
        for name, block_of, hp in (("tnt", lambda s: TNTBlock(s), dict(damping=3.16, momentum=0.9, ema=0.9)),
                                   ("mbf", lambda s: MiniBlockFisherBlock(s, block_size=mini),
                                    dict(damping=3.0, momentum=0.9))):
            if name not in methods:
                continue
            blocks = [block_of(s) for s in shapes]
            stats0 = [b.init() for b in blocks]
            upd = jax.jit(lambda st, lb, blocks=blocks: [b.update(s, x, 0.9) for b, s, x in zip(blocks, st, lb)])
            ref = jax.jit(lambda st, blocks=blocks: [b.refresh(s, 3.0)[1] for b, s in zip(blocks, st)])
            app = jax.jit(lambda st, c, ws, blocks=blocks: [b.apply_inverse(s, ci, w, 3.0)
                                                            for b, s, ci, w in zip(blocks, st, c, ws)])
            stats = upd(stats0, layer_batches)
            cache = ref(stats)
            opt = (cf.tnt if name == "tnt" else cf.mbf)(problem, lr=1e-3, adapt_damping=False,
                                                         inverse_period=repeats + 2, **hp)
            kstep = jax.jit(lambda st: opt.step(*st, batch)[:2])  # opt.step is jitted inside; thin wrapper
            plain, refresh = timed_steps(kstep, (fresh(), opt.init(params)), repeats, 1)
            out[name] = {"statistics": _cpu(upd, stats0, layer_batches, repeats=repeats),
                         "refresh": _cpu(ref, stats, repeats=1),
                         "precondition": _cpu(app, stats, cache, ws, repeats=repeats), "step": plain,
                         "refresh_step": refresh}
        if "mfac" in methods:
            tx = transforms.mfac(1.0, num_grads=window)
            flat = jnp.concatenate([w.ravel() for w in ws])
            buf = jax.random.normal(key, (window, flat.size), jnp.float32)
            both = jax.jit(lambda buf, v: (buf @ v, jnp.ones(window) @ buf))
            copy = jax.jit(lambda buf: buf + 1.0)
            plain, _ = timed_steps(optax_step(tx), (fresh(), tx.init(params)), repeats, 0)
            t_copy = _cpu(copy, buf, repeats=repeats)
            out["mfac"] = {"window": _cpu(both, buf, flat, repeats=repeats), "step": plain, "copy": t_copy}
    return {"batch": n, "period": period, "mini": mini, "window": window, "shapes": [list(s) for s in shapes],
            "cpu_s": out}


def table(meas: dict, period: int = 20) -> str:
    """Markdown: per method and part, GMACs, MACs ÷ SGD step, CPU ms and ms ÷ SGD step, then the
    whole step (plain / refresh), the floor without refreshes, and the T that would reach 1.5×."""
    n, shapes, cpu = meas["batch"], [tuple(s) for s in meas["shapes"]], meas["cpu_s"]
    sgd_ms, sgd_macs = 1e3 * cpu["sgd"]["step"], gradient_macs(shapes, n)
    lines = [f"SGD step (gradient + momentum): {gradient_macs(shapes, n) / 1e9:.2f} GMAC, {sgd_ms:.0f} ms CPU "
             f"(gradient alone {1e3 * cpu['sgd']['gradient']:.0f} ms, "
             f"{gradient_macs(shapes, n) / cpu['sgd']['gradient'] / 1e9:.1f} GMAC/s)", "",
             "| method | part | GMAC / step | × SGD (MACs) | CPU ms | × SGD (CPU) |", "|---|---|---|---|---|---|"]
    verdicts = []
    for m in ("shampoo", "soap", "tnt", "mbf", "mfac"):
        if m not in cpu:
            continue
        c = cpu[m]
        macs = part_macs(m, shapes, n, period=period, mini=meas["mini"], window=meas["window"])
        extra_ms = 0.0
        for part in PARTS[1:]:
            if part not in macs:
                continue
            ms = 1e3 * c[part] if part in c else float("nan")
            shown = ms / period if part == "refresh" else ms
            label = f"refresh ÷ T={period} ({ms:.0f} ms each)" if part == "refresh" else part
            lines.append(f"| {m} | {label} | {macs[part] / 1e9:.3f} | {macs[part] / sgd_macs:.2f} | "
                         f"{shown:.0f} | {shown / sgd_ms:.2f} |")
            if part != "refresh" and np.isfinite(ms):
                extra_ms += ms
        step_ms = 1e3 * c["step"]
        rest = step_ms - 1e3 * cpu["sgd"]["gradient"] - extra_ms
        other = "sampled backward, elementwise, other" if m == "tnt" else "elementwise and other"
        lines.append(f"| {m} | {other} (step − gradient − timed parts) | — | — | {rest:.0f} | "
                     f"{rest / sgd_ms:.2f} |")
        ref = 1e3 * c["refresh_step"] if c.get("refresh_step") else None
        whole = (step_ms * (period - 1) + (ref or step_ms)) / period
        lines.append(f"| {m} | **whole step**: plain {step_ms:.0f} ms" + (f", refresh step {ref:.0f} ms" if ref else "")
                     + f"; mean at T={period} | {sum(macs.values()) / 1e9:.2f} | {sum(macs.values()) / sgd_macs:.2f} | "
                     f"{whole:.0f} | **{whole / sgd_ms:.2f}** |")
        budget = 1.5 * sgd_ms - step_ms
        if ref is None:
            verdicts.append(f"{m}: no refresh; the step is {step_ms / sgd_ms:.2f}× SGD: 1.5× "
                            + ("holds" if budget >= 0 else "is not met"))
        elif budget <= 0:
            verdicts.append(f"{m}: the plain step alone is {step_ms / sgd_ms:.2f}× SGD > 1.5×: no refresh period "
                            "reaches 1.5×")
        else:
            verdicts.append(f"{m}: 1.5× needs T ≥ {(ref - step_ms) / budget:.0f} (refresh costs "
                            f"{(ref - step_ms) / sgd_ms:.1f} SGD steps)")
    for key, c in cpu.items():
        if key.startswith("shampoo@"):
            ms, ref = 1e3 * c["step"], 1e3 * c["refresh_step"]
            macs = sum(part_macs("shampoo", shapes, n, period=period, block_size=c["block_size"]).values())
            verdicts.append(f"shampoo, blocks of {c['block_size']}: plain step {ms:.0f} ms, refresh step {ref:.0f} ms; "
                            f"mean at T={period}: {(ms * (period - 1) + ref) / period / sgd_ms:.2f}× SGD "
                            f"(MAC floor {macs / sgd_macs:.2f}×)")
    if "mfac" in cpu:
        c = cpu["mfac"]
        bytes_ = meas["window"] * sum(a * b for a, b in shapes) * 4
        copy = c.get("copy", 2 * bytes_ / c.get("bandwidth_GBps", float("nan")) / 1e9)
        rest = c["step"] - cpu["sgd"]["gradient"] - c["window"]
        verdicts.append(f"mfac: the window's two passes read {2 * bytes_ / 1e9:.2f} GB in {1e3 * c['window']:.0f} ms "
                        f"({2 * bytes_ / c['window'] / 1e9:.0f} GB/s); a fresh copy of the {bytes_ / 1e9:.2f} GB buffer "
                        f"takes {1e3 * copy:.0f} ms ({copy / cpu['sgd']['step']:.2f}× SGD) against the step's rest of "
                        f"{1e3 * rest:.0f} ms: " + ("consistent with the buffer being copied each step" if rest > copy / 2
                                                    else "the buffer is updated in place"))
    return "\n".join(lines + [""] + [f"- {v}" for v in verdicts])


def shampoo_block_floor(shapes, n, gemm_rate, eigh_rates: dict, period=20) -> dict:
    """Modelled Shampoo ÷ SGD (statistics + precondition + refresh/T at the measured GEMM rate
    and per-size eigh rates, MAC/s) for each block size in ``eigh_rates``."""
    sgd = gradient_macs(shapes, n) / gemm_rate
    out = {}
    for bs, rate in eigh_rates.items():
        blocks = _blocked(shapes, bs)
        refresh = sum((EIGH + ROOT) * k**3 for k in _factors(shapes, bs)) / rate / period
        out[bs] = (sgd + 2 * _gemm(blocks) / gemm_rate + refresh) / sgd
    return out


def eigh_rates(sizes=(1024, 512, 256, 128, 64), repeats=1) -> dict:
    """Measured MAC/s of batched eigh + root (the model's (9/2 + 1) n³) at each size, 1 BLAS thread."""
    import jax
    import jax.numpy as jnp

    from classical.transforms.tensor_ops import inverse_root
    from experiments.classical_methods import float32_mode, single_threaded_blas

    out = {}
    with float32_mode(), single_threaded_blas():
        for k in sizes:
            count = max(1, (1024 // k) ** 2 // 4)
            x = jax.random.normal(jax.random.PRNGKey(k), (count, k, 2 * k), jnp.float32)
            s = jnp.einsum("bij,bkj->bik", x, x)
            fn = jax.jit(jax.vmap(lambda m: inverse_root(m, 4, 1e-6)[0]))
            out[k] = count * (EIGH + ROOT) * k**3 / _cpu(fn, s, repeats=repeats)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="qgeom bench-shape", description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--period", type=int, default=20, help="T: refresh period the table amortises over")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", default="shampoo,soap,tnt,mbf,mfac")
    p.add_argument("--out", default="results/bench_shape")
    p.add_argument("--shampoo-blocks", default="", help="comma-separated block sizes: Shampoo's whole steps")
    p.add_argument("--table-only", action="store_true", help="re-print the tables from OUT/results.json")
    args = p.parse_args(argv)
    if args.table_only:
        meas = json.loads(Path(f"{args.out}/results.json").read_text())
        print(table(meas, meas["period"]))
        return 0
    for name in ("batch_size", "period", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = set(methods) - {"shampoo", "soap", "tnt", "mbf", "mfac"}
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}")
    blocks = tuple(int(b) for b in args.shampoo_blocks.split(",") if b)
    meas = measure(args.batch_size, period=args.period, repeats=args.repeats, methods=methods, shampoo_blocks=blocks)
    shapes = [tuple(s) for s in meas["shapes"]]
    text = table(meas, args.period)
    if "shampoo" in methods:
        rates = eigh_rates()
        gemm = gradient_macs(shapes, args.batch_size) / meas["cpu_s"]["sgd"]["gradient"]
        floor = shampoo_block_floor(shapes, args.batch_size, gemm, rates, args.period)
        meas["eigh_mac_per_s"], meas["shampoo_block_floor"] = rates, floor
        text += ("\n\nShampoo by block size (model: the GEMM parts at the gradient's GMAC/s, eigh + root at the "
                 f"rate measured for that size, T={args.period}): "
                 + ", ".join(f"{bs}: {r:.2f}× ({rates[bs] / 1e9:.1f} GMAC/s eigh)" for bs, r in floor.items()))
    print(text)
    from experiments.harness.store import atomic_write_json, atomic_write_text

    Path(args.out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(f"{args.out}/results.json", meas)
    atomic_write_text(f"{args.out}/summary.md", text + "\n")
    print(f"summary: {args.out}/summary.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
