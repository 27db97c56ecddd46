"""The K-FAC family and the gradient-only preconditioners in the classical studies: every new
registry entry builds and takes two finite steps whose reported loss is the problem's own; bench
contender names; refusals; the ReLU-autoencoder study's loss and its equal-wall-time table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classical import models
from classical.data import load_digits
from experiments import bench_kfac
from experiments import classical_family as cf
from experiments import classical_methods as cm
from experiments import classical_problems as cp
from experiments import kfac_autoencoder as ka
from experiments import kfac_classifier as kc
from experiments import relu_autoencoder as ra

NEW = ("ekfac", "kfac-tridiag", "rs-kfac", "kld-wrm", "tnt", "mbf", "hessian-free", "shampoo", "soap", "mfac")
CONTENDERS = ("ekfac", "kfac-tridiag", "rs-kfac", "kld-wrm", "shampoo", "soap", "tnt", "mbf", "mfac")


@pytest.fixture(scope="module")
def tiny():
    ds = load_digits()
    problem = cp.Problem("tiny", models.mlp((64, 8, 10), "tanh", "categorical"), 1e-4)
    return problem, (jnp.asarray(ds.x_train[:64]), jnp.asarray(ds.y_train[:64]))


def _two_steps(spec, problem, batch):
    point = spec.grid[len(spec.grid) // 2]
    method = cm.make_method(spec, problem, point)
    key = jax.random.PRNGKey(0)
    with cm.float32_mode():
        params0 = problem.net.init(key)
        expect = float(problem.loss(params0, batch))
        state = method.init(jax.tree_util.tree_map(jnp.copy, params0), key, lambda t: batch)
        losses = []
        for t in range(2):
            state, info = method.step(state, batch, jax.random.fold_in(key, t), t)
            losses.append(float(info["loss"]))
        params = method.params(state)
    return expect, losses, params


@pytest.mark.parametrize("study,name", [(kc, n) for n in NEW] + [(ra, "sgd-m"), (ra, "adam"), (ka, "kld-wrm-puiu")])
def test_new_entry_builds_and_takes_two_finite_steps(tiny, study, name):
    """Two steps of the untuned grid point on a 64-8-10 digits MLP: finite losses and parameters;
    the first reported loss is the objective at the initial parameters, evaluated independently
    by ``Problem.loss`` (float32: a loss of ≈2.3 summed over ~10³ terms, rtol 1e-5)."""
    problem, batch = tiny
    expect, losses, params = _two_steps(study.METHODS[name], problem, batch)
    assert np.all(np.isfinite(losses)), losses
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree_util.tree_leaves(params))
    np.testing.assert_allclose(losses[0], expect, rtol=1e-5)


def test_registries_grids_and_defaults():
    """Every new method sits in both studies with the study's grid size; the quick defaults
    keep their old method lists, ``--full`` runs everything but the Puiu-settings variants
    (``kfac-puiu``: K-FAC at his CNN settings, for his model only; ``kld-wrm-puiu``: the
    autoencoder's SO-KLD-WRM at his ρ and momentum, a side study)."""
    for study, size in ((ka, 4), (kc, 3)):
        assert all(name in study.METHODS for name in NEW)
        assert {len(study.METHODS[m].grid) for m in study.METHODS} == {size}
        assert study.DEFAULT["methods"] == ["kfac", "kfac-sub", "foof", "sgd", "adam", "kfac-jax"]
        assert study.FULL["methods"] == [m for m in study.METHODS if m not in ("kfac-puiu", "kld-wrm-puiu")]
    assert list(ra.METHODS) == ["sgd-m", "adam", "kfac", "ekfac", "shampoo", "soap", "tnt", "mbf", "mfac"]
    assert {len(ra.METHODS[m].grid) for m in ra.METHODS} == {3}
    mid = {m: ra.METHODS[m].grid[1] for m in ra.METHODS}  # the authors' settings, used untuned
    assert mid["sgd-m"] == {"lr": 3e-3} and mid["adam"] == {"lr": 1e-4, "eps": 1e-4}
    assert mid["shampoo"] == {"lr": 3e-4, "epsilon": 3e-4}
    assert mid["tnt"]["lr"] == pytest.approx(0.1) and mid["tnt"]["damping"] == pytest.approx(0.1 * 1000**0.5, 1e-3)


def test_bench_contenders_are_the_study_builders():
    """The bench's family contenders carry the contract names and are built from the autoencoder
    study's registry (no second adapter); unknown names are refused."""
    assert bench_kfac.FAMILY == CONTENDERS
    problem = cp.autoencoder_problem()
    for name in CONTENDERS:
        assert name in ka.METHODS
        assert callable(bench_kfac.family_contender(name, problem, 20).step)
    with pytest.raises(ValueError, match="unknown contenders"):
        bench_kfac.main(["--methods", "ekfac,nope"])


def test_refusals_and_conv_partition():
    conv = cp.conv_classifier_problem()
    with pytest.raises(ValueError, match="kfac-tridiag refuses 'conv'"):
        cf.kfac_tridiag(conv, damping=0.1)
    assert "kfac-tridiag" in cf.REFUSES_CONV
    with pytest.raises(ValueError, match="needs a fixed learning rate"):
        cf.kld_wrm(conv, damping=0.1)
    with pytest.raises(ValueError, match="unknown hyper-parameters"):
        cf.ekfac(conv, damping=0.1, rnak=3)
    blocks = cf.mbf(conv, lr=0.1, momentum=0.9, damping=1.0).curvature.blocks  # kernel slices of 3×3 per channel pair
    assert blocks["layer00"].rows.shape == (2, 9) and blocks["layer01"].rows.shape == (17, 9)
    assert blocks["layer03"].rows.shape == (-(-(7 * 7 * 32 + 1) // 16), 16)  # dense: 16-row mini-blocks


def test_relu_problem_is_summed_pixel_bce():
    """The ReLU autoencoder's loss is Σ_pixels BCE averaged over images (numpy, by hand)."""
    problem = ra.relu_autoencoder_problem()
    assert [layer.activation for layer in problem.net.layers] == list(ra.ACTIVATIONS) and problem.l2 == 0.0
    x = np.random.default_rng(0).uniform(size=(3, 784)).astype(np.float32)
    with cm.float32_mode():
        params = problem.net.init(jax.random.PRNGKey(1))
        logits = np.asarray(problem.net.apply(params, jnp.asarray(x)), np.float64)
        loss = float(problem.loss(params, (jnp.asarray(x), jnp.asarray(x))))
    p = 1 / (1 + np.exp(-logits))
    expect = np.mean(-np.sum(x * np.log(p) + (1 - x) * np.log1p(-p), axis=1))
    np.testing.assert_allclose(loss, expect, rtol=1e-5)  # ≈ 550 from 784 float32 terms


def test_relu_comparison_at_equal_cpu_and_wall_time():
    """Equal CPU / wall time = the shortest run's; each method's loss at its last evaluation not
    after it; CPU seconds to the target at the first evaluation at or below it."""
    def run(walls, cpus, train):
        return {"wall_time": walls, "cpu_time": cpus, "step": [0, 5, 10], "train_loss": train,
                "test_loss": [t + 1 for t in train]}

    results = {"steps": 10, "batch_size": 1000, "n_train": 5000, "summary": {"target_train_loss": 5.0},
               "runs": {"sgd-m": [run([0.0, 1.0, 2.0], [0.0, 1.5, 3.0], [9.0, 8.0, 7.0])],
                        "tnt": [run([0.0, 3.0, 6.0], [0.0, 2.0, 4.0], [9.0, 5.0, 4.0])]}}
    comp = ra.comparison(results)
    assert comp["wall_s"] == 2.0 and comp["cpu_s"] == 3.0 and comp["epochs"] == 2.0
    tnt, sgd = comp["methods"]["tnt"], comp["methods"]["sgd-m"]
    assert tnt["train_loss_at_wall"] == 9.0 and tnt["train_loss_at_cpu"] == 5.0 and tnt["train_loss"] == 4.0
    assert sgd["test_loss_at_wall"] == 8.0 and sgd["test_loss_at_cpu"] == 8.0
    assert tnt["vs_sgd"] == pytest.approx(3.0) and tnt["cpu_vs_sgd"] == pytest.approx(4 / 3)
    assert tnt["cpu_to_target"] == 2.0 and sgd["cpu_to_target"] is None
    assert "52.40 / 56.98" in ra.comparison_table(comp)


@pytest.mark.slow
def test_relu_autoencoder_short_study(tmp_path):
    """The study end to end on 1000 MNIST images: SGD-m and TNT (authors' settings) stay finite,
    TNT's loss falls below SGD-m's after 4 steps (a curvature method's first steps on this net),
    and the table carries the authors' numbers."""
    config = dict(ra.DEFAULT, methods=["sgd-m", "tnt"], steps=4, train_size=1000, eval_size=100, eval_every=2)
    out = ra.run_study(config, tmp_path, progress=False)
    rows = out["comparison"]["methods"]
    assert all(np.isfinite(r["train_loss"]) for r in rows.values())
    assert rows["tnt"]["train_loss"] < rows["sgd-m"]["train_loss"]
    assert "54.32 / 66.56" in out["table"] and (tmp_path / "results.json").exists()
