"""The scaling studies' tools against closed forms: the power-law fit (known exponent, CI
coverage), the divergence bisection (gradient descent on a quadratic, edge 2/λ_max) and the
SLQ learner's hyper-parameters (a quadratic with a known spectrum)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qgeom  # noqa: F401  (enables x64)
from experiments.batch_scaling import bisect_edge
from experiments.harness.analysis import fit_power_law
from qgeom.spectral import slq_hyperparameters


def test_fit_power_law_exact_and_ci_coverage():
    """Noiseless y = 3 x^-0.7 gives s = -0.7 and prefactor 3 to rounding. With log-normal noise
    (σ = 0.3, 6 points) the 95 % t interval must contain the true s in 95 % of 600 seeded
    replicates: binomial sd √(.95·.05/600) ≈ 0.009, so the coverage lies in [0.92, 0.98] (3.4 sd)."""
    x = 2.0 ** np.arange(4, 10)
    fit = fit_power_law(x, 3.0 * x**-0.7)
    assert abs(fit["slope"] + 0.7) < 1e-12 and abs(fit["prefactor"] - 3.0) < 1e-10
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(600):
        f = fit_power_law(x, 3.0 * x**-0.7 * np.exp(0.3 * rng.standard_normal(len(x))))
        hits += f["ci95"][0] <= -0.7 <= f["ci95"][1]
    assert 0.92 <= hits / 600 <= 0.98
    assert fit_power_law([1, 2, 4], [1.0, -1.0, None])["slope"] is None  # < 3 usable points


def test_bisection_finds_gradient_descent_edge_on_quadratic():
    """GD on f = ½ xᵀAx (A diagonal, λ_max = 4) diverges — final f above the initial — exactly
    for lr > 2/λ_max once the top mode's growth (1 + 2δ)^{2T} beats its initial share c of f:
    the edge found lies in [2/λ_max, (2/λ_max)(1 + δ_c)], (1 + 2δ_c)^{2T} = 1/c, up to the bracket."""
    lam = np.array([4.0, 2.0, 1.0, 0.5, 0.1])
    x0, steps = np.ones(5), 300

    def unstable(lr):
        x = x0 * (1 - lr * lam) ** steps
        return 0.5 * np.sum(lam * x**2) > 0.5 * np.sum(lam * x0**2)

    lo, hi = bisect_edge(unstable, 1e-3, 1e-2, iters=30)  # the bracket must first widen upward
    share = lam[0] / lam.sum()
    delta_c = ((1 / share) ** (1 / (2 * steps)) - 1) / 2
    assert hi >= 2 / lam[0] and lo <= 2 / lam[0] * (1 + delta_c)
    assert 1 < hi / lo < 1 + 1e-6
    assert bisect_edge(lambda v: False, 1.0, 2.0, 3, max_expand=2) == (32.0, None)  # never unstable


def test_slq_learner_hyperparameters_on_known_spectrum():
    """A diagonal A (eigenvalues known) with Rademacher probes: v_i² = 1, so every probe's
    quadrature mean Σ τ_j θ_j = vᵀAv/n = tr A/n exactly, and n Lanczos steps give λ_max exactly.
    Then α = 4/(√λ_max + √(tr A/n))² and ρ = ((√κ − 1)/(√κ + 1))² in closed form (to Lanczos
    rounding, ~1e-10 relative with full reorthogonalization in float64)."""
    eigs = jnp.asarray(np.geomspace(1e-2, 10.0, 12))
    hp = slq_hyperparameters(lambda v: eigs * v, 12, jax.random.PRNGKey(0), 3, 12)
    lo, hi = float(jnp.mean(eigs)), float(eigs[-1])
    kappa = hi / lo
    np.testing.assert_allclose(float(hp["lambda_max"]), hi, rtol=1e-10)
    np.testing.assert_allclose(float(hp["lambda_low"]), lo, rtol=1e-10)
    np.testing.assert_allclose(float(hp["learning_rate"]), 4 / (math.sqrt(hi) + math.sqrt(lo)) ** 2, rtol=1e-9)
    np.testing.assert_allclose(float(hp["momentum"]), ((math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)) ** 2,
                               rtol=1e-9)
    capped = slq_hyperparameters(lambda v: eigs * v, 12, jax.random.PRNGKey(0), 3, 12, max_momentum=0.1)
    assert float(capped["momentum"]) == 0.1
    # heavy ball with these values contracts every mode in [λ_lo, λ_max] at rate √ρ per step
    # (≲ C(k + 1)√ρ^k at the double roots of the interval's ends; C = 1e3 is generous, the rate is
    # what is tested: √ρ ≈ 0.41 here, √ρ^200 ≈ 1e-78)
    x, v = jnp.ones(12), jnp.zeros(12)
    for _ in range(200):
        v = hp["momentum"] * v + eigs * x
        x = x - hp["learning_rate"] * v
    inside = np.asarray(eigs) >= lo * (1 - 1e-9)
    assert np.all(np.abs(np.asarray(x)[inside]) <= 1e3 * 201 * float(hp["momentum"]) ** 100)


@pytest.mark.slow
def test_batch_scaling_study_end_to_end_and_resume(tmp_path):
    """A tiny batch-scaling run writes its outputs; a second run reuses the cells (same numbers)."""
    from experiments import batch_scaling

    cfg = {"num_samples": 600, "hidden": [16], "batch_sizes": [16, 64, 256], "stability_steps": 20, "bisect_iters": 2,
           "grid_epochs": 1, "sgd_grid": [-2.0, 1.0, 3], "adam_grid": [-3.0, 0.0, 3], "kfac_steps": 5,
           "lanczos_steps": 10, "lanczos_batches": 1}
    first = batch_scaling.run(cfg, tmp_path)
    assert (tmp_path / "batch_scaling.png").exists() and (tmp_path / "summary.json").exists()
    assert [r["batch"] for r in first["rows"]] == [16, 64, 256]
    assert batch_scaling.run(cfg, tmp_path)["rows"] == first["rows"]


@pytest.mark.slow
def test_slq_learner_and_benzing_studies_end_to_end(tmp_path):
    """Tiny runs of the SLQ-learner and Benzing studies write their outputs."""
    from experiments import benzing, slq_learner

    s = slq_learner.run({"num_samples": 600, "hidden": [16], "steps": 100, "seeds": [0], "sgd_lrs": [0.1],
                         "adam_lrs": [1e-3]}, tmp_path / "slq")
    assert {r["method"] for r in s["rows"]} == {"slq", "slq-gd", "sgd", "adam"}
    assert np.all(np.isfinite(s["learner"]["lr_range"]))
    grids = {m: g[:1] for m, g in benzing.DEFAULT["grids"].items()}
    b = benzing.run({"num_samples": 600, "hidden": [16], "steps": 10, "eval_every": 5, "probe_steps": [5],
                     "grids": grids}, tmp_path / "benzing")
    assert set(b["verdicts"]) == {"kfac_beats_exact_ngd", "foof_beats_kfac"}
    probe = b["probes"][0]
    assert probe["cg_converged"] and all(0 <= probe[k]["efficiency"] <= 1 + 1e-4 for k in ("kfac", "foof", "sgd"))
    assert (tmp_path / "benzing" / "benzing.png").exists()
