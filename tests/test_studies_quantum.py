"""Smoke tests of the quantum studies (experiments.gibbs / learn / sequence) on tiny settings.

Independent checks: the recorded divergence at iteration 0 against D computed from scipy's
matrix logarithm, the fidelity against scipy's matrix square root, the time-to-threshold
analysis against hand-computed values, and resuming from a checkpoint against an
uninterrupted run (fixed seeds make the traces identical).
"""

import json

import jax
import numpy as np
import pytest
import scipy.linalg

from experiments import gibbs, learn
from experiments import quantum_methods as qm
from experiments import quantum_study as qs
from experiments.harness import Cells, Checkpoint
from experiments.harness.analysis import first_reach, floor_estimate, reach_summary
from experiments.harness.cli import quick
from experiments.quantum_problems import make_model, ring

TINY = dict(n=[3], betas=[1.0], seeds=[0, 1], steps=6, search_steps=3, methods=["adam", "qpngd"],
            ansatz="he1", grid="short", max_cpu=None)


def _scipy_relative_entropy(rho, sigma):
    return float(np.real(np.trace(rho @ (scipy.linalg.logm(rho) - scipy.linalg.logm(sigma)))))


def _scipy_fidelity(rho, sigma):
    s = scipy.linalg.sqrtm(rho)
    return float(np.real(np.trace(scipy.linalg.sqrtm(s @ sigma @ s))) ** 2)


def _finite_numbers(obj):
    """Every number in a JSON tree (None allowed: not reached)."""
    if isinstance(obj, dict):
        return all(_finite_numbers(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite_numbers(v) for v in obj)
    if isinstance(obj, float):
        return np.isfinite(obj)
    return True


def test_reach_analysis_matches_hand_values():
    trace = {"D": np.array([1.0, 0.5, 0.2, 0.12, 0.11, np.nan]), "time": np.array([0, 1, 2, 3, 4, np.nan]) * 0.5,
             "cpu_time": np.arange(6) * 0.25, "grad_evals": np.arange(6) * 11.0}
    assert first_reach(trace, 0.2) == {"iterations": 2, "grad_evals": 22.0, "wall_s": 1.0, "cpu_s": 0.5}
    assert first_reach(trace, 0.05) is None
    other = dict(trace, D=np.array([1.0, 0.15, 0.1, 0.1, 0.1, 0.1]))
    r = reach_summary([trace, other], 0.2)
    assert r["reached"] == "2/2" and r["iterations"] == 1.5 and r["grad_evals"] == 16.5
    r = reach_summary([trace, other], 0.105)
    assert r["reached"] == "1/2"
    # expected running time with restarts: the failed seed is charged its whole run
    assert (r["ert_cpu_s"], r["ert_wall_s"], r["ert_iterations"]) == (1.25 + 0.5, 2.0 + 1.0, 4 + 2)
    assert reach_summary([trace], 0.105)["ert_cpu_s"] is None
    assert floor_estimate({"a": [trace], "b": [other]}) == 0.1
    # search score: mean D over the last tenth (here the last finite point); a NaN stop scores inf
    assert qm.search_score(dict(trace, status="ok")) == 0.11
    assert qm.search_score(dict(trace, status="nan at step 3")) == np.inf


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="unknown methods"):
        qs.check_methods(["adam", "sgd"])
    with pytest.raises(ValueError, match="ansatz"):
        make_model(3, "mps2")
    with pytest.raises(ValueError, match="ring"):
        ring(2)
    prob = gibbs.problem(3, 1.0, "he1")
    with pytest.raises(ValueError, match="step size"):
        qm.method(prob, "adam", -0.1)
    with pytest.raises(ValueError, match="beta"):
        gibbs.problem(3, 0.0, "he1")
    with pytest.raises(ValueError, match="shots"):
        learn.problem(3, 1.0, 0, "he1")


