"""Communication volume and forced-host-device timing of the data-parallel steps.

For the MNIST autoencoder 784-1000-500-250-30-250-500-1000-784 with the global batch split
over the devices: the bytes each device contributes per step to the collectives of the
compiled, SPMD-partitioned step (``classical.distributed.collective_bytes``) for SGD
(momentum), Adam and K-FAC (adaptive α, μ, λ; inverses every T steps, replicated or spread
over the devices), beside the count from the algorithm (float32: 4 bytes a number):

* SGD, Adam: the gradient (P) and the loss (1);
* K-FAC: also A = E[ā āᵀ] (of ā = (a, 1) only E[a aᵀ], E[a] vary: d_in² + d_in) and
  G = E[g gᵀ] (d_out²) per layer, the quadratic model's three batch means; every
  ``damping_interval`` steps the loss at θ + δ (1); with the refresh spread, every T steps
  the broadcast of the inverses (A + πλ)⁻¹, (G + λ/π)⁻¹ ((d_in + 1)² + d_out²).

and the step's wall and process-CPU seconds on 1 device and sharded over all of them. On
forced host devices (one CPU) the timing shows the partitioning's overhead, not a speed-up;
XLA's CPU collectives abort a program whose device threads wait more than 10 s for each other,
which a loaded machine reaches in the autoencoder's replicated inverse refresh (then time a
narrower net: ``--sizes``; ``--steps 0`` reads the bytes only, from the compiled program).

    XLA_FLAGS=--xla_force_host_platform_device_count=4 qgeom comm-volume --steps 0
    XLA_FLAGS=--xla_force_host_platform_device_count=4 qgeom comm-volume --sizes 784 200 100 30 100 200 784
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

AUTOENCODER = (784, 1000, 500, 250, 30, 250, 500, 1000, 784)


def analytic(layer_shapes: dict, method: str, inverse_period: int, damping_interval: int) -> dict:
    """Bytes per device: ``every_step``, ``damping`` (per damping step), ``refresh`` (per refresh)
    and ``per_step`` (the average over a period of both)."""
    P = sum(a * g for a, g in layer_shapes.values())
    out = {"every_step": 4 * (P + 1), "damping": 0, "refresh": 0}
    if method.startswith("kfac"):
        stats = sum((a - 1) ** 2 + (a - 1) + g**2 for a, g in layer_shapes.values())
        out.update(every_step=4 * (P + stats + 1 + 3), damping=4)
        if method == "kfac-spread":
            out["refresh"] = 4 * sum(a**2 + g**2 for a, g in layer_shapes.values())
    out["per_step"] = out["every_step"] + out["damping"] / damping_interval + out["refresh"] / inverse_period
    return out


def contenders(net, mesh, inverse_period: int, damping_interval: int) -> dict:
    """{name: (init(params) -> state, step(params, state, batch) -> (params, state, aux))}."""
    import optax

    from classical import distributed as dist
    from classical.kfac import KFAC

    out = {}
    for name, tx in (("sgd", optax.sgd(1e-2, momentum=0.9)), ("adam", optax.adam(1e-3))):
        def step(p, s, batch, tx=tx):
            loss, grads = jax.value_and_grad(lambda q: net.loss(q, *batch))(p)
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s, loss

        out[name] = (tx.init, step)
    shared = dict(damping=150.0, inverse_period=inverse_period, damping_interval=damping_interval,
                  ema_decay=0.95, min_damping=1e-5, max_damping=1000.0)
    for name, blocks in (("kfac", None), ("kfac-spread", dist.SpreadRefresh(net.layer_shapes, mesh))):
        opt = KFAC(net, blocks=blocks, **shared)
        out[name] = (opt.init, opt.step)
    return out


def _time(step, p, s, batch, steps: int) -> dict:
    p, s, _ = jax.block_until_ready(step(p, s, batch))  # compile and one step, untimed
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        p, s, _ = step(p, s, batch)
    jax.block_until_ready((p, s))
    return {"wall_ms": 1e3 * (time.perf_counter() - t0) / steps, "cpu_ms": 1e3 * (time.process_time() - c0) / steps}


def measure(batch: int = 256, steps: int = 3, inverse_period: int = 5, damping_interval: int = 5,
            sizes=AUTOENCODER) -> dict:
    """The rows of the table (module docstring); needs more than one device."""
    from classical import distributed as dist
    from classical.models import mlp
    from experiments.classical_methods import float32_mode

    n_dev = jax.device_count()
    if n_dev < 2:
        raise SystemExit("needs several devices: set XLA_FLAGS=--xla_force_host_platform_device_count=4 "
                         "(before Python starts) or run on several GPUs")
    mesh = dist.data_mesh()
    rows = {}
    with float32_mode():
        net = mlp(sizes, "tanh", "bernoulli")
        p0 = net.init(jax.random.PRNGKey(0))
        x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (batch, sizes[0])), jnp.float32)
        host = (x, x)
        for name, (init, step) in contenders(net, mesh, inverse_period, damping_interval).items():
            sharded = dist.shard_step(step, mesh)
            args = (dist.replicate(p0, mesh), dist.replicate(init(p0), mesh), dist.shard_batch(host, mesh))
            hlo = dist.collective_bytes(sharded.lower(*args).compile())
            rows[name] = {"hlo_every_step": hlo["every_step"], "hlo_conditional": hlo["conditional"],
                          "analytic": analytic(net.layer_shapes, name, inverse_period, damping_interval)}
            if steps:
                rows[name][f"{n_dev}_devices"] = _time(sharded, *args, steps)
            if steps and name != "kfac-spread":  # the spread refresh runs on the mesh by construction
                rows[name]["one_device"] = _time(jax.jit(step), p0, init(p0), host, steps)
            print(name, rows[name], flush=True)
    return {"devices": n_dev, "device_kind": jax.devices()[0].device_kind, "batch": batch, "steps_timed": steps,
            "inverse_period": inverse_period, "damping_interval": damping_interval, "sizes": list(sizes),
            "rows": rows}


def table(res: dict) -> str:
    d = res["devices"]
    head = (f"| method | HLO bytes/step (every step) | HLO bytes in conditionals | analytic every step / per step "
            f"| 1 device ms wall (cpu) | {d} devices ms wall (cpu) |")
    lines = [head, "|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        a = r["analytic"]
        one, many = (f"{r[k]['wall_ms']:.0f} ({r[k]['cpu_ms']:.0f})" if k in r else "—"
                     for k in ("one_device", f"{d}_devices"))
        cond = ", ".join(f"{v:,}" for v in r["hlo_conditional"].values()) or "—"
        lines.append(f"| {name} | {r['hlo_every_step']:,} | {cond} | {a['every_step']:,} / {a['per_step']:,.0f} "
                     f"| {one} | {many} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from experiments.harness.store import atomic_write_json, results_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256, help="global batch (the bytes do not depend on it)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per method and device count (0: bytes only)")
    p.add_argument("--sizes", type=int, nargs="+", default=list(AUTOENCODER), help="layer widths of the tanh net")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.steps < 0 or args.batch < 1 or len(args.sizes) < 2:
        raise SystemExit("need --steps >= 0, --batch >= 1 and at least two --sizes")
    res = measure(args.batch, args.steps, sizes=tuple(args.sizes))
    out = results_dir("comm_volume") if args.out is None else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "comm_volume.json", res)
    print(table(res))
    print(f"summary: {out}/comm_volume.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
