"""The NRWS and QBVI studies: resumption to identical results, their summaries' numbers, the references.

Tiny configs (an [784, 8, 4] Helmholtz machine on 256 images, iris with 40 VI iterations):
a study killed mid-run and resumed writes the same summary.json (timings aside) as one run
straight through; the summary's derived numbers are recomputed here from its own runs; the
Laplace reference equals scikit-learn's L2 logistic regression and the closed-form Hessian;
NUTS (numpyro) reproduces the exact Gaussian posterior of Bayesian linear regression.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import nrws, qbvi

TIMING = {"wall", "cpu", "cpu_s", "wall_s", "cpu_ms_per_step", "cpu_to_target", "plot", "table", "verdict"}


def _strip(obj):
    """The summary without wall / CPU clocks (and the text built from them)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


class Killed(Exception):
    pass


def _killer(at):
    count = [0]

    def hook(t):
        count[0] += 1
        if count[0] == at:
            raise Killed

    return hook


def _resume_matches(study, config, tmp_path, kill_at):
    a = study.run_study(config, tmp_path / "a", progress=False)
    with pytest.raises(Killed):
        study.run_study(config, tmp_path / "b", progress=False, on_step=_killer(kill_at))
    seen = []
    b = study.run_study(config, tmp_path / "b", progress=False, on_step=seen.append)
    on_disk = [_strip(json.loads((tmp_path / d / "summary.json").read_text())) for d in "ab"]
    assert on_disk[0] == on_disk[1]
    assert (tmp_path / "b" / "curves.png").stat().st_size > 0
    return a, b, seen


NRWS_TINY = dict(nrws.DEFAULT, methods=["ws", "nrws"], hidden=[8, 4], train_size=256, steps=12, baseline_steps=16,
                 seeds=1, eval_every=4, eval_size=20, eval_k=10, final_size=20, final_k=10)


def test_nrws_study_resumes_to_identical_summary(tmp_path):
    # killed at NRWS's step 6 (after WS's 16): resumes from NRWS's step-4 checkpoint
    a, b, seen = _resume_matches(nrws, NRWS_TINY, tmp_path, kill_at=16 + 6)
    assert seen == list(range(5, 13))  # WS read back from its cell, NRWS continued from step 4
    for run in (a["runs"]["ws"][0], a["runs"]["nrws"][0]):
        assert np.all(np.isfinite(run["test_ll"])) and max(run["test_ll"]) < 0  # log p(x) of binary x < 0
        assert run["epochs"] == [s * 32 / 256 for s in run["steps"]]
    t = a["methods"]
    assert a["horizon_steps"] == 12 and t["ws"]["steps"] == 16 and t["nrws"]["epochs"] == 1.5
    assert t["nrws"]["ll_at_horizon"] == a["runs"]["nrws"][0]["test_ll"][-1]
    assert t["ws"]["ll_at_horizon"] == a["runs"]["ws"][0]["test_ll"][3]  # the step-12 evaluation
    assert a["target_ll"] == a["runs"]["ws"][0]["test_ll"][-1]
    # A finished study is read back without training.
    seen.clear()
    again = nrws.run_study(NRWS_TINY, tmp_path / "b", progress=False, on_step=seen.append)
    assert not seen and again["runs"] == b["runs"]


def test_nrws_summarize_hand_computed():
    def run(ll, cpu):
        return {"steps": [0, 10, 20], "epochs": [0, 1, 2], "cpu": cpu, "wall": cpu, "test_ll": ll,
                "final_ll": ll[-1], "final_ll_se": 1.0, "final_mc_se": 0.1, "diverged": False}

    runs = {"rws-sgd": [run([-300, -250, -200], [0, 1, 2]), run([-300, -240, -210], [0, 1, 2])],
            "nrws": [run([-300, -190, -180], [0, 10, 20]), run([-300, -230, -170], [0, 10, 20])]}
    table, horizon, target = nrws.summarize(runs, NRWS_TINY)
    assert horizon == 20 and target == -205.0  # the baseline's seed-mean last eval LL
    assert table["nrws"]["cpu_to_target"] == 15.0 and table["nrws"]["epochs_to_target"] == 1.5  # seeds hit at 1, 2
    assert table["rws-sgd"]["reached"] == "1/2" and table["rws-sgd"]["cpu_to_target"] == 2.0
    assert table["nrws"]["final_ll_se_seeds"] == pytest.approx(5.0)  # sd 7.07 over 2 seeds, / √2
    assert table["nrws"]["cpu_ms_per_step"] == 1e3
    verdict = nrws._verdict(table, horizon, target)
    assert "-175.00 against the best baseline's -205.00" in verdict and "not better" not in verdict


QBVI_TINY = dict(qbvi.DEFAULT, methods=["qbvi"], problems=["iris"], steps=40, seeds=2, eval_every=10,
                 reference="laplace")