def test_cli_rejects_unknown_config_keys_and_methods(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"n": [3], "bogus": 1}))
    with pytest.raises(ValueError, match="bogus"):
        gibbs.main(["--config", str(bad), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown methods"):
        learn.main(["--methods", "sgd", "--out", str(tmp_path)])


def test_gibbs_quick_smoke(tmp_path):
    summary = gibbs.run_study(TINY, tmp_path, progress=False)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["study"] == "gibbs" and _finite_numbers(saved)
    (p,) = saved["problems"]
    assert set(p["methods"]) == {"adam", "qpngd"}
    assert p["search"]["adam"]["grid"] == list(qm.QUANTUM["adam"].short_grid)
    assert p["search"]["adam"]["winner"] in p["search"]["adam"]["grid"]
    for m in p["methods"].values():
        assert {"final_D", "floor_D", "to_D*+0.05", "to_D*+0.01", "ms_per_iter", "final_fidelity"} <= set(m)
        assert m["floor_D"] >= p["D_star"] - 1e-12
    assert (tmp_path / "curves_n3_beta1_he1.png").stat().st_size > 10_000
    assert "| method |" in (tmp_path / "summary.md").read_text()

    # the recorded D and fidelity at iteration 0 against scipy (matrix log / square root)
    from qgeom.quantum import gibbs_state, hamiltonian_matrix, tfim

    prob = gibbs.problem(3, 1.0, "he1")
    cells = Cells(qc_checkpoint(tmp_path))
    trace = next(t for k, t in cells.done.items() if '"method": "adam"' in k and '"steps": 6' in k
                 and '"seed": 0' in k)
    rho = np.asarray(prob.model.density_matrix(prob.model.init(jax.random.PRNGKey(0))))
    sigma = np.asarray(gibbs_state(hamiltonian_matrix(tfim(ring(3))), 1.0))
    np.testing.assert_allclose(trace["D"][0], _scipy_relative_entropy(rho, sigma), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(trace["fidelity"][0], _scipy_fidelity(rho, sigma), rtol=1e-6)
    assert np.all(np.diff(trace["grad_evals"]) == 1) and np.all(np.diff(trace["time"]) >= 0)
    assert summary["table"] == saved["table"]


def qc_checkpoint(path):
    return Checkpoint(path / "checkpoint.pkl")


def test_resume_reproduces_uninterrupted_run(tmp_path):
    config = dict(TINY, seeds=[0, 1], methods=["adam"], steps=5)
    whole = gibbs.run_study(config, tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        gibbs.run_study(config, tmp_path / "killed", progress=False, stop_after=2)
    assert len(Cells(qc_checkpoint(tmp_path / "killed")).done) == 2
    resumed = gibbs.run_study(config, tmp_path / "killed", progress=False)
    a = Cells(qc_checkpoint(tmp_path / "whole")).done
    b = Cells(qc_checkpoint(tmp_path / "killed")).done
    assert a.keys() == b.keys() and len(a) == len(qm.QUANTUM["adam"].short_grid) + 2
    for key in a:
        np.testing.assert_array_equal(a[key]["D"], b[key]["D"])
    p, q = whole["problems"][0], resumed["problems"][0]
    assert p["D_star"] == q["D_star"] and p["search"] == q["search"]


def test_learn_quick_smoke(tmp_path):
    config = dict(TINY, methods=["adam"], seeds=[0, 1], shots=[200], estimators=["physical", "unbiased"], data_seed=7)
    summary = learn.run_study(config, tmp_path, progress=False)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert _finite_numbers(saved) and [p["shots"] for p in saved["problems"]] == [None, 200, 200]
    assert [p["estimator"] for p in saved["problems"]] == ["exact", "physical", "unbiased"]
    assert len(list(tmp_path.glob("curves_*.png"))) == 3
    assert (tmp_path / "final_vs_shots_n3_beta1_he1.png").stat().st_size > 10_000
    assert "200 shots" in summary["table"] and "final fidelity" in summary["table"]

    # D(σ‖ρ) at iteration 0 of every problem equals scipy's, whatever data trained the model
    from qgeom.quantum import gibbs_state, hamiltonian_matrix, tfim

    prob = learn.problem(3, 1.0, None, "he1")
    rho = np.asarray(prob.model.density_matrix(prob.model.init(jax.random.PRNGKey(0))))
    sigma = np.asarray(gibbs_state(hamiltonian_matrix(tfim(ring(3))), 1.0))
    expected = _scipy_relative_entropy(sigma, rho)
    done = Cells(qc_checkpoint(tmp_path)).done
    long = {k: t for k, t in done.items() if '"steps": 6' in k}
    firsts = [t["D"][0] for k, t in long.items() if '"seed": 0' in k]
    assert len(firsts) == 3
    np.testing.assert_allclose(firsts, expected, rtol=1e-8)

    # the shots table: final D and fidelity, mean ± std over seeds, from scipy at the final parameters
    (shot_summary,) = saved["shots_summary"]
    for row in shot_summary["rows"]:
        tag = "/exact" if row["shots"] is None else f"/shots=200/data_seed=7/estimator={row['estimator']}"
        finals = [t["params"] for k, t in long.items() if tag in k]
        assert len(finals) == 2
        rhos = [np.asarray(prob.model.density_matrix(p)) for p in finals]
        D = [_scipy_relative_entropy(sigma, r) for r in rhos]
        F = [_scipy_fidelity(r, sigma) for r in rhos]
        np.testing.assert_allclose([row["final_D"], row["final_D_std"]], [np.mean(D), np.std(D)], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose([row["final_fidelity"], row["final_fidelity_std"]], [np.mean(F), np.std(F)],
                                   rtol=1e-5, atol=1e-8)


def test_learn_rejects_unknown_estimator(tmp_path):
    with pytest.raises(ValueError, match="estimator"):
        learn.problem(3, 1.0, 100, "he1", estimator="mle")
    with pytest.raises(SystemExit):  # argparse: invalid choice
        learn.main(["--estimators", "mle", "--out", str(tmp_path)])


@pytest.mark.slow
def test_gibbs_run_quick_full_short_study(tmp_path):
    summary = quick(gibbs.STUDY, tmp_path, progress=False)
    (p,) = summary["problems"]
    assert p["n"] == 4 and set(p["methods"]) == set(qm.QUANTUM)
    assert p["headline"]["threshold"] == "D*+0.01"
    assert _finite_numbers(json.loads((tmp_path / "summary.json").read_text()))


@pytest.mark.slow
def test_learn_run_quick_full_short_study(tmp_path):
    summary = quick(learn.STUDY, tmp_path, progress=False)
    assert [p["shots"] for p in summary["problems"]] == [None, 1000]


def test_sequence_smoke_warm_starts_where_the_last_point_ended(tmp_path):
    from experiments import sequence

    config = dict(sequence.DEFAULT, n=[3], betas=[0.5, 1.0], steps=4, methods=["adam"], ansatz="he1",
                  kinds=["imaginary"])
    result = sequence.run_study(config, tmp_path, progress=False)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert _finite_numbers(saved) and [s["kind"] for s in saved["sequences"]] == ["imaginary"]
    assert (tmp_path / "sequence_imaginary_n3.png").exists()
    cells = Cells(qc_checkpoint(tmp_path))
    warm = sequence.run_chain(cells, "imaginary", 3, "adam", 0, config, "warm")  # from the checkpoint
    assert cells.computed == 0 and [p["label"] for p in warm] == [0.5, 1.0]
    # the warm point β=1 starts at the β=0.5 optimum: its first D is D(ρ_0.5‖σ_1), here from scipy's logm
    from qgeom.quantum import gibbs_state, hamiltonian_matrix, tfim

    model = make_model(3, "he1")
    rho = np.asarray(model.density_matrix(warm[0]["params"]))
    sigma = np.asarray(gibbs_state(hamiltonian_matrix(tfim(ring(3))), 1.0))
    np.testing.assert_allclose(warm[1]["D"][0], _scipy_relative_entropy(rho, sigma), rtol=1e-7)
    for row in result["sequences"][0]["methods"]["adam"]["rows"]:
        assert row["D_star"] <= min(row["warm"]["final_D"], row["cold"]["final_D"]) + 1e-12


@pytest.mark.slow
def test_sequence_real_time_smoke(tmp_path):
    from experiments import sequence

    config = dict(sequence.DEFAULT, n=[3], steps=4, trotter_steps=2, methods=["adam"], ansatz="he1", kinds=["real"])
    result = sequence.run_study(config, tmp_path, progress=False)
    rows = result["sequences"][0]["methods"]["adam"]["rows"]
    assert [r["point"] for r in rows] == pytest.approx([0.1, 0.2])
    assert all(0 <= r[s]["exact_fidelity"] <= 1 + 1e-9 for r in rows for s in ("warm", "cold"))
