"""The classical studies on the harness: plotting bands, kfac-jax reparametrisation, summaries,
resume, smoke run."""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classical import models
from classical.data import load_digits
from experiments import classical_methods as cm
from experiments import classical_problems as cp
from experiments import classical_study as cs
from experiments.harness import MethodSpec, Registry, loop
from experiments.harness import report as plotting

# ------------------------------------------------------------------------ plotting


def test_seed_band_shared_x_is_mean_and_std():
    ys = [np.array([3.0, 2.0, 1.0, 0.5]), np.array([5.0, 2.0, 3.0])]  # truncated to 3 points
    x, mean, lo, hi = plotting.seed_band(ys)
    np.testing.assert_array_equal(x, [0, 1, 2])
    np.testing.assert_allclose(mean, [4.0, 2.0, 2.0])
    np.testing.assert_allclose(hi - mean, [1.0, 0.0, 1.0])
    _, _, lo, hi = plotting.seed_band(ys, spread="minmax")
    np.testing.assert_allclose(lo, [3.0, 2.0, 1.0])
    np.testing.assert_allclose(hi, [5.0, 2.0, 3.0])


def test_seed_band_own_x_interpolates_on_common_range():
    xs = [np.array([0.0, 1.0, 2.0]), np.array([0.5, 2.5, 4.0])]
    ys = [np.array([0.0, 10.0, 20.0]), np.array([1.0, 5.0, np.nan])]  # NaN point dropped
    x, mean, _, _ = plotting.seed_band(ys, xs, num=7)
    assert x[0] == 0.5 and x[-1] == 2.0  # both seeds cover [0.5, 2.0] only
    expect = 0.5 * (10 * x + (1.0 + 2.0 * (x - 0.5)))  # seed 0: y = 10x; seed 1: line through (0.5,1), (2.5,5)
    np.testing.assert_allclose(mean, expect)
    with pytest.raises(ValueError, match="spread"):
        plotting.seed_band(ys, xs, spread="iqr")
    with pytest.raises(ValueError, match="does not match"):
        plotting.seed_band(ys, [np.arange(2), np.arange(3)])


def test_save_panels_writes_png(tmp_path):
    curves = {"a": [np.linspace(1, 0.1, 20), np.linspace(1.1, 0.2, 20)], "b": [np.linspace(1, 0.5, 20)]}
    walls = {"a": [np.linspace(0, 2, 20), np.linspace(0, 3, 20)], "b": [np.linspace(0, 1, 20)]}
    path = plotting.save_panels(tmp_path / "f.png", [dict(curves=curves, logy=True), dict(curves=curves, xs=walls)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least one panel"):
        plotting.save_panels(tmp_path / "g.png", [])


# ------------------------------------------------------------ harness components


@pytest.mark.parametrize("problem", [cp.mlp_classifier_problem((12,)), cp.conv_classifier_problem()], ids=["mlp", "conv"])
def test_split_params_is_the_same_function(problem):
    """kfac-jax's reparametrisation (plain dot / conv + bias) computes exactly net.apply."""
    net = problem.net
    params = net.init(jax.random.PRNGKey(0))
    params = {k: v.at[-1].set(0.1 * jnp.arange(v.shape[1], dtype=v.dtype)) for k, v in params.items()}
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, *net.input_shape), jnp.float32)
    split = cp.split_params(net, params)
    ours = jax.jit(lambda s, x: cp.split_apply(net, s, x))(split, x)
    np.testing.assert_allclose(ours, jax.jit(net.apply)(params, x), rtol=2e-5, atol=2e-5)
    back = cp.join_params(net, split)
    for k in params:
        np.testing.assert_array_equal(back[k], params[k])
    assert np.isclose(cp.l2_penalty(split), cp.l2_penalty(params))


def _hist(steps, walls, losses, diverged=False):
    return {"step": steps, "wall_time": walls, "train_loss": losses, "test_loss": losses,
            "test_error": [v / 10 for v in losses], "diverged": diverged}


