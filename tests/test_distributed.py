"""Data-parallel training (classical.distributed) and the GPU benchmark's CPU-side behaviour.

Multi-device checks run in subprocesses with ``XLA_FLAGS=--xla_force_host_platform_device_count``
(the device count is fixed when JAX starts). Tolerance of sharded-vs-single-device parameters:
the only difference is the order of the batch sums (4 partial sums all-reduced instead of one),
a relative error ≤ N·ε₃₂ per gradient or statistic (N = 32 examples). K-FAC runs with the exact
damped inverse (``inverse="eigen"``, (A⊗G + λI)⁻¹, λ = 1) and EKFAC with (S + λ)⁻¹ in the
eigenbasis; inputs in [−1, 1] and tanh layers give |ā|² ≤ d_in + 1 ≤ 17 and categorical outputs
|g|² ≤ 2, so λ_max(A)λ_max(G) ≤ 34 and S ≤ |ā|²|g|² ≤ 34: the preconditioner's condition number
is κ ≤ 1 + 34/λ = 35. Over S = 4 steps: S·N·κ·ε₃₂ ≈ 5e-4 relative to the parameters' scale.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from classical import distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS32, N, STEPS = float(np.finfo(np.float32).eps), 32, 4
RTOL = STEPS * N * 35 * EPS32

PROBLEM = textwrap.dedent("""
    import functools, json, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from classical import distributed as dist
    from classical.blocks.ekfac import EKFACBlock
    from classical.kfac import KFAC
    from classical.models import mlp

    net = mlp((6, 16, 8, 3), "tanh", "categorical")
    p0 = net.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(32, 6)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    settings = dict(learning_rate=0.1, momentum=0.5, damping=1.0, inverse_period=2, adapt_damping=False)
    optimizers = {"kfac": KFAC(net, inverse="eigen", **settings),
                  "ekfac": KFAC(net, blocks=functools.partial(EKFACBlock, s_decay=None), **settings)}
    adam = optax.adam(1e-2)

    def adam_step(p, s, batch):
        loss, g = jax.value_and_grad(lambda q: net.loss(q, *batch))(p)
        u, s = adam.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    def train(step, p, s, put=lambda t: t, steps=4):
        for _ in range(steps):
            p, s, _ = step(p, s, put((x, y)))
        return {k: np.asarray(v.addressable_data(0)).tolist() for k, v in p.items()}