def test_qbvi_study_resumes_to_identical_summary(tmp_path):
    a, _, seen = _resume_matches(qbvi, QBVI_TINY, tmp_path, kill_at=40 + 15)  # in seed 1
    assert seen == list(range(11, 41))
    res = a["problems"]["iris"]
    runs, table = res["runs"], res["table"]
    best = max(np.mean([r["elbo"][-1] for r in runs[m]]) for m in runs)
    assert res["target"] == pytest.approx(best - max(1.0, 0.01 * abs(best)))
    for m, rs in runs.items():
        assert table[m]["final_elbo"] == pytest.approx(np.mean([r["elbo"][-1] for r in rs]))
        assert table[m]["pred_ll"] == pytest.approx(np.mean([r["pred_ll"][-1] for r in rs]))
        ref = res["reference"]
        errs = [np.max(np.abs(np.asarray(r["mean"]) - ref["mean"]) / ref["sd"]) for r in rs]
        assert ref["mean_err"][m] == pytest.approx(np.mean(errs))


@pytest.mark.slow
def test_qbvi_tuning_picks_the_best_scored_step_size(tmp_path):
    cfg = dict(QBVI_TINY, methods=["qbvi"], steps=20, seeds=1, tune_steps=20, reference="none")
    res = qbvi.run_study(cfg, tmp_path, progress=False)["problems"]["iris"]
    scores = {lr: np.mean(qbvi.one_run("iris", "qbvi", lr, cfg, 0, 20)["elbo"][-3:]) for lr in qbvi.METHODS["qbvi"].grid}
    assert res["lrs"]["qbvi"] == max(scores, key=scores.get)
    assert res["reference"] is None


def test_laplace_reference_matches_sklearn_and_closed_form_hessian():
    from sklearn.linear_model import LogisticRegression

    point_ll, dim, prior_var, xtr, ytr, *_ = qbvi.problem("iris")
    mode, cov = qbvi.laplace(point_ll, dim, prior_var, xtr, ytr)
    # MAP under N(0, 5I) = L2 logistic regression with C = 5 (intercept is column 0, penalized alike)
    sk = LogisticRegression(C=prior_var, fit_intercept=False, tol=1e-12, max_iter=10000).fit(xtr, ytr)
    np.testing.assert_allclose(mode, sk.coef_[0], rtol=1e-4, atol=1e-5)
    p = 1.0 / (1.0 + np.exp(-xtr @ mode))
    hess = xtr.T @ (xtr * (p * (1 - p))[:, None]) + np.eye(dim) / prior_var
    np.testing.assert_allclose(np.linalg.inv(cov), hess, rtol=1e-7, atol=1e-9 * np.abs(hess).max())
    thetas = mode + np.random.default_rng(0).normal(size=(7, dim))
    direct = np.mean(np.log(np.mean([1 / (1 + np.exp(-(2 * ytr - 1) * (xtr @ t))) for t in thetas], axis=0)))
    assert qbvi.predictive_ll(point_ll, jnp.asarray(thetas), xtr, ytr) == pytest.approx(direct, rel=1e-10)


def test_nuts_reference_matches_exact_linear_regression_posterior():
    pytest.importorskip("numpyro")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    y = x @ np.array([0.5, -1.0, 2.0]) + rng.normal(size=40)
    prior_var = 4.0
    cov = np.linalg.inv(x.T @ x + np.eye(3) / prior_var)  # exact posterior, noise variance 1
    mean = cov @ x.T @ y
    draws, rhat, ess = qbvi.nuts(jax.jit(lambda t: 0.5 * jnp.sum((y - x @ t) ** 2) + 0.5 * t @ t / prior_var), 3,
                                 jax.random.PRNGKey(0), warmup=300, samples=500, chains=2)
    flat = draws.reshape(-1, 3)
    sd = np.sqrt(np.diag(cov))
    assert draws.shape == (2, 500, 3) and np.all(rhat < 1.05) and np.all(ess > 200)
    # Monte-Carlo standard errors from the chains' own ESS: sd/√ESS for the mean, ≈ sd/√(2 ESS) for the sd
    assert np.all(np.abs(flat.mean(0) - mean) < 5 * sd / np.sqrt(ess))
    assert np.all(np.abs(flat.std(0) - sd) < 5 * sd / np.sqrt(2 * ess))


def test_study_configs_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="eval_k"):
        nrws.run_study(dict(NRWS_TINY, eval_k=150), tmp_path)
    with pytest.raises(ValueError, match="first_seed"):
        nrws.run_study(dict(NRWS_TINY, first_seed=1), tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        nrws.run_study(dict(NRWS_TINY, train_size=16), tmp_path)
    with pytest.raises(ValueError, match="unknown problems"):
        qbvi.run_study(dict(QBVI_TINY, problems=["wine"]), tmp_path)
    with pytest.raises(ValueError, match="reference"):
        qbvi.run_study(dict(QBVI_TINY, reference="mcmc"), tmp_path)