def test_summary_reach_target():
    adam = [_hist([0, 10, 20], [0, 1, 2], [9.0, 5.0, 4.0]), _hist([0, 10, 20], [0, 1.2, 2.2], [9.0, 5.0, 6.0])]
    kfac = [_hist([0, 10, 20], [0, 3, 6], [9.0, 4.0, 2.0]), _hist([0, 10, 20], [0, 3, 7], [9.0, 6.0, 5.0])]
    sgd = [_hist([0, 10, 20], [0, 1, 2], [9.0, 8.0, 7.0])]
    s = cs.summarize({"adam": adam, "kfac": kfac, "sgd": sgd}, horizon=20)
    assert s["target_train_loss"] == 5.0  # best of the seed mean (9, 5, 5)
    k = s["methods"]["kfac"]  # seed 0 reaches 5 at step 10 (3 s), seed 1 at step 20 (7 s)
    assert k["reached"] == 2 and k["reach_step"] == 15 and k["reach_step_std"] == 5 and k["reach_wall_s"] == 5.0
    a = s["methods"]["adam"]
    assert a["reach_step"] == 10 and np.isclose(a["reach_wall_s"], 1.1)
    assert np.isclose(a["train_loss"], 5.0) and np.isclose(a["train_loss_std"], 1.0)
    assert s["methods"]["sgd"]["reached"] == 0 and s["methods"]["sgd"]["reach_step"] is None
    assert cs.first_reach([0, 1], [0, 1], [3.0, 2.0], 1.0) == (None, None)
    table = cs.markdown_table(s)
    assert "| kfac | 20 |" in table and "| 15 ± 5 | 5.0 ± 2.0 | — |" in table and "not reached (0/1)" in table
    for r in kfac:  # with process CPU times (here half the wall time) the CPU seconds to target come too
        r["cpu_time"] = [w / 2 for w in r["wall_time"]]
    s = cs.summarize({"adam": adam, "kfac": kfac}, horizon=20)
    assert s["methods"]["kfac"]["reach_cpu_s"] == 2.5 and "| 5.0 ± 2.0 | 2.5 ± 1.0 |" in cs.markdown_table(s)


# ------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def tiny():
    ds = load_digits()
    problem = cp.Problem("tiny", models.mlp((64, 16, 10), "tanh", "categorical"), 1e-4)
    data = {"train": (ds.x_train[:400], ds.y_train[:400]), "eval_train": (ds.x_train[:100], ds.y_train[:100]),
            "eval_test": (ds.x_test[:100], ds.y_test[:100])}
    return problem, data


REGISTRY = Registry(
    MethodSpec("sgd", "SGD", cm.sgd, ({"lr": 0.1},)),
    MethodSpec("kfac", "K-FAC", cm.kfac, ({"damping": 0.1},)),
    MethodSpec("kfac-sub", "K-FAC ¼", cm.kfac_sub, ({"damping": 0.1},)),
)


def _train(problem, method, hp, data, **kw):
    return cs.run(problem, REGISTRY, method, hp, data, **kw)


class Killed(Exception):
    pass