""")

FOUR_DEVICES = PROBLEM + textwrap.dedent("""
    assert len(jax.devices()) == 4, jax.devices()
    mesh = dist.data_mesh()
    out = {}
    for name, opt in optimizers.items():
        out[name] = {"single": train(opt.step, p0, opt.init(p0)),
                     "sharded": train(dist.shard_step(opt.step, mesh), dist.replicate(p0, mesh),
                                      dist.replicate(opt.init(p0), mesh), lambda b: dist.shard_batch(b, mesh))}
    spread = KFAC(net, inverse="eigen", blocks=dist.SpreadRefresh(net.layer_shapes, mesh, inverse="eigen"),
                  **settings)
    out["kfac-spread"] = {"single": out["kfac"]["single"],
                          "sharded": train(dist.shard_step(spread.step, mesh), dist.replicate(p0, mesh),
                                           dist.replicate(spread.init(p0), mesh), lambda b: dist.shard_batch(b, mesh))}
    out["adam"] = {"single": train(jax.jit(adam_step), p0, adam.init(p0)),
                   "sharded": train(dist.shard_step(adam_step, mesh), dist.replicate(p0, mesh),
                                    dist.replicate(adam.init(p0), mesh), lambda b: dist.shard_batch(b, mesh))}
    # inverse refreshes spread over the devices, broadcast back: equal to computing them here
    A = {f"l{i}": jnp.asarray(rng.normal(size=(3 + i, 3 + i)), jnp.float32) for i in range(5)}
    A = {k: a @ a.T + jnp.eye(a.shape[0]) for k, a in A.items()}
    fns = {k: jnp.linalg.cholesky for k in A}
    owners = dist.assign_refresh([a.shape[0] ** 3 for a in A.values()], 4)
    spread = jax.jit(lambda a: dist.spread_refresh(fns, a, mesh, dict(zip(A, owners))))(A)
    out["spread_maxdiff"] = max(float(jnp.max(jnp.abs(spread[k] - jnp.linalg.cholesky(A[k])))) for k in A)
    out["owners"] = list(owners)
    # a VQT sweep (seed × β × step size) vmapped over 4 devices against a serial optax loop
    import networkx as nx
    import qgeom
    from qgeom.optimize.sweep import grid, sweep, vqt_optax_run
    from qgeom.quantum import QHBM, Bernoulli, hardware_efficient, tfim, vqt_loss
    model, H = QHBM(Bernoulli(3), hardware_efficient(3, 1)), tfim(nx.cycle_graph(3), J=1.0, h=0.8)
    cfg = {k: v[[0, 3, 6]] for k, v in grid(seed=[0, 1], beta=[0.5, 2.0], learning_rate=[0.05, 0.2]).items()}
    res = sweep(vqt_optax_run(model, H, optax.sgd, 10), cfg)
    serial, grads = [], {}
    for seed, beta, lr in zip(cfg["seed"], cfg["beta"], cfg["learning_rate"]):
        vg = grads.setdefault(beta, jax.jit(jax.value_and_grad(vqt_loss(model, H, float(beta)))))
        tx = optax.sgd(float(lr))
        p = model.init(jax.random.PRNGKey(int(seed)))
        s, losses = tx.init(p), []
        for _ in range(10):
            value, g = vg(p)
            u, s = tx.update(g, s, p)
            p, losses = optax.apply_updates(p, u), losses + [float(value)]
        serial.append(losses)
    out["sweep"] = {"parallel": res["loss"].tolist(), "serial": serial, "bad": res["nonfinite_runs"].tolist(),
                    "params": int(sum(np.size(v) for v in jax.tree.leaves(p)))}
    # communication per step, read from the compiled programs (bytes each device contributes)
    args = (dist.replicate(p0, mesh), None, dist.shard_batch((x, y), mesh))
    adaptive = KFAC(net, damping=1.0, inverse_period=2)
    spread_kfac = KFAC(net, inverse="eigen", blocks=dist.SpreadRefresh(net.layer_shapes, mesh, inverse="eigen"),
                       **settings)
    steps = {"kfac": optimizers["kfac"], "kfac-adaptive": adaptive, "kfac-spread": spread_kfac}
    out["comm"] = {name: dist.collective_bytes(dist.shard_step(o.step, mesh).lower(
        args[0], dist.replicate(o.init(p0), mesh), args[2]).compile()) for name, o in steps.items()}
    out["comm"]["adam"] = dist.collective_bytes(dist.shard_step(adam_step, mesh).lower(
        args[0], dist.replicate(adam.init(p0), mesh), args[2]).compile())
    out["comm"] = {k: {"every_step": v["every_step"], "conditional": sorted(v["conditional"].values()),
                       "ops": sorted({o["op"] for o in v["ops"]})} for k, v in out["comm"].items()}
    out["layer_shapes"] = net.layer_shapes
    try:
        dist.shard_step(optimizers["kfac"].step, mesh)(p0, optimizers["kfac"].init(p0), (x[:30], y[:30]))
        out["bad_batch"] = "accepted"
    except ValueError as err:
        out["bad_batch"] = str(err)
    print(json.dumps(out))
