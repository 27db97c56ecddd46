"""GPU benchmark (``qgeom bench-gpu``): simulator, structured BKM metric and K-FAC step, side by side.

One process, one GPU, every ratio measured in this run against its reference on the same device:

* **VQT loss + gradient** (TFIM ring, h = 0.8, β = 1, Bernoulli EBM, 2-layer hardware-efficient
  circuit; ``experiments.bench_simulator``) for n = 8, 10, 12, 14 qubits, float64 (complex128):
  ours ``jit(value_and_grad(vqt_loss(...)))`` against the PennyLane formulation (a
  ``default.qubit`` QNode on each basis state, vmapped, weighted by p_θ, jitted as a whole). The
  PennyLane formulation holds one 2ⁿ-state per basis state and per gate for reverse mode, so it is
  skipped (and says so) where that estimate exceeds the device's memory. Both losses must agree.
* **Structured QHBM BKM metric** ``qhbm_bkm(model, params).dense()`` at n = 10, 12 against the generic
  Petz form ``bkm(model.density_matrix, params).dense()`` (one eigh of ρ, one jacfwd), max |ΔG| printed.
* **K-FAC autoencoder step** (784-1000-500-250-30-250-500-1000-784, float32, synthetic uniform
  images — the step's cost does not depend on the pixel values) at batch 1000 and 4096: optax SGD
  (momentum 0.9), our K-FAC (fixed and adaptive, statistics every step, inverse period 20) and
  kfac-jax with the same settings (on the studies' kfac-jax parametrisation), timed in interleaved
  blocks of 20 steps (one inverse refresh each), median over blocks.

Timings: ``time.perf_counter`` around ``jax.block_until_ready`` after a compile call; the
minimum over repeats for the quantum kernels, the median block for the training steps. The
dense-simulation memory guard (``qgeom.quantum.limits.max_dense_bytes``) reads the GPU's
own memory (``Device.memory_stats()["bytes_limit"]``), not the host's. Comparators that cannot
be imported (PennyLane, kfac-jax) are skipped with the reason printed. Prints the tables and
writes every number, the device's name and the targets to ``--out``/``bench_gpu.json``.
Refuses to run without a GPU unless ``--allow-cpu`` (``--quick``: tiny sizes, a self-check).

On a GPU image with a newer JAX than the pinned 0.7.1, ``jax_compat`` restores the two removed
names PennyLane 0.45.1 and the studies use; kfac-jax 0.0.8 does not import on JAX ≥ 0.11
(``jax.core.Effects`` removed) and is then skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

AUTOENCODER = (784, 1000, 500, 250, 30, 250, 500, 1000, 784)  # the K-FAC paper's MNIST autoencoder
TARGETS = {"vqt_n12_ms": 50.0, "vqt_n14_ms": 1000.0, "kfac_vs_sgd_b4096": 2.0}


def jax_compat():
    """Restore a name removed in JAX 0.11 that PennyLane 0.45.1 uses.

    The project pins jax 0.7.1; GPU images may ship a newer JAX. ``jax.core.is_concrete``
    (called by PennyLane's ``qml.math.is_abstract``) still lives in ``jax._src.core``. The K-FAC
    studies switch x64 off through ``classical_methods.float32_mode``, which knows both APIs.
    Changes nothing on jax 0.7.1.
    kfac-jax 0.0.8 is not patched: it uses removed jaxpr internals (``jax.core.Effects``, …) and
    is skipped with the import error printed.
    """
    import jax._src.core
    import jax.core

    try:
        jax.core.is_concrete  # noqa: B018
    except AttributeError:
        jax.core.is_concrete = jax._src.core.is_concrete


def gpu_devices():
    """The GPUs JAX sees (``platform == "gpu"``: CUDA or ROCm)."""
    return [d for d in jax.devices() if d.platform == "gpu"]


def device_name() -> str:
    """``nvidia-smi`` name, memory and driver of the first GPU, else JAX's ``device_kind``."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return jax.devices()[0].device_kind


def device_memory_bytes() -> int | None:
    """Bytes XLA may allocate on the first device (None where the backend does not say, e.g. CPU)."""
    stats = jax.devices()[0].memory_stats()
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def timed(fn, args, repeats):
    """Minimum wall time of ``fn(*args)`` over ``repeats`` calls after one compile call."""
    jax.block_until_ready(fn(*args))
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def _tree_maxdiff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _pennylane_bytes(n, layers):
    """Reverse-mode memory of the vmapped PennyLane loss: one 2ⁿ-state per basis state per gate."""
    gates = layers * 3 * n + 2 * n  # RX, RZ, CZ per qubit and layer; basis preparation
    return gates * 16 * 4**n


def _skip(out, key, reason):
    out[key] = {"skipped": reason}
    print(f"  {key}: skipped ({reason})", flush=True)


def bench_vqt(sizes, repeats, memory, out):
    from experiments.bench_simulator import BETA, LAYERS, problem
    from qgeom.quantum import vqt_loss

    try:
        from experiments.bench_simulator import pennylane_loss
    except Exception as err:  # noqa: BLE001 - any import failure means: no comparator
        pennylane_loss, why = None, f"PennyLane formulation unavailable: {type(err).__name__}: {err}"
    if not sizes:
        return
    print(f"\nVQT loss + gradient (float64): {'n':>3} {'ours ms':>10} {'PennyLane ms':>13} {'speedup':>8} "
          f"{'|ΔL|':>8} {'max|Δgrad|':>10}", flush=True)
    for n in sizes:
        H, model, params = problem(n)
        try:
            ours = jax.jit(jax.value_and_grad(vqt_loss(model, H, BETA)))
            row = {"ours_ms": 1e3 * timed(ours, (params,), repeats if n < 14 else max(2, repeats // 4))}
        except Exception as err:  # noqa: BLE001 - memory guard or device OOM: report and go on
            _skip(out, f"n{n}", f"ours failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
            continue
        (loss, grad) = ours(params)
        row["loss"] = float(loss)
        if pennylane_loss is None:
            row["pennylane"] = why
        elif memory is not None and _pennylane_bytes(n, LAYERS) > memory:
            row["pennylane"] = (f"skipped: needs ~{_pennylane_bytes(n, LAYERS) / 2**30:.0f} GiB for reverse mode, "
                                f"device has {memory / 2**30:.0f} GiB")
        else:
            try:
                ref = jax.jit(jax.value_and_grad(pennylane_loss(model, H)))
                row["pennylane_ms"] = 1e3 * timed(ref, (params,), max(2, repeats // 4))
                rl, rg = ref(params)
                row["speedup"] = row["pennylane_ms"] / row["ours_ms"]
                row["abs_dloss"], row["max_dgrad"] = abs(float(rl) - float(loss)), _tree_maxdiff(rg, grad)
            except Exception as err:  # noqa: BLE001 - report a comparator failure, keep measuring ours
                row["pennylane"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        out[f"n{n}"] = row
        pl = f"{row['pennylane_ms']:13.2f} {row['speedup']:8.1f} {row['abs_dloss']:8.1e} {row['max_dgrad']:10.1e}" \
            if "pennylane_ms" in row else f"  — ({row['pennylane']})"
        print(f"{'':31s}{n:>3} {row['ours_ms']:10.2f} {pl}", flush=True)


def bench_bkm(sizes, repeats, out):
    from experiments.bench_simulator import problem
    from qgeom.metrics import bkm
    from qgeom.metrics.qhbm import qhbm_bkm

    print(f"\nQHBM BKM metric .dense(): {'n':>3} {'P':>4} {'structured ms':>14} {'generic ms':>11} {'speedup':>8} "
          f"{'max|ΔG|/max|G|':>15}", flush=True)
    for n in sizes:
        _, model, params = problem(n)
        ours = jax.jit(lambda p, model=model: qhbm_bkm(model, p).dense())
        ref = jax.jit(lambda p, model=model: bkm(model.density_matrix, p).dense())
        row = {"params": int(sum(x.size for x in jax.tree.leaves(params)))}
        row["structured_ms"] = 1e3 * timed(ours, (params,), repeats)
        try:
            row["generic_ms"] = 1e3 * timed(ref, (params,), max(2, repeats // 4))
            g, r = ours(params), ref(params)
            row["rel_err"] = float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r)))
            row["speedup"] = row["generic_ms"] / row["structured_ms"]
            tail = f"{row['generic_ms']:11.2f} {row['speedup']:8.1f} {row['rel_err']:15.1e}"
        except Exception as err:  # noqa: BLE001 - the generic form may not fit; report it
            row["generic"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
            tail = f"  — ({row['generic']})"
        out[f"n{n}"] = row
        print(f"{'':26s}{n:>3} {row['params']:>4} {row['structured_ms']:14.2f} {tail}", flush=True)


def _kfac_contenders(net, l2, block, batch0, with_kfac_jax):
    """{name: (init(params) -> state, step(params, state, batch, t) -> (params, state, loss))}."""
    import optax

    from classical.kfac import KFAC

    def objective(params, batch):
        return net.loss(params, *batch) + l2 * 0.5 * sum(jnp.sum(w**2) for w in jax.tree.leaves(params))

    sgd = optax.sgd(1e-2, momentum=0.9)

    @jax.jit
    def sgd_step(params, state, batch):
        loss, grads = jax.value_and_grad(objective)(params, batch)
        updates, state = sgd.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    out = {"sgd": (sgd.init, lambda p, s, b, t: sgd_step(p, s, b))}
    shared = dict(damping=150.0, l2_reg=l2, inverse_period=block, damping_interval=5, ema_decay=0.95,
                  min_damping=1e-5, max_damping=1000.0, donate_state=True)
    for name, kw in (("kfac-fixed", dict(learning_rate=0.2, momentum=0.9, adapt_damping=False)),
                     ("kfac-adaptive", {})):
        opt = KFAC(net, **shared, **kw)

        def step(p, s, b, t, opt=opt):
            p, s, info = opt.step(p, s, b)
            return p, s, info["objective"]

        out[name] = (opt.init, step)
    if with_kfac_jax:
        out.update(_kfac_jax_contenders(net, l2, block, batch0))
    return out


def _kfac_jax_contenders(net, l2, block, batch0):
    """kfac-jax's Optimizer with the same settings, on the studies' kfac-jax parametrisation."""
    import kfac_jax

    from experiments.classical_problems import Problem, kfac_jax_loss, split_params

    out = {}
    problem, key = Problem("autoencoder", net, l2), jax.random.PRNGKey(0)
    for name, adaptive in (("kfac-jax-fixed", False), ("kfac-jax-adaptive", True)):
        opt = kfac_jax.Optimizer(
            value_and_grad_func=jax.value_and_grad(lambda p, b: kfac_jax_loss(problem, p, b)), l2_reg=l2,
            use_adaptive_learning_rate=adaptive, use_adaptive_momentum=adaptive, use_adaptive_damping=adaptive,
            initial_damping=150.0, min_damping=1e-5, max_damping=1000.0, damping_adaptation_interval=5,
            damping_adaptation_decay=0.95, inverse_update_period=block, num_burnin_steps=0, curvature_ema=0.95,
            multi_device=False)
        fixed = {} if adaptive else {"learning_rate": jnp.float32(0.2), "momentum": jnp.float32(0.9),
                                     "damping": jnp.float32(150.0)}

        def init(params, opt=opt):
            return opt.init(split_params(net, params), key, batch0)

        def step(p, s, b, t, opt=opt, fixed=fixed):
            split = p if isinstance(next(iter(p.values())), dict) else split_params(net, p)
            split, s, stats = opt.step(split, s, jax.random.fold_in(key, t), batch=b, global_step_int=t, **fixed)
            return split, s, stats["loss"]

        out[name] = (init, step)
    return out


def bench_kfac_steps(batch_sizes, reps, block, no_kfac_jax, out, sizes=AUTOENCODER):
    from classical.models import mlp
    from experiments.classical_methods import float32_mode

    if not no_kfac_jax:
        try:
            import kfac_jax  # noqa: F401

            import experiments.classical_problems  # noqa: F401
        except Exception as err:  # noqa: BLE001 - not installed, or broken on this JAX
            no_kfac_jax = True
            out["kfac_jax"] = f"skipped: import failed: {type(err).__name__}: {err}"
            print(f"  kfac-jax {out['kfac_jax']}", flush=True)
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    with float32_mode():
        code, last = len(sizes) // 2 - 1, len(sizes) - 2  # linear code layer and logits, tanh elsewhere
        net = mlp(sizes, ["linear" if i in (code, last) else "tanh" for i in range(len(sizes) - 1)], "bernoulli")
        params0 = net.init(jax.random.PRNGKey(0))
        for bs in batch_sizes:
            xs = jax.random.uniform(jax.random.PRNGKey(bs), (4, bs, sizes[0]), jnp.float32)
            batches = [(x, x) for x in xs]
            contenders = _kfac_contenders(net, 1e-5, block, batches[0], not no_kfac_jax)
            state, failed = {}, {}
            for name, (init, step) in contenders.items():
                try:
                    p = jax.tree.map(jnp.copy, params0)
                    s = init(p)
                    for t in range(block + 2):  # compile every branch (refresh, damping adaptation, plain)
                        p, s, loss = step(p, s, batches[t % 4], t)
                    jax.block_until_ready(p)
                    p = jax.tree.map(jnp.copy, params0)
                    state[name] = [p, init(p), 0, loss]
                except Exception as err:  # noqa: BLE001 - a comparator failing on this jax: report it
                    failed[name] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
                    print(f"  {name}: {failed[name]}", flush=True)
            times = {name: [] for name in state}
            names = list(state)
            for rep in range(reps):
                for name in names[rep % len(names):] + names[: rep % len(names)]:
                    _, step = contenders[name]
                    p, s, t, _ = state[name]
                    start = time.perf_counter()
                    for _ in range(block):
                        p, s, loss = step(p, s, batches[t % 4], t)
                        t += 1
                    jax.block_until_ready((p, loss))
                    times[name].append(1e3 * (time.perf_counter() - start) / block)
                    state[name] = [p, s, t, loss]
            rows = {name: {"median_ms": statistics.median(v), "blocks_ms": v, "last_loss": float(state[name][3])}
                    for name, v in times.items()}
            res = out[f"batch{bs}"] = {"rows": rows, "failed": failed}
            if "sgd" not in rows:
                continue
            for r in rows.values():
                r["x_sgd"] = r["median_ms"] / rows["sgd"]["median_ms"]
            for ours, ref in (("kfac-fixed", "kfac-jax-fixed"), ("kfac-adaptive", "kfac-jax-adaptive")):
                if ours in rows and ref in rows:
                    res[f"{ours}_vs_{ref}"] = rows[ours]["median_ms"] / rows[ref]["median_ms"]
            print(f"\nK-FAC autoencoder step, batch {bs} (float32; median of {reps} interleaved blocks of {block} "
                  "steps, one inverse refresh per block):")
            print(f"  {'contender':18s} {'ms/step':>9s} {'x SGD':>7s} {'last loss':>10s}")
            for name, r in rows.items():
                print(f"  {name:18s} {r['median_ms']:9.2f} {r['x_sgd']:7.2f} {r['last_loss']:10.2f}")
            for k, v in res.items():
                if "_vs_" in k:
                    print(f"  {k} = {v:.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="qgeom bench-gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--vqt", type=int, nargs="*", default=[8, 10, 12, 14], help="qubit counts for VQT")
    ap.add_argument("--bkm", type=int, nargs="*", default=[10, 12], help="qubit counts for the BKM metric")
    ap.add_argument("--batch", type=int, nargs="*", default=[1000, 4096], help="K-FAC batch sizes")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per quantum kernel (minimum kept)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved timed blocks per K-FAC contender")
    ap.add_argument("--block", type=int, default=20, help="steps per block = K-FAC inverse period")
    ap.add_argument("--no-kfac-jax", action="store_true", help="skip kfac-jax even if importable")
    ap.add_argument("--out", default="results/bench_gpu", help="folder for bench_gpu.json")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a self-check of this script)")
    ap.add_argument("--allow-cpu", action="store_true", help="run without a GPU (for --quick self-checks)")
    args = ap.parse_args(argv)
    if args.quick:
        args.vqt, args.bkm, args.batch, args.repeats, args.reps, args.block = [3, 4], [3], [8], 2, 2, 3
    for name in ("repeats", "reps", "block"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if any(n < 2 for n in args.vqt + args.bkm) or any(b < 1 for b in args.batch):
        raise ValueError("qubit counts must be >= 2 and batch sizes >= 1")
    if not gpu_devices() and not args.allow_cpu:
        raise SystemExit(f"qgeom bench-gpu: no GPU visible to JAX (devices: {jax.devices()}); install the CUDA "
                         "build with pip install -e \".[gpu]\" and run on a GPU machine "
                         "(--allow-cpu --quick runs a tiny self-check on the CPU)")

    jax_compat()
    import qgeom  # noqa: F401  (float64 for the quantum side)

    memory = device_memory_bytes()  # also the dense-simulation guard's limit (qgeom.quantum.limits)
    result = {"device": device_name(), "platform": jax.devices()[0].platform, "jax": jax.__version__,
              "device_memory_bytes": memory, "args": vars(args), "targets": TARGETS,
              "vqt": {}, "bkm": {}, "kfac": {}}
    print(f"device: {result['device']} ({result['platform']}), jax {jax.__version__}, "
          f"XLA memory limit {memory / 2**30 if memory else float('nan'):.1f} GiB", flush=True)
    os.makedirs(args.out, exist_ok=True)

    def save():  # after every section, so a run stopped part-way keeps what it measured
        result["wall_s"] = time.perf_counter() - start
        with open(os.path.join(args.out, "bench_gpu.json"), "w") as fh:
            json.dump(result, fh, indent=1, default=str)

    start = time.perf_counter()
    small, large = [n for n in args.vqt if n <= 12], [n for n in args.vqt if n > 12]
    bench_vqt(small, args.repeats, memory, result["vqt"])
    save()
    bench_bkm(args.bkm, args.repeats, result["bkm"])
    save()
    bench_kfac_steps(args.batch, args.reps, args.block, args.no_kfac_jax, result["kfac"],
                     (16, 8, 4, 8, 16) if args.quick else AUTOENCODER)
    save()
    bench_vqt(large, args.repeats, memory, result["vqt"])  # the largest sizes last
    checks = {}
    for n, key in ((12, "vqt_n12_ms"), (14, "vqt_n14_ms")):
        if "ours_ms" in result["vqt"].get(f"n{n}", {}):
            checks[key] = result["vqt"][f"n{n}"]["ours_ms"]
    fixed = result["kfac"].get("batch4096", {}).get("rows", {}).get("kfac-fixed", {})
    if "x_sgd" in fixed:
        checks["kfac_vs_sgd_b4096"] = fixed["x_sgd"]
    result["checks"] = {k: {"value": v, "target": TARGETS[k], "met": v < TARGETS[k]} for k, v in checks.items()}
    save()
    print(f"\ntargets ({result['device']}): " + ", ".join(
        f"{k}={c['value']:.3g} (< {c['target']:g}: {'met' if c['met'] else 'NOT met'})"
        for k, c in result["checks"].items()) + f"; benchmark wall time {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    main()