@pytest.mark.parametrize("method,hp", [("sgd", {"lr": 0.1}), ("kfac", {"damping": 0.1})])
def test_killed_run_resumes_to_identical_result(tiny, tmp_path, method, hp):
    problem, data = tiny
    kw = dict(seed=3, steps=30, batch_size=32, eval_every=10, progress=False)
    ref = _train(problem, method, hp, data, ckpt_dir=tmp_path / "a", **kw)

    def kill(t):
        if t == 25:
            raise Killed

    with pytest.raises(Killed):
        _train(problem, method, hp, data, ckpt_dir=tmp_path / "b", on_step=kill, **kw)
    seen = []
    resumed = _train(problem, method, hp, data, ckpt_dir=tmp_path / "b", on_step=seen.append, **kw)
    assert seen[0] == 21 and seen[-1] == 30  # restarted from the step-20 checkpoint
    assert resumed["step"] == ref["step"] == [0, 10, 20, 30]
    np.testing.assert_allclose(resumed["train_loss"], ref["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(resumed["test_error"], ref["test_error"], rtol=1e-6)
    assert ref["train_loss"][-1] < ref["train_loss"][0]  # it actually trained
    # A finished run is read back without training again.
    again = _train(problem, method, hp, data, ckpt_dir=tmp_path / "b", on_step=seen.append, **kw)
    assert len(seen) == 10 and again["train_loss"] == resumed["train_loss"]


def test_kfac_sub_is_kfac_with_quarter_batch_curvature(tiny):
    problem, data = tiny
    kw = dict(seed=0, steps=10, batch_size=32, eval_every=10, progress=False)
    sub = _train(problem, "kfac-sub", {"damping": 0.1}, data, **kw)
    same = _train(problem, "kfac", {"damping": 0.1, "curvature_batch_size": 8}, data, **kw)
    whole = _train(problem, "kfac", {"damping": 0.1}, data, **kw)
    assert sub["train_loss"] == same["train_loss"] != whole["train_loss"]  # ⌈0.25 · 32⌉ = 8 examples
    assert sub["train_loss"][-1] < sub["train_loss"][0]


def test_run_stops_at_target_and_stays_stopped(tiny, tmp_path):
    problem, data = tiny
    kw = dict(seed=0, steps=40, batch_size=32, eval_every=10, progress=False, ckpt_dir=tmp_path)
    ref = _train(problem, "sgd", {"lr": 0.1}, data, **kw)
    target = ref["train_loss"][2] * (1 + 1e-5)
    at, _ = cs.first_reach(ref["step"], ref["wall_time"], ref["train_loss"], target)  # 20, or 10 if not monotone
    kw["ckpt_dir"] = tmp_path / "stop"
    stopped = _train(problem, "sgd", {"lr": 0.1}, data, stop_below=target, **kw)
    assert stopped["step"][-1] == at and at < 40
    np.testing.assert_allclose(stopped["train_loss"], ref["train_loss"][: len(stopped["step"])], rtol=1e-6)
    seen = []
    again = _train(problem, "sgd", {"lr": 0.1}, data, stop_below=target, on_step=seen.append, **kw)
    assert not seen and again["step"] == stopped["step"]  # resumption does not continue past the target


def test_tuning_scores_stay_at_the_tuning_step_after_the_winner_continues(tiny, tmp_path):
    problem, data = tiny
    kw = dict(steps=20, batch_size=32, eval_every=10, ckpt_dir=tmp_path, progress=False)
    grid = [{"lr": 0.01}, {"lr": 0.1}]
    best, table = cs.tune_method(problem, REGISTRY, "sgd", grid, data, **kw)
    longer = _train(problem, "sgd", best, data, seed=0, **{**kw, "steps": 40})  # the final run continues it
    assert longer["step"][-1] == 40 and longer["train_loss"][-1] != table[grid.index(best)]["final_train_loss"]
    again, table2 = cs.tune_method(problem, REGISTRY, "sgd", grid, data, **kw)
    assert again == best and table2 == table
    assert table[grid.index(best)]["final_train_loss"] == pytest.approx(longer["train_loss"][2])


def test_first_seed_runs_only_the_later_seeds(tiny, tmp_path):
    problem, data = tiny
    config = {"methods": ["sgd"], "steps": 4, "seeds": 2, "first_seed": 1, "batch_size": 32, "eval_every": 2,
              "tune_steps": 0, "stop_at_target": False}
    res = cs.run_study(problem, REGISTRY, data, config, tmp_path, progress=False)
    alone = _train(problem, "sgd", {"lr": 0.1}, data, seed=1, steps=4, batch_size=32, eval_every=2, progress=False)
    assert [r["seed"] for r in res["runs"]["sgd"]] == [1] and res["seeds"] == 1
    assert res["runs"]["sgd"][0]["train_loss"] == alone["train_loss"]


def test_diverging_run_is_stopped_and_reported(tiny):
    problem, data = tiny
    run = _train(problem, "sgd", {"lr": 1e6}, data, seed=0, steps=20, batch_size=32, eval_every=5, progress=False)
    assert run["diverged"] and run["step"][-1] < 20
    # the last evaluation is of the last parameters with a finite loss (SGD does not donate)
    assert np.all(np.isfinite(run["train_loss"]))
    assert cs.final_loss(run) == float("inf")


@pytest.mark.skipif(loop.memory_maps() is None, reason="counts /proc/self/maps (Linux)")
def test_finished_runs_release_their_compiled_code(tiny, monkeypatch):
    """Each run compiles fresh closures and XLA:CPU maps their code in pages of its own: kept,
    the process's memory maps grow with every run (a long study died at vm.max_map_count);
    released after a run once past ``MAP_FRACTION`` of the limit (here 0: after every run),
    the count returns to where it was."""
    problem, data = tiny

    def growth(lrs):
        before = loop.memory_maps()[0]
        for lr in lrs:
            _train(problem, "sgd", {"lr": lr}, data, seed=0, steps=2, batch_size=32, eval_every=2, progress=False)
        return loop.memory_maps()[0] - before

    monkeypatch.setattr(loop, "MAP_FRACTION", 1.0)  # never
    growth([0.011])  # one-time compilations of the loop and the metrics
    kept = growth([0.012, 0.013])
    monkeypatch.setattr(loop, "MAP_FRACTION", 0.0)  # after every run
    growth([0.015])
    released = growth([0.016, 0.017])
    assert kept >= 60 and released < kept / 4, (kept, released)


def test_bad_arguments():
    from experiments import kfac_autoencoder

    with pytest.raises(ValueError, match="unknown method"):
        kfac_autoencoder.METHODS["lbfgs"]
    with pytest.raises(ValueError, match="unknown methods"):
        kfac_autoencoder.main(["--methods", "sgd,lbfgs"])
    with pytest.raises(ValueError, match="--steps"):
        kfac_autoencoder.main(["--steps", "0", "--methods", "sgd"])
    with pytest.raises(ValueError, match="--first-seed"):
        kfac_autoencoder.main(["--seeds", "2", "--first-seed", "2", "--methods", "sgd"])
    with pytest.raises(ValueError, match="exceeds"):
        kfac_autoencoder.main(["--batch-size", "600", "--train-size", "500", "--methods", "sgd"])


# ------------------------------------------------------------------ smoke run


@pytest.mark.slow
def test_autoencoder_study_smoke(tmp_path):
    from experiments import kfac_autoencoder

    methods = "kfac,sgd,adam" + (",kfac-jax" if kfac_autoencoder.METHODS["kfac-jax"].available else "")
    argv = ["--steps", "6", "--train-size", "200", "--eval-size", "50", "--batch-size", "50", "--eval-every", "3",
            "--tune-steps", "3", "--seeds", "2", "--methods", methods, "--out", str(tmp_path), "--no-progress"]
    assert kfac_autoencoder.main(argv) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "curves.png").exists()
    for key in ("problem", "tuning", "summary", "runs", "steps", "seeds"):
        assert key in res
    for m in methods.split(","):
        assert len(res["tuning"][m]["table"]) == 4 and res["tuning"][m]["winner"] in res["tuning"][m]["grid"]
        for run in res["runs"][m]:
            assert run["step"] == [0, 3, 6]
            for k in ("train_loss", "test_error", "wall_time"):
                assert all(v is not None and np.isfinite(v) for v in run[k]), (m, k)
            assert run["train_loss"][-1] < run["train_loss"][0]
        row = res["summary"]["methods"][m]
        assert row["seeds"] == 2 and np.isfinite(row["ms_per_step"])


def test_single_threaded_blas_reaches_jaxlib_lapack():
    """The limit covers the OpenBLAS that jaxlib's LAPACK kernels load lazily."""
    import threadpoolctl

    with cm.single_threaded_blas():
        jnp.linalg.cholesky(jnp.eye(3)).block_until_ready()
        blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)