""")


GIBBS_FOUR_DEVICES = textwrap.dedent("""
    import json
    import jax, numpy as np
    import qgeom  # float64
    assert len(jax.devices()) == 4, jax.devices()
    # the Gibbs study (search + long runs) serially and batched over the 4 devices, the batched one
    # killed after 2 cells and resumed
    import tempfile
    from experiments import gibbs
    from experiments.harness import Checkpoint
    cfg = dict(gibbs.DEFAULT, n=[3], seeds=[0, 1], steps=8, search_steps=8, methods=["qpngd"], ansatz="cx1")
    study = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("off", "auto"):
            try:
                gibbs.run_study(dict(cfg, parallel=mode), f"{tmp}/{mode}", progress=False, stop_after=2)
            except KeyboardInterrupt:
                pass
            summary = gibbs.run_study(dict(cfg, parallel=mode), f"{tmp}/{mode}", progress=False)
            cells = Checkpoint(f"{tmp}/{mode}/checkpoint.pkl").load()["cells"].values()
            prob = summary["problems"][0]
            study[mode] = {"parallel": summary["parallel"], "D_star": prob["D_star"], "search": prob["search"],
                           "methods": {m: {k: v[k] for k in ("final_D", "floor_D", "final_fidelity", "status")}
                                       for m, v in prob["methods"].items()},
                           "traces": {f"{c['method']} {c['lr']:g} {c['seed']}": np.nan_to_num(c["D"], nan=-1).tolist()
                                      for c in cells}}
    print(json.dumps(study))
