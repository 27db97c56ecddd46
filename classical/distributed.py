"""Data-parallel training over devices and processes with JAX's own sharding runtime.

A ``Mesh`` with one ``"data"`` axis; the global batch is split along its leading axis over the
mesh (``NamedSharding(mesh, P("data"))``), parameters and optimizer state are replicated
(``P()``). ``shard_step`` jits any ``step(params, state, batch, ...)`` — ``classical.kfac.KFAC``'s
fused step, a family member's, an optax baseline's — with those shardings, so XLA's GSPMD
partitioner inserts the all-reduces: the loss gradient, the factor statistics
A = E[ā āᵀ] and G = E[g gᵀ] (and any block's other batch statistics) and the quadratic model's
curvature-vector products are sums over the batch, reduced over the data axis. The same step
on 1 device and on 4 gives the same parameters up to the order of floating-point sums.

Inverse refreshes (KAISA, Pauloski et al. 2021, arXiv:2107.01739): with replicated statistics
every device would repeat every factorization. ``assign_refresh`` spreads the layers over the
devices by cost (largest first to the least-loaded device, the LPT rule); ``spread_refresh``
runs each layer's refresh on its owner only (``shard_map`` + ``lax.cond`` on the device index)
and broadcasts the result (``psum`` of the owner's value and zeros elsewhere), so the
factorization time divides by about the device count and the broadcast costs one all-reduce
of the inverses. ``SpreadRefresh`` puts this inside ``classical.kfac.KFAC`` through its
``blocks=`` argument; a block whose refresh leaves its statistics as they are (Kronecker)
broadcasts only its inverses.

``collective_bytes`` reads what a compiled step communicates (bytes per device per
all-reduce / all-gather / reduce-scatter / collective-permute, and per ``lax.cond`` branch)
from its HLO; the tests hold it to the count from the algorithm.

Several processes (one per host or per GPU): call :func:`initialize` first — it reads
``QGEOM_COORDINATOR`` (host:port of process 0), ``QGEOM_NUM_PROCESSES`` and
``QGEOM_PROCESS_ID``, or SLURM's variables through ``jax.distributed.initialize``'s own
cluster detection — then build the mesh over ``jax.devices()`` (all processes' devices).
Every process runs the same program on the same global batch array (``shard_batch`` lets each
one supply its own shards). A SLURM job of 2 nodes × 4 GPUs::

    #!/bin/bash
    #SBATCH --nodes=2 --ntasks-per-node=4 --gpus-per-task=1
    srun python train.py        # train.py: classical.distributed.initialize(); mesh = data_mesh()

and by hand on two hosts::

    QGEOM_COORDINATOR=host0:12355 QGEOM_NUM_PROCESSES=2 QGEOM_PROCESS_ID=0 python train.py   # on host0
    QGEOM_COORDINATOR=host0:12355 QGEOM_NUM_PROCESSES=2 QGEOM_PROCESS_ID=1 python train.py   # on host1

On CPUs (tests), ``initialize(cpu_collectives="gloo")`` selects JAX's gloo collectives and
``XLA_FLAGS=--xla_force_host_platform_device_count=k`` gives each process k devices.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-D ``Mesh`` named ``"data"`` over ``devices`` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device")
    return Mesh(np.asarray(devices), (DATA,))


def _check_mesh(mesh) -> int:
    if not isinstance(mesh, Mesh):
        raise ValueError(f"expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    if DATA not in mesh.axis_names:
        raise ValueError(f"the mesh has no {DATA!r} axis (axes: {mesh.axis_names}); build it with "
                         "classical.distributed.data_mesh() or name one axis 'data'")
    return int(mesh.shape[DATA])


def batch_sharding(mesh) -> NamedSharding:
    """Leading (example) axis split over the ``data`` axis, the rest whole."""
    _check_mesh(mesh)
    return NamedSharding(mesh, P(DATA))


def replicated(mesh) -> NamedSharding:
    """Every device holds the whole array."""
    _check_mesh(mesh)
    return NamedSharding(mesh, P())


def check_batch(batch, mesh) -> None:
    """``ValueError`` unless every leaf of ``batch`` has one common leading size divisible by the
    number of devices on the ``data`` axis."""
    n_dev = _check_mesh(mesh)
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(batch)}
    if None in sizes or len(sizes) != 1:
        raise ValueError(f"every batch array needs the same leading (example) axis, got sizes {sizes}")
    (size,) = sizes
    if size % n_dev:
        raise ValueError(f"global batch size {size} is not divisible by the {n_dev} devices of the mesh's "
                         f"{DATA!r} axis; use a multiple of {n_dev}")


def _put(tree, sharding):
    """Global arrays from values that every process holds in full (works across processes)."""
    def one(x):
        if isinstance(x, jax.Array) and jax.process_count() == 1:
            return jax.device_put(x, sharding)  # also typed PRNG keys, without a host round trip
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(one, tree)


def shard_batch(batch, mesh):
    """The global batch (the same host arrays in every process) as arrays split over ``data``."""
    check_batch(batch, mesh)
    return _put(batch, batch_sharding(mesh))


def replicate(tree, mesh):
    """A pytree of host or device arrays replicated on every device of ``mesh``."""
    return _put(tree, replicated(mesh))


def shard_step(step: Callable, mesh, *, batch_argnum: int = 2, donate_argnums: Sequence[int] = ()):
    """``jax.jit(step)`` with argument ``batch_argnum`` split over ``data`` and everything else
    (inputs and outputs) replicated; GSPMD inserts the cross-device reductions.

    ``step`` is any function of (params, state, batch, ...) returning replicated pytrees, e.g.
    ``KFAC(model, ...).step`` or an optax step. The batch is checked (same leading size,
    divisible by the device count) before anything is compiled. ``shard_step(...).lower(*args)``
    is the jitted step's lowering (for ``collective_bytes``).
    """
    n_dev = _check_mesh(mesh)
    rep, split = replicated(mesh), batch_sharding(mesh)

    def shardings(n_args):
        return tuple(split if i == batch_argnum else rep for i in range(n_args))

    cache = {}

    def jitted(args):
        if not 0 <= batch_argnum < len(args):
            raise ValueError(f"batch_argnum {batch_argnum} out of range for {len(args)} arguments")
        check_batch(args[batch_argnum], mesh)
        if len(args) not in cache:
            cache[len(args)] = jax.jit(step, in_shardings=shardings(len(args)), out_shardings=rep,
                                       donate_argnums=tuple(donate_argnums))
        return cache[len(args)]

    def wrapped(*args):
        return jitted(args)(*args)

    wrapped.n_devices = n_dev
    wrapped.lower = lambda *args: jitted(args).lower(*args)  # e.g. collective_bytes(step.lower(...).compile())
    return wrapped


def assign_refresh(layer_costs: Sequence[float], n_devices: int) -> tuple[int, ...]:
    """Owner device of each layer's refresh: layers by decreasing cost, each to the device with
    the least total cost so far (ties: lower layer index first, then lower device index) — the
    LPT rule, within 4/3 of the best makespan. Every layer gets exactly one owner."""
    if int(n_devices) != n_devices or n_devices < 1:
        raise ValueError(f"n_devices must be a positive integer, got {n_devices!r}")
    costs = [float(c) for c in layer_costs]
    if any(not np.isfinite(c) or c < 0 for c in costs):
        raise ValueError(f"layer costs must be finite and >= 0, got {costs}")
    load, owner = [0.0] * int(n_devices), [0] * len(costs)
    for layer in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        dev = min(range(len(load)), key=lambda d: (load[d], d))
        owner[layer] = dev
        load[dev] += costs[layer]
    return tuple(owner)


def kronecker_refresh_costs(layer_shapes: dict) -> dict:
    """Refresh cost of each Kronecker block: d_A³ + d_G³ (factorizing A and G), from
    ``{layer: (d_in + 1, d_out)}`` (``classical.models.Network.layer_shapes``)."""
    return {name: float(a) ** 3 + float(g) ** 3 for name, (a, g) in layer_shapes.items()}


def spread_refresh(refresh: dict, inputs: dict, mesh, owners: dict | None = None, costs: dict | None = None):
    """``{layer: refresh[layer](inputs[layer])}``, each computed on its owner device only and
    broadcast to all devices (``psum`` of the owner's result and zeros elsewhere).

    ``refresh``: ``{layer: f}`` with ``f`` mapping a replicated pytree to a pytree of arrays;
    ``owners``: ``{layer: device index on the data axis}`` (default ``assign_refresh`` of ``costs``,
    or of equal costs). Call it inside ``jax.jit`` (e.g. a ``shard_step`` step) or alone.
    """
    n_dev = _check_mesh(mesh)
    names = list(refresh)
    if set(inputs) != set(names):
        raise ValueError(f"refresh and inputs name different layers: {sorted(refresh)} vs {sorted(inputs)}")
    if owners is None:
        order = assign_refresh([(costs or {}).get(k, 1.0) for k in names], n_dev)
        owners = dict(zip(names, order))
    if set(owners) != set(names) or any(not 0 <= owners[k] < n_dev for k in names):
        raise ValueError(f"owners must give every layer one device in [0, {n_dev}), got {owners}")

    def body(xs):
        me = jax.lax.axis_index(DATA)
        out = {}
        for k in names:
            shapes = jax.eval_shape(refresh[k], xs[k])
            zeros = jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), shapes)
            mine = jax.lax.cond(me == owners[k], refresh[k], lambda _, z=zeros: z, xs[k])
            out[k] = jax.lax.psum(mine, DATA)
        return out

    return jax.shard_map(body, mesh=mesh, in_specs=P(), out_specs=P(), check_vma=False)(inputs)


class SpreadRefresh:
    """A layer-wise curvature whose refresh runs each layer on its owner device only (KAISA).

    Pass it as ``KFAC(model, blocks=SpreadRefresh(model.layer_shapes, mesh, factory))``: the
    engine uses it as a curvature over all layers. Statistics updates, ``apply_inverse`` and
    ``metric`` are the inner ``classical.blocks.Layerwise``'s; ``refresh`` goes through
    :func:`spread_refresh` with owners from :func:`assign_refresh` of ``costs`` (default
    :func:`kronecker_refresh_costs`: d_A³ + d_G³). ``factory(shape) -> block`` as for ``blocks=``
    (default ``KroneckerBlock(shape, inverse=inverse)``).
    """

    def __init__(self, layer_shapes: dict, mesh, factory=None, *, inverse="tikhonov", costs: dict | None = None):
        from classical.blocks.base import Layerwise
        from classical.blocks.kronecker import KroneckerBlock

        n_dev = _check_mesh(mesh)
        factory = factory or (lambda shape: KroneckerBlock(shape, inverse=inverse))
        self.inner = Layerwise.build(layer_shapes, factory)
        self.mesh = mesh
        costs = costs or kronecker_refresh_costs(layer_shapes)
        names = list(self.inner.blocks)
        self.owners = dict(zip(names, assign_refresh([costs[k] for k in names], n_dev)))

    def refresh(self, stats, damping):
        # a block whose refresh passes its statistics through (Kronecker: the same object at trace
        # time) broadcasts its inverses only; the local call is traced, unused, and dropped by XLA
        same = {k: b.refresh(stats[k], damping)[0] is stats[k] for k, b in self.inner.blocks.items()}
        fns = {k: (lambda st, b=b, i=same[k]: b.refresh(st, damping)[1] if i else b.refresh(st, damping))
               for k, b in self.inner.blocks.items()}
        out = spread_refresh(fns, stats, self.mesh, self.owners)
        return ({k: stats[k] if same[k] else o[0] for k, o in out.items()},
                {k: o if same[k] else o[1] for k, o in out.items()})

    def __getattr__(self, name):  # init, update, apply_inverse, metric, needs_preact_grads
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


_COLLECTIVE = re.compile(r"(all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)(-start)?$")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?\S+\s*=\s*(\(.*?\)|\S+)\s+([\w-]+)\((.*)$")
_CALLEES = re.compile(r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)"
                      r"|branch_computations=\{([^}]*)\}")


def _array_bytes(types: str) -> list[int]:
    return [_DTYPE_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d) for t, dims in _ARRAY.findall(types)]


def _group_size(attrs: str, n_partitions: int) -> int:
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", attrs)
    if iota:
        return int(iota.group(2))
    listed = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
    return len(listed.group(1).split(",")) if listed else n_partitions


def collective_bytes(compiled) -> dict:
    """Bytes each device contributes to the collectives of a compiled (SPMD-partitioned) program,
    read from its HLO (``jax.jit(f).lower(...).compile()`` or its ``as_text()``).

    Payload per device: all-reduce and all-to-all and collective-permute move their operand,
    all-gather its operand (result / group), reduce-scatter its operand (result × group); an
    async ``-start`` counts once. Returns ``{"every_step": bytes outside any conditional,
    "conditional": {location of the ``lax.cond``: bytes of its costliest branch}, "ops": [{"op",
    "bytes", "shapes", "where", "source"}]}``; a collective inside a while loop counts once
    (``where`` says "loop")."""
    text = compiled if isinstance(compiled, str) else compiled.as_text()
    parts = re.search(r"num_partitions=(\d+)", text)
    n_partitions = int(parts.group(1)) if parts else 1
    comps, entry, current = {}, None, None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            head = line.split()
            current = (head[1] if head[0] == "ENTRY" else head[0]).lstrip("%")
            comps[current] = []
            entry = current if head[0] == "ENTRY" else entry
        elif current is not None and (m := _INSTRUCTION.match(line)):
            source = re.search(r'source_file="([^"]*)" source_line=(\d+)', line)
            where = f"{os.path.basename(source.group(1))}:{source.group(2)}" if source else "?"
            callees = [c.strip().lstrip("%") for a, b in _CALLEES.findall(line) for c in ([a] if a else b.split(","))]
            comps[current].append((m.group(1), m.group(2), m.group(3), where, callees))
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    ops = []

    def visit(name, where, seen):
        for types, opcode, attrs, source, callees in comps.get(name, ()):
            kind = _COLLECTIVE.match(opcode)
            if kind:
                sizes, group = _array_bytes(types), _group_size(attrs, n_partitions)
                if kind.group(2) and kind.group(1) != "all-reduce":  # (operand, result, ...) of an async start
                    size = sizes[0]
                else:
                    size = {"all-gather": sum(sizes) // group, "reduce-scatter": sum(sizes) * group}.get(
                        kind.group(1), sum(sizes))
                ops.append({"op": kind.group(1), "bytes": size, "shapes": types, "where": where, "source": source})
            for i, callee in enumerate(c for c in callees if c not in seen):
                step = (f"{source} branch {i}",) if opcode == "conditional" else ("loop",) if opcode == "while" else ()
                visit(callee, where + step, seen | {callee})

    visit(entry, (), frozenset({entry}))
    branches = {}
    for op in ops:
        if op["where"]:
            cond = " > ".join(w.rsplit(" branch ", 1)[0] for w in op["where"])
            branches.setdefault(cond, {}).setdefault(op["where"], 0)
            branches[cond][op["where"]] += op["bytes"]
    return {"every_step": sum(op["bytes"] for op in ops if not op["where"]),
            "conditional": {k: max(v.values()) for k, v in branches.items()}, "ops": ops}


def initialize(coordinator_address=None, num_processes=None, process_id=None, *, cpu_collectives=None) -> None:
    """``jax.distributed.initialize`` from arguments or ``QGEOM_COORDINATOR`` /
    ``QGEOM_NUM_PROCESSES`` / ``QGEOM_PROCESS_ID``; with none of them set, JAX's own cluster
    detection (SLURM, Open MPI, Kubernetes, Cloud TPU). ``cpu_collectives="gloo"`` enables
    cross-process collectives between CPU devices. Call before any other JAX computation."""
    env = os.environ
    coordinator_address = coordinator_address or env.get("QGEOM_COORDINATOR")
    num_processes = num_processes if num_processes is not None else env.get("QGEOM_NUM_PROCESSES")
    process_id = process_id if process_id is not None else env.get("QGEOM_PROCESS_ID")
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError("set all of coordinator address, number of processes and process id "
                         "(QGEOM_COORDINATOR, QGEOM_NUM_PROCESSES, QGEOM_PROCESS_ID) or none")
    if all(given):
        num_processes, process_id = int(num_processes), int(process_id)
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"process id {process_id} must lie in [0, {num_processes})")
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