# ------------------------------------------------------------------------ benchmark report


def test_bench_report_ratios_and_roofline(capsys):
    """The bench's ratios and floors from synthetic block times (no timing is measured here
    except the peak-GEMM probe): ours 4× SGD, kfac-jax 5× SGD → 0.80; floors from kfac_flops."""

    from experiments import bench_kfac, kfac_flops

    args = argparse.Namespace(
        batch_size=1000, inverse_period=20, stats_period=1, sub_stats_period=2, curvature_batch_size=250,
        reps=2, block=20)
    scale = {"sgd": 1.0, "adam": 1.1, "kfac-fixed": 3.0, "kfac-adaptive": 4.0, "kfac-fixed-sub": 1.9,
             "kfac-adaptive-sub": 3.0, "kfac-jax-fixed": 3.0, "kfac-jax-adaptive": 5.0}
    times = {k: [[0.05 * v] * 20] * 2 for k, v in scale.items()}  # seconds per step
    with cm.float32_mode():
        out = bench_kfac.report(times, args)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "kfac_step_vs_kfac_jax=0.80 kfac_step_vs_sgd=1.90"
    shapes = [(784, 1000), (1000, 500), (500, 250), (250, 30), (30, 250), (250, 500), (500, 1000), (1000, 784)]
    sgd = kfac_flops.step_cost("sgd", shapes, 1000).total
    ada = kfac_flops.step_cost("kfac-adaptive", shapes, 1000, inverse_period=20).total
    sub = kfac_flops.step_cost("kfac-fixed", shapes, 1000, curvature_batch=250, stats_period=2).total
    floors = out["flop_floors"]
    assert floors["kfac-adaptive"]["floor_vs_sgd"] == pytest.approx(ada / sgd)
    assert floors["kfac-fixed-sub"]["floor_vs_sgd"] == pytest.approx(sub / sgd)
    assert floors["kfac_vs_kfac_jax_bound"] == pytest.approx(ada / sgd / 5.0)
    assert out["ratios"]["kfac_adaptive_sub_vs_kfac_jax_adaptive"] == pytest.approx(0.6)


def test_puiu_cnn_has_his_parameter_count():
    """Puiu's CNN: conv 5×5 1→5 (130), conv 5×5 5→7 (882), dense 112→30 (3390), 30→10 (310)."""
    from experiments.kfac_classifier import METHODS, puiu_cnn_problem

    net = puiu_cnn_problem().net
    assert dict(net.layer_shapes) == {"layer00": (26, 5), "layer02": (126, 7), "layer05": (113, 30),
                                      "layer06": (31, 10)}
    assert sum(a * b for a, b in net.layer_shapes.values()) == 130 + 882 + 3390 + 310
    kfac, kld = (METHODS[m].grid[1] for m in ("kfac-puiu", "kld-wrm"))
    assert {k: v for k, v in kfac.items() if k != "ema"} == {k: v for k, v in kld.items() if k != "ema"}
    assert (kfac["ema"], kld["ema"], kfac["lr"]) == (0.95, 0.33, 0.01)