""")


def _run(script, devices, env=None, timeout=600):
    full = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", script], env=full, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True), timeout


def _result(proc_timeout):
    proc, timeout = proc_timeout
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def _assert_close(got, ref):
    scale = max(1.0, max(np.max(np.abs(np.asarray(v))) for v in ref.values()))
    for k in ref:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(ref[k]), rtol=0, atol=RTOL * scale, err_msg=k)


@pytest.fixture(scope="session")
def four_devices(tmp_path_factory, worker_id):
    """The 4-device script's results, computed once per test session: under pytest-xdist the
    first worker runs it and writes them beside the workers' temp dirs, the others wait on a
    lock and read them (a module fixture ran the ≈ 36 s script once per worker, and again
    whenever a worker interleaved another module)."""
    if worker_id == "master":
        return _result(_run(FOUR_DEVICES, 4))
    shared = tmp_path_factory.getbasetemp().parent
    path = shared / "four_devices.json"
    with open(shared / "four_devices.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            path.write_text(json.dumps(_result(_run(FOUR_DEVICES, 4))))
    return json.loads(path.read_text())


@pytest.mark.parametrize("method", ["kfac", "kfac-spread", "ekfac", "adam"])
def test_sharded_step_on_4_devices_equals_single_device(four_devices, method):
    res = four_devices[method]
    moved = max(np.max(np.abs(np.asarray(res["single"][k]))) for k in res["single"])
    assert moved > 0 and np.all(np.isfinite(moved))
    _assert_close(res["sharded"], res["single"])


def test_spread_refresh_on_4_devices_equals_local_factorizations(four_devices):
    # the owner's result plus exact zeros from the others: bitwise the local factorization
    assert four_devices["spread_maxdiff"] == 0.0
    assert sorted(set(four_devices["owners"])) == [0, 1, 2, 3]


def test_sharded_step_refuses_indivisible_batch_on_devices(four_devices):
    assert "30 is not divisible by the 4 devices" in four_devices["bad_batch"]


def test_parallel_sweep_on_4_devices_equals_serial_loop(four_devices):
    """Tolerance: each loss is a sum over 2ⁿ = 8 states and its gradient over P parameters,
    rounded to (2ⁿ + P)·ε₆₄ relative; gradient descent can grow a perturbation by at most
    (1 + η‖∇²L‖) per step, ≤ 3 here (η ≤ 0.2, ‖∇²L‖ ≤ 2β‖H‖ + ‖∇²S‖ ≲ 10), so over T = 10 steps
    by 3¹⁰ ≈ 6e4."""
    res = four_devices["sweep"]
    par, ser = np.asarray(res["parallel"]), np.asarray(res["serial"])
    assert par.shape == ser.shape == (3, 10) and res["bad"] == []
    tol = (8 + res["params"]) * np.finfo(np.float64).eps * 3.0**10 * np.abs(ser).max()
    np.testing.assert_allclose(par, ser, rtol=0, atol=tol)
    assert np.all(ser[:, -1] < ser[:, 0])  # the runs did train


@pytest.mark.slow
def test_gibbs_study_batched_on_4_devices_equals_serial_study():
    """``qgeom gibbs`` (n = 3, QPNGD, search + long runs, a kill and resume) batched over 4
    devices equals the serial study. Tolerance as for the sweep: (2ⁿ + P)·ε₆₄ per loss and
    gradient (P = 12), grown by at most 1 + η‖(G + μ)⁻¹‖‖∇²L‖ ≤ 11 per step (η ≤ 1; the
    damped BKM metric G + μ ⪰ I after QPNGD's shift; ‖∇²L‖ ≲ 10 as for the sweep) over T = 8
    steps, relative to max |D|."""
    study = _result(_run(GIBBS_FOUR_DEVICES, 4))
    ser, par = study["off"], study["auto"]
    assert ser["parallel"]["used"] is False and par["parallel"]["used"] is True and par["parallel"]["devices"] == 4
    # per method: 3 search runs (seed 0) and the winner's seeds 0 (the same cell as its search run) and 1
    assert ser["traces"].keys() == par["traces"].keys() and len(ser["traces"]) == 3 + 1
    scale = max(np.abs(np.asarray(t)).max() for t in ser["traces"].values())
    tol = (8 + 12) * np.finfo(np.float64).eps * 11.0**8 * scale
    for key, trace in ser["traces"].items():
        np.testing.assert_allclose(par["traces"][key], trace, rtol=0, atol=tol, err_msg=key)
        assert -1 not in trace  # no run stopped early
    assert abs(par["D_star"] - ser["D_star"]) <= tol
    for m, s in ser["search"].items():
        assert par["search"][m]["winner"] == s["winner"]
        np.testing.assert_allclose(par["search"][m]["scores"], s["scores"], rtol=0, atol=tol)
        for k in ("final_D", "floor_D", "final_fidelity"):
            assert abs(par["methods"][m][k] - ser["methods"][m][k]) <= tol, (m, k)
        assert par["methods"][m]["status"] == ser["methods"][m]["status"] == ["ok", "ok"]
        assert ser["methods"][m]["final_D"] < ser["traces"][f"{m} {s['winner']:g} 0"][0]  # the winners trained


def test_sharded_step_collective_bytes_on_4_devices_equal_analytical_count(four_devices):
    """Bytes per device per step in the compiled HLO's all-reduces against the count from the
    algorithm, float32 (4 bytes) throughout. Every layer (W: d_out × d_in, bias d_out) all-reduces
    its gradient (P floats in all); K-FAC adds A = E[ā āᵀ] — of ā = (a, 1) only E[a aᵀ] and E[a]
    vary (d_in² + d_in) — and G = E[g gᵀ] (d_out²); one scalar is the loss; the adaptive α, μ add
    the quadratic model's three batch means (Δᵀ F Δ, Δᵀ F δ₀, δ₀ᵀ F δ₀) and its damping step the
    loss at θ + δ (in the ``lax.cond`` of the damping interval). The spread refresh broadcasts
    what the eigen refresh caches — the eigenbases Q_A, Q_G and the Kronecker eigenvalues
    S = λ_A λ_Gᵀ (d_A² + d_G² + d_A·d_G; the statistics stay replicated) — in the refresh
    ``lax.cond`` (every T steps); the replicated refresh moves nothing."""
    shapes = [(a - 1, g) for a, g in four_devices["layer_shapes"].values()]
    P = sum((d_in + 1) * d_out for d_in, d_out in shapes)
    stats = sum(d_in**2 + d_in + d_out**2 for d_in, d_out in shapes)
    eig = sum((d_in + 1) ** 2 + d_out**2 + (d_in + 1) * d_out for d_in, d_out in shapes)
    comm = four_devices["comm"]
    assert {k: v["ops"] for k, v in comm.items()} == {k: ["all-reduce"] for k in comm}
    assert comm["adam"] == {"every_step": 4 * (P + 1), "conditional": [], "ops": ["all-reduce"]}
    assert comm["kfac"] == {"every_step": 4 * (P + stats + 1), "conditional": [], "ops": ["all-reduce"]}
    assert comm["kfac-adaptive"]["every_step"] == 4 * (P + stats + 1 + 3)
    assert comm["kfac-adaptive"]["conditional"] == [4]
    assert comm["kfac-spread"] == {"every_step": 4 * (P + stats + 1), "conditional": [4 * eig], "ops": ["all-reduce"]}


def test_collective_bytes_parses_gather_scatter_and_refuses_non_hlo():
    hlo = textwrap.dedent("""
        HloModule m, num_partitions=4
        %b (p: f32[8]) -> f32[8] {
          %p = f32[8]{0} parameter(0)
          ROOT %g = f32[32]{0} all-gather(%p), replica_groups={{0,1,2,3}}, dimensions={0}
        }
        ENTRY %main (x: f32[8], c: s32[]) -> f32[2] {
          %x = f32[8]{0} parameter(0)
          %c = s32[] parameter(1)
          %r = f32[2]{0} reduce-scatter(%x), replica_groups=[1,4]<=[4], dimensions={0}, to_apply=%add
          %k = f32[8]{0} conditional(%c, %x, %x), branch_computations={%b, %b}
          ROOT %s = (f64[3], f32[]) all-reduce(%x, %x), replica_groups={}, to_apply=%add
        }
    """)
    res = dist.collective_bytes(hlo)
    assert res["every_step"] == 2 * 4 * 4 + 3 * 8 + 4  # reduce-scatter: its operand (result × 4); the tuple
    assert list(res["conditional"].values()) == [8 * 4]  # all-gather: its operand (result / 4), costliest branch
    with pytest.raises(ValueError, match="ENTRY"):
        dist.collective_bytes("not hlo")


def test_batched_run_cells_give_run_cell_traces_and_cpu_cap_on_one_device():
    """``run_cells`` (vmapped, here on 1 device) against ``run_cell``: the same D, reports and
    end point (tolerance: 6 gd steps, (2ⁿ + P)·ε₆₄ grown ≤ 11× per step), and the CPU cap
    (1 ns: every run stops after its first step) stops both at step 1."""
    from experiments import gibbs
    from experiments import quantum_methods as qm

    prob = gibbs.problem(3, 1.0, "cx1")
    tol = 20 * np.finfo(np.float64).eps * 11.0**6 * 3
    for cap in (None, 1e-9):
        serial = [qm.run_cell(prob, "gd", 0.3, seed, 6, max_cpu=cap) for seed in (0, 1)]
        batched = qm.run_cells(prob, "gd", [0.3, 0.3], [0, 1], 6, max_cpu=cap)
        for b, r in zip(batched, serial):
            assert b["status"] == r["status"] == ("ok" if cap is None else "cpu limit at step 1")
            np.testing.assert_array_equal(np.isnan(b["D"]), np.isnan(r["D"]))
            np.testing.assert_allclose(b["D"], r["D"], rtol=0, atol=tol)
            np.testing.assert_array_equal(b["report_iters"], r["report_iters"])
            np.testing.assert_allclose(b["fidelity"], r["fidelity"], rtol=0, atol=tol)
            for k in r["params"]:
                np.testing.assert_allclose(b["params"][k], r["params"][k], rtol=0, atol=tol)
    with pytest.raises(ValueError, match="equal-length"):
        qm.run_cells(prob, "gd", [0.3], [0, 1], 6)


def test_sweep_grid_and_refusals():
    from qgeom.optimize.sweep import grid, sweep

    g = grid(seed=[0, 1], beta=[0.5, 1.0, 2.0])
    assert list(zip(g["seed"], g["beta"])) == list(itertools.product([0, 1], [0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match="one common non-zero length"):
        sweep(lambda c: c["a"], {"a": np.zeros(3), "b": np.zeros(2)})
    with pytest.raises(ValueError, match="non-finite"):
        sweep(lambda c: c["a"], {"a": np.array([1.0, np.nan])})
    res = sweep(lambda c: {"y": jnp.log(c["a"])}, {"a": np.array([1.0, -1.0, 2.0])})  # log(-1) = NaN: reported
    assert list(res["nonfinite_runs"]) == [1]


def _makespan(costs, owner, m):
    load = [0.0] * m
    for c, d in zip(costs, owner):
        load[d] += c
    return max(load)


@pytest.mark.parametrize("seed", range(6))
def test_assign_refresh_covers_each_layer_once_within_lpt_bound_of_optimum(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 4))
    costs = rng.uniform(0, 10, size=int(rng.integers(1, 8))) ** 3
    owner = dist.assign_refresh(costs, m)
    assert len(owner) == len(costs) and all(0 <= d < m for d in owner)  # each layer exactly one owner
    best = min(_makespan(costs, a, m) for a in itertools.product(range(m), repeat=len(costs)))  # brute force
    assert _makespan(costs, owner, m) <= (4 / 3 - 1 / (3 * m)) * best * (1 + 1e-12)  # Graham's LPT bound


def test_assign_refresh_balances_equal_layers_and_kronecker_costs():
    assert sorted(dist.assign_refresh([1.0] * 8, 4)) == [0, 0, 1, 1, 2, 2, 3, 3]
    costs = dist.kronecker_refresh_costs({"a": (785, 1000), "b": (1001, 500)})
    assert costs == {"a": 785.0**3 + 1000.0**3, "b": 1001.0**3 + 500.0**3}
    assert dist.assign_refresh(list(costs.values()), 2) == (0, 1)  # a (1.48e9) first, b to the idle device
    with pytest.raises(ValueError, match="positive integer"):
        dist.assign_refresh([1.0], 0)
    with pytest.raises(ValueError, match="finite"):
        dist.assign_refresh([1.0, float("nan")], 2)


def test_mesh_without_data_axis_is_refused():
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("model",))
    with pytest.raises(ValueError, match="no 'data' axis"):
        dist.shard_step(lambda p, s, b: (p, s, 0.0), mesh)
    with pytest.raises(ValueError, match="same leading"):
        dist.check_batch((np.zeros((4, 2)), np.zeros(3)), dist.data_mesh())


def test_initialize_refuses_partial_environment(monkeypatch):
    monkeypatch.setenv("QGEOM_COORDINATOR", "localhost:1234")
    monkeypatch.delenv("QGEOM_NUM_PROCESSES", raising=False)
    monkeypatch.delenv("QGEOM_PROCESS_ID", raising=False)
    with pytest.raises(ValueError, match="or none"):
        dist.initialize()
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        dist.initialize("localhost:1234", 2, 2)


def test_bench_gpu_refuses_without_gpu():
    from experiments import bench_gpu

    if bench_gpu.gpu_devices():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="no GPU"):
        bench_gpu.main([])


@pytest.mark.slow
def test_bench_gpu_quick_self_check_on_cpu(tmp_path):
    from experiments import bench_gpu

    assert bench_gpu.main(["--quick", "--allow-cpu", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert res["vqt"].keys() == {"n3", "n4"}
    for row in res["vqt"].values():  # float64 simulators on 2^n states: agreement to rounding
        assert row["abs_dloss"] <= 1e-12 and row["max_dgrad"] <= 1e-12
    assert res["bkm"]["n3"]["rel_err"] <= 1e-12
    assert {"sgd", "kfac-fixed", "kfac-adaptive"} <= res["kfac"]["batch8"]["rows"].keys()


TWO_PROCESSES = textwrap.dedent("""
    import os, sys
    from classical import distributed as dist
    dist.initialize(cpu_collectives="gloo")
""") + PROBLEM + textwrap.dedent("""
    assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
    mesh = dist.data_mesh()
    opt = optimizers["kfac"]
    p = train(dist.shard_step(opt.step, mesh), dist.replicate(p0, mesh), dist.replicate(opt.init(p0), mesh),
              lambda b: dist.shard_batch(b, mesh))
    print(json.dumps(p))
""")


@pytest.mark.slow
def test_distributed_two_processes_reach_single_process_parameters():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [_run(TWO_PROCESSES, 2, {"QGEOM_COORDINATOR": f"localhost:{port}", "QGEOM_NUM_PROCESSES": "2",
                                     "QGEOM_PROCESS_ID": str(i)}) for i in range(2)]
    results = [_result(p) for p in procs]
    single = _result(_run(PROBLEM + "print(json.dumps(train(optimizers['kfac'].step, p0, "
                                    "optimizers['kfac'].init(p0))))", 1))
    for res in results:
        _assert_close(res, single)
