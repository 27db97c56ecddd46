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
    mnist = batch_scaling.run({**cfg, "problem": "mnist-mlp", "num_samples": 400, "batch_sizes": [32]}, tmp_path / "mnist")
    assert mnist["train_samples"] == 400 and np.isfinite(mnist["rows"][0]["sgd_max_lr"])


@pytest.mark.slow
def test_slq_learner_and_benzing_studies_end_to_end(tmp_path):
    """Tiny runs of the SLQ-learner and Benzing studies write their outputs."""
    from experiments import benzing, slq_learner

    s = slq_learner.run({"num_samples": 600, "hidden": [16], "steps": 100, "seeds": [0], "sgd_lrs": [0.1],
                         "adam_lrs": [1e-3]}, tmp_path / "slq")
    assert {r["method"] for r in s["rows"]} == {"slq", "slq-gd", "sgd", "adam"}
    assert np.all(np.isfinite(s["learner"]["lr_range"]))
    grids = {m: g[:1] for m, g in benzing.PROBLEMS["mnist1d-mlp"]["quick"]["grids"].items()}
    b = benzing.run({"num_samples": 600, "hidden": [16], "steps": 10, "eval_every": 5, "probe_steps": [5],
                     "grids": grids}, tmp_path / "benzing")
    assert set(b["verdicts"]) == {"kfac_beats_exact_ngd", "foof_beats_kfac"}
    probe = b["probes"][0]
    assert probe["cg_converged"] and all(0 <= probe[k]["efficiency"] <= 1 + 1e-4 for k in ("kfac", "foof", "sgd"))
    assert (tmp_path / "benzing" / "benzing.png").exists()


def test_benzing_autoencoder_problem_and_exact_ngd_step():
    """The Benzing study's autoencoder (``setup``) is the mirrored tanh net with linear code and
    output layers, and its exact-NGD step (``_build("hf")``, cold start) solves (G + λI)x = −∇h to
    the study's CG tolerance 1e-3. The residual is recomputed with an independent GGN product,
    G v = Jᵀ diag(σ(1 − σ)) J v / N from ``jax.jvp`` / ``jax.vjp`` of the flat network (HF uses
    ``hessian_quad`` and ``linear_transpose``); float32 rounding of the check (~1e-6 · ‖b‖) and the
    CG recurrence's drift from the true residual (iterations · ε · κ ≲ 1e-4 here) are below the
    1e-4 slack allowed."""
    from jax.flatten_util import ravel_pytree

    from experiments import benzing
    from experiments.classical_methods import float32_mode

    config = benzing.resolve({"problem": "mnist-autoencoder", "num_samples": 32, "hidden": [6, 2]})
    with float32_mode():
        net, x, y = benzing.setup(config)
        assert x.shape == y.shape == (32, 784) and np.array_equal(np.asarray(x), np.asarray(y))
        assert [s for s in net.layer_shapes.values()] == [(785, 6), (7, 2), (3, 6), (7, 784)]
        assert [layer.activation for layer in net.layers] == ["tanh", "linear", "tanh", "linear"]
        assert net.output.name == "bernoulli"
        params = net.init(jax.random.PRNGKey(0))
        lam = 3.0
        opt = benzing._build(net, "hf", {"damping": lam, "min_damping": lam}, config, 0)
        _, state, info = opt.step(params, opt.init(params), (x, y))
        sol = state.direction
        flat, unravel = ravel_pytree(params)
        g = ravel_pytree(jax.grad(net.loss)(params, x, y))[0]
        f = lambda v: net.apply(unravel(v), x)  # noqa: E731
        logits, jv = jax.jvp(f, (flat,), (sol,))
        p = jax.nn.sigmoid(logits)
        gv = jax.vjp(f, flat)[1](p * (1 - p) * jv / x.shape[0])[0]
        resid = float(jnp.linalg.norm(-g - gv - lam * sol) / jnp.linalg.norm(g))
    assert 0 < int(info["cg_iterations"]) < config["cg_maxiter"]
    assert resid <= config["cg_tol"] + 1e-4
    assert abs(resid - float(info["cg_residual"])) <= 1e-4
    with pytest.raises(ValueError, match="problem"):
        benzing.resolve({"problem": "cifar"})
    with pytest.raises(ValueError, match="equal tuning"):
        benzing.resolve({"grids": {"hf": [{}], "kfac": [{}, {}], "foof": [{}], "adam": [{}]}})


def test_batch_scaling_mnist_mlp_problem():
    """The MNIST-MLP variant reads the first n training and n/4 test images of real MNIST, and
    an unknown problem is refused before any computation."""
    from classical.data import load_dataset
    from experiments import batch_scaling

    xtr, ytr, xte, yte = batch_scaling.load_problem("mnist-mlp", 40)
    assert xtr.shape == (40, 784) and ytr.shape == (40,) and xte.shape == (10, 784) and yte.shape == (10,)
    np.testing.assert_array_equal(xtr, load_dataset("mnist").x_train[:40])
    with pytest.raises(ValueError, match="unknown problem"):
        batch_scaling.run({"problem": "cifar"})


@pytest.mark.slow
def test_benzing_autoencoder_study_end_to_end(tmp_path):
    """A tiny autoencoder Benzing run (two seeds: tuning on the first, the winners on both)
    writes its outputs; every HF solve reached the 1e-3 tolerance; the probe's reference solve converged."""
    from experiments import benzing

    grids = {m: g[:2] for m, g in benzing.PROBLEMS["mnist-autoencoder"]["quick"]["grids"].items()}
    b = benzing.run({"problem": "mnist-autoencoder", "num_samples": 200, "hidden": [16, 4], "batch": 50, "steps": 4,
                     "eval_every": 2, "probe_steps": [2], "seeds": [0, 1], "grids": grids}, tmp_path)
    assert all(len(w["final"]) == 2 for w in b["winners"].values())
    assert sum(r["best"] for r in b["rows"]) == 4 and len(b["rows"]) == 8
    assert b["winners"]["hf"]["cg_converged_fraction"] == 1.0 and b["probes"][0]["cg_converged"]
    assert (tmp_path / "benzing.png").exists()
