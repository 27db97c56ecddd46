"""Parallel sweeps: a grid of independent runs (seeds × β × step sizes) in one vmapped program,
its run axis split over the devices.

``sweep(run, configs)`` evaluates ``run(config)`` for every row of ``configs`` (a dict of equal-
length 1-D arrays, e.g. from ``grid``) as ``jax.jit(jax.vmap(run))`` with the run axis sharded
over a ``Mesh(devices, ("data",))`` (``NamedSharding(mesh, P("data"))``): with D devices each
holds about 1/D of the runs, with no communication between them. The run count is padded to a
multiple of D by repeating the last row (the padding is dropped from the results). Every run
computes what it would compute alone (``run`` is the same function; only the batching differs),
so the numbers equal the serial loop's to floating-point rounding.

``vqt_optax_run(model, H, optimizer, steps)`` is such a ``run`` for Gibbs-state preparation
(VQT, L = β Tr(ρH) − S(ρ)) with an optax optimizer: config ``{"seed", "beta", "learning_rate"}``
→ parameters ``model.init(PRNGKey(seed))``, ``steps`` steps of
``optax.inject_hyperparams(optimizer)(learning_rate)`` under ``lax.scan``, returning the loss at
every step's input and the final parameters.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def grid(**axes) -> dict:
    """Cartesian product of the given value lists as equal-length 1-D arrays (first axis slowest,
    as ``itertools.product``): ``grid(seed=[0, 1], beta=[0.5, 1.0])`` has 4 rows."""
    if not axes or any(len(v) == 0 for v in axes.values()):
        raise ValueError(f"grid needs at least one non-empty axis, got {axes}")
    rows = list(itertools.product(*axes.values()))
    return {k: np.asarray([r[i] for r in rows]) for i, k in enumerate(axes)}


def _check_configs(configs) -> int:
    if not isinstance(configs, dict) or not configs:
        raise ValueError("configs must be a non-empty dict of 1-D arrays (see qgeom.optimize.sweep.grid)")
    sizes = {k: np.shape(v) for k, v in configs.items()}
    lengths = {s[0] if len(s) == 1 else None for s in sizes.values()}
    if None in lengths or len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"configs must be 1-D arrays of one common non-zero length, got shapes {sizes}")
    for k, v in configs.items():
        if np.issubdtype(np.asarray(v).dtype, np.number) and not np.all(np.isfinite(v)):
            raise ValueError(f"configs[{k!r}] holds non-finite values: {v}")
    return lengths.pop()


_EXECUTABLES: dict = {}


def sweep(run: Callable, configs: dict, devices=None, shared=None) -> dict:
    """``{name: array with a leading run axis}``: ``run(row)`` (or ``run(row, shared)``) for every
    row of ``configs``, vmapped and split over ``devices`` (default: all of ``jax.devices()``).
    ``run`` must be pure and jit-able and return a pytree of arrays; ``shared`` (a pytree of
    arrays, e.g. a target state) is replicated on every device, so runs of one shape share one
    compile whatever its value. Results come back as numpy arrays; a run whose result holds
    NaN/Inf is listed in ``result["nonfinite_runs"]`` (indices into the rows);
    ``result["timing"]`` has ``compile_s`` (0 when reused) and the execution's ``wall_s`` /
    ``cpu_s`` (process CPU seconds, all devices of this process together)."""
    n = _check_configs(configs)
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("sweep needs at least one device")
    d = len(devices)
    padded = -(-n // d) * d
    stacked = {k: jnp.asarray(np.concatenate([np.asarray(v), np.repeat(np.asarray(v)[-1:], padded - n)]))
               for k, v in configs.items()}
    mesh = Mesh(np.asarray(devices), ("data",))
    split, whole = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    args = (jax.device_put(stacked, split),) + (() if shared is None else (jax.device_put(shared, whole),))
    key = (run, tuple(devices), jax.tree.structure(args),
           tuple((a.shape, a.dtype) for a in jax.tree.leaves(args)))
    t0 = time.perf_counter()
    if key not in _EXECUTABLES:
        batched = jax.vmap(run, in_axes=(0,) + (None,) * (len(args) - 1))
        _EXECUTABLES[key] = jax.jit(batched, in_shardings=(split, whole)[:len(args)],
                                    out_shardings=split).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(_EXECUTABLES[key](*args))
    timing = {"compile_s": compile_s, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
              "devices": d, "runs": n, "padded_runs": padded}
    out = jax.tree.map(lambda a: np.asarray(a)[:n], out)
    bad = np.zeros(n, bool)
    for leaf in jax.tree.leaves(out):
        bad |= ~np.isfinite(leaf.reshape(n, -1)).all(axis=1)
    if not isinstance(out, dict):
        out = {"result": out}
    return {**out, "nonfinite_runs": np.flatnonzero(bad), "timing": timing}


def vqt_optax_run(model, H, optimizer: Callable, steps: int) -> Callable:
    """``run(config) -> {"loss": (steps,), "params": final}`` for ``sweep``: VQT of ``H`` from
    ``model.init(PRNGKey(seed))`` with ``optimizer(learning_rate=...)`` (an optax factory such as
    ``optax.adam`` or ``optax.sgd``); config ``{"seed", "beta", "learning_rate"}``. The loss is
    ``qgeom.quantum.vqt_loss``'s β Tr(ρH) − S(ρ) with β taken from the config."""
    from qgeom.quantum import vqt_loss

    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps}")
    vqt_loss(model, H, 1.0)  # validates H and the memory a gradient needs
    obs = model.prepare(H)
    tx = optax.inject_hyperparams(optimizer)

    def loss(params, beta):
        return beta * model.expectation(params, obs) - model.entropy(params)

    def run(config):
        params = model.init(jax.random.PRNGKey(config["seed"]))
        opt = tx(learning_rate=config["learning_rate"])

        def step(carry, _):
            p, s = carry
            value, grads = jax.value_and_grad(loss)(p, config["beta"])
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), value

        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=int(steps))
        return {"loss": losses, "params": params}

    return run
