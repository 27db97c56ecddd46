"""The studies' harness (experiments.harness) on toy problems with known answers.

Independent references: a hand-written optax loop (same optimizer, same data order), the
closed-form gradient-descent iterate on a quadratic, and an uninterrupted run for resume.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.harness import Checkpoint, Method, MethodSpec, Registry, as_method, train, tune
from experiments.harness.analysis import first_below, first_reach, mean_std, reach_summary
from qgeom.optimize.runner import run_steps

jax.config.update("jax_enable_x64", True)
A = jnp.diag(jnp.array([1.0, 2.0, 4.0]))  # f(x) = ½ xᵀAx − bᵀx, well conditioned (κ = 4)
B = jnp.array([1.0, -1.0, 0.5])


def quad(params, batch=None):
    return 0.5 * params @ A @ params - B @ params


def test_gd_matches_the_closed_form_iterate():
    """x_{t+1} = (I − ηA) x_t + ηb; the loop's loss at each step's input is f(x_t)."""
    eta, steps = 0.1, 12
    run = train(as_method(optax.sgd(eta), quad), jnp.zeros(3), steps)
    x, expect = np.zeros(3), []
    for _ in range(steps):
        expect.append(0.5 * x @ np.asarray(A) @ x - np.asarray(B) @ x)
        x = x - eta * (np.asarray(A) @ x - np.asarray(B))
    # float64, a dozen contractions of a κ = 4 map: rounding ~1e-15 relative
    np.testing.assert_allclose(run["loss"], expect, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(run["params"], x, rtol=1e-12)
    assert run["status"] == "completed" and run["t"] == steps and run["grad_evals"][-1] == steps
    assert np.all(np.diff(run["wall"]) >= 0) and np.all(np.diff(run["cpu"]) >= 0)


def _nan_after(k):
    """A method whose update turns non-finite at step k (loss finite at that input)."""
    def step(state, batch, key, t):
        x = state[0]
        new = jnp.where(t >= k, jnp.nan, x - 0.1 * (A @ x - B))
        return (new, None), {"loss": quad(x), "ok": jnp.all(jnp.isfinite(new))}

    return Method(lambda p, key, batch_at: (p, None), step)


def test_non_finite_update_stops_at_the_last_finite_point():
    run = train(_nan_after(3), jnp.zeros(3), 10)
    assert run["diverged"] and run["status"].startswith("stopped at step 3") and run["t"] == 3
    assert np.all(np.isfinite(run["params"])) and len(run["loss"]) == 3
    assert run["evals"]["step"][-1] == 3  # the end point is evaluated and recorded


def test_non_finite_input_steps_back_and_tolerated_steps_go_on():
    state = {"n": 0}

    def step(st, t):  # input loss NaN from step 2 on: the state steps back to the output of step 0
        state["n"] += 1
        return st + 1.0, {"loss": jnp.nan if t >= 2 else float(t)}

    res = run_steps(step, jnp.zeros(()), 6)
    assert res.status.startswith("stopped at step 2") and res.t == 1 and float(res.state) == 1.0
    res = run_steps(step, jnp.zeros(()), 6, tolerate=10)  # an optimizer that undoes bad steps itself
    assert res.status == "completed" and res.t == 6 and res.bad == 4


def test_killed_run_resumes_to_identical_numbers(tmp_path):
    method = as_method(optax.adam(0.05), quad)
    kw = dict(eval_at=lambda t: t % 5 == 0, evaluate=lambda p, t: {"f": quad(p)})
    ref = train(method, jnp.zeros(3), 20, checkpoint=Checkpoint(tmp_path / "a.pkl"), **kw)

    def kill(t):
        if t == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(method, jnp.zeros(3), 20, checkpoint=Checkpoint(tmp_path / "b.pkl"), on_step=kill, **kw)
    seen = []
    again = train(method, jnp.zeros(3), 20, checkpoint=Checkpoint(tmp_path / "b.pkl"), on_step=seen.append, **kw)
    assert seen == list(range(11, 21))  # resumed from the step-10 checkpoint
    assert again["evals"]["f"] == ref["evals"]["f"] and again["loss"] == ref["loss"]
    np.testing.assert_array_equal(again["params"], ref["params"])
    assert np.all(np.diff(again["evals"]["wall_time"]) >= 0)


def test_stop_rule_ends_the_run_and_it_stays_ended(tmp_path):
    method = as_method(optax.sgd(0.1), quad)
    ckpt = Checkpoint(tmp_path / "s.pkl")
    kw = dict(evaluate=lambda p, t: {"f": quad(p)}, stop=lambda r: "target" if r["f"] <= -0.4 else None)
    run = train(method, jnp.zeros(3), 50, checkpoint=ckpt, **kw)
    k = first_below(run["evals"]["f"], -0.4)
    assert run["status"] == "target" and run["t"] == k < 50
    seen = []
    again = train(method, jnp.zeros(3), 50, checkpoint=ckpt, on_step=seen.append, **kw)
    assert not seen and again["t"] == k


def test_new_optax_baseline_is_one_registry_entry_and_matches_a_plain_optax_loop():
    registry = Registry(MethodSpec("sgd", "SGD", lambda lr: optax.sgd(lr), grid=(0.1,)))
    registry.add(MethodSpec("lion", "Lion", lambda lr, **kw: optax.lion(lr, **kw), grid=(1e-2, 3e-2),
                            settings={"b1": 0.9}))
    tx = optax.lion(3e-2, b1=0.9)
    run = train(as_method(registry["lion"].make(3e-2), quad), jnp.zeros(3), 15)
    x, state, losses = jnp.zeros(3), tx.init(jnp.zeros(3)), []
    for _ in range(15):
        value, g = jax.value_and_grad(quad)(x)
        updates, state = tx.update(g, state, x)
        x, _ = optax.apply_updates(x, updates), losses.append(float(value))
    np.testing.assert_allclose(run["loss"], losses, rtol=1e-12, atol=1e-14)  # the same float64 operations
    assert registry.select("sgd,lion") == ["sgd", "lion"] and registry.label("lion") == "Lion"


def test_registry_and_adapter_errors():
    spec = MethodSpec("a", "A", lambda lr: optax.sgd(lr))
    registry = Registry(spec)
    with pytest.raises(ValueError, match="already registered"):
        registry.add(spec)
    with pytest.raises(ValueError, match="unknown method"):
        registry["b"]
    with pytest.raises(ValueError, match="unknown methods"):
        registry.select(["a", "b"])
    with pytest.raises(ValueError, match="cannot adapt"):
        as_method(object())
    with pytest.raises(ValueError, match="steps"):
        train(as_method(optax.sgd(0.1), quad), jnp.zeros(3), 0)
    seen = {}
    ctx = MethodSpec("c", "C", lambda damping, problem: seen.update(d=damping, p=problem), settings={})
    ctx.make({"damping": 2.0}, problem="P", seed=3)  # context passed only where the builder names it
    assert seen == {"d": 2.0, "p": "P"}
    assert Registry(MethodSpec("k", "K", None, requires="no_such_module_xyz")).select() == []


def test_tune_equal_budget_winner_and_failed_points():
    res = tune([0.1, 0.3, 1.0, 3.0], lambda lr: (lr - 0.3) ** 2 if lr < 2 else float("nan"), lambda r: r)
    assert res["winner"] == 0.3 and np.isnan(res["scores"][3]) and len(res["results"]) == 4
    assert tune([1, 2], lambda p: np.inf, lambda r: r)["winner"] == 1  # nothing finite: the first point


def test_analysis_hand_values():
    assert first_below([np.nan, 3.0, 1.0, 0.5], 1.0) == 2 and first_below([np.nan, 2.0], 1.0) is None
    assert mean_std([1.0, 3.0]) == (2.0, 1.0) and mean_std([]) == (None, None)
    a = {"D": np.array([1.0, 0.5, 0.1]), "time": np.array([0.0, 1.0, 2.0]), "cpu_time": np.array([0.0, 0.5, 1.0]),
         "grad_evals": np.array([0.0, 2.0, 4.0])}
    b = dict(a, D=np.array([1.0, 0.9, 0.8]))
    assert first_reach(a, 0.5) == {"iterations": 1, "grad_evals": 2.0, "wall_s": 1.0, "cpu_s": 0.5}
    r = reach_summary([a, b], 0.5)  # ERT: (0.5 + the failed seed's whole 1.0 CPU s) / 1 success
    assert r["reached"] == "1/2" and r["ert_cpu_s"] == 1.5 and r["ert_iterations"] == 3


def test_progress_bar_is_quiet_off_a_terminal(capsys):
    run_steps(lambda s, t: (s, {"loss": 1.0}), jnp.zeros(()), 5, progress=True)
    assert capsys.readouterr().err == ""


def _scaled(factors):
    """x ← factors[t] · x on a scalar; the evaluated training loss is x²."""
    def step(state, batch, key, t):
        return (state[0] * factors[t], None), {"loss": state[0] ** 2}

    return Method(lambda p, key, batch_at: (p, None), step)


def test_blowup_stops_a_finite_explosion_as_diverged_and_it_stays_ended(tmp_path):
    ev = {"evaluate": lambda x, t: {"train_loss": x ** 2}}
    # losses 1, 1/4, 1/16, 1/64, 1.5625 (= 100 x best: not above), 156.25 (above start and 100 x best)
    factors = [0.5, 0.5, 0.5, 10.0, 10.0, 10.0, 10.0, 10.0]
    ck = Checkpoint(tmp_path / "r.pkl")
    run = train(_scaled(factors), jnp.float64(1.0), 8, checkpoint=ck, blowup=100, **ev)
    assert run["diverged"] and run["status"].startswith("diverged at step 5") and run["t"] == 5
    seen = []
    again = train(_scaled(factors), jnp.float64(1.0), 8, checkpoint=ck, blowup=100, on_step=seen.append, **ev)
    assert not seen and again["status"] == run["status"] and again["diverged"]
    # 100 x its best but still below its start (1 → 1e-4 → 0.25): an optimizer's recovery, not stopped
    calm = train(_scaled([0.01, 50.0, 1.0]), jnp.float64(1.0), 3, blowup=100, **ev)
    assert calm["status"] == "completed" and not calm["diverged"]
    with pytest.raises(ValueError, match="blowup"):
        train(_scaled(factors), jnp.float64(1.0), 3, blowup=1.0, **ev)
