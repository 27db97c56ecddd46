"""Physical (nearest-density-matrix) shadow estimate: Smolin–Gambetta–Smith by hand, a
brute-force scipy minimisation, non-expansiveness, and QMHL training from few shots."""

import jax
import networkx as nx
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import qgeom  # noqa: F401
from qgeom.optimize import adam, fit
from qgeom.quantum import (
    QHBM,
    Parity,
    check_density_matrix,
    entropy,
    gibbs_state,
    hardware_efficient,
    measure_shadows,
    qmhl_loss,
    tfim,
)
from qgeom.quantum.shadows import nearest_density_matrix


def sgs_loop(mu):
    """Smolin, Gambetta & Smith (2012), their algorithm verbatim on a unit-trace spectrum."""
    mu = np.sort(np.asarray(mu, dtype=float))[::-1]
    lam, i, a = np.zeros_like(mu), len(mu), 0.0
    while mu[i - 1] + a / i < 0:
        a += mu[i - 1]
        i -= 1
    lam[:i] = mu[:i] + a / i
    return lam


def in_basis(eigenvalues, seed):
    u = scipy.stats.unitary_group.rvs(len(eigenvalues), random_state=seed)
    return u @ np.diag(eigenvalues) @ u.conj().T, u


@pytest.mark.parametrize(("mu", "expected"), [
    ([0.6, 0.5, 0.1, -0.2], [0.6 - 0.2 / 3, 0.5 - 0.2 / 3, 0.1 - 0.2 / 3, 0.0]),  # one eigenvalue dropped
    ([0.7, 0.45, 0.05, -0.2], [0.625, 0.375, 0.0, 0.0]),  # two dropped: 0.05 − 0.2/3 < 0
    ([0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]),  # already a density matrix: unchanged
])
def test_hand_made_spectra_match_smolin_gambetta_smith(mu, expected):
    np.testing.assert_allclose(sgs_loop(mu), expected, atol=1e-15)
    a, u = in_basis(mu, seed=3)
    np.testing.assert_allclose(nearest_density_matrix(a), u @ np.diag(expected) @ u.conj().T, atol=1e-12)


def test_random_unit_trace_matrices_match_the_loop():
    rng = np.random.default_rng(0)
    for seed, d in enumerate((3, 3, 3, 8, 8, 8, 8, 8)):
        mu = rng.normal(size=d)
        mu = mu - mu.mean() + 1 / d  # unit trace, typically several negative eigenvalues
        a, u = in_basis(mu, seed)
        lam = sgs_loop(mu)
        order = np.argsort(mu)[::-1]
        want = u[:, order] @ np.diag(lam) @ u[:, order].conj().T
        np.testing.assert_allclose(nearest_density_matrix(a), want, atol=1e-11)


def test_projection_is_the_closest_density_matrix_brute_force():
    # scipy minimises ‖ρ − a‖_F over ρ = BB†/Tr BB† (every density matrix), several starts
    rng = np.random.default_rng(1)
    d = 4
    x = rng.normal(size=(d, d)) + 1j * rng.normal(size=(d, d))
    for a in ((x + x.conj().T) / 4 + np.eye(d) / d * (1 - np.trace((x + x.conj().T) / 4).real),  # unit trace
              (x + x.conj().T) / 3):  # any Hermitian matrix
        proj = np.asarray(nearest_density_matrix(a))
        check_density_matrix(proj, "projection")

        def objective(z):
            b = (z[: d * d] + 1j * z[d * d:]).reshape(d, d)
            rho = b @ b.conj().T
            return np.linalg.norm(rho / np.trace(rho).real - a) ** 2

        best = min((scipy.optimize.minimize(objective, rng.normal(size=2 * d * d), method="BFGS",
                                            options={"gtol": 1e-10}) for _ in range(4)), key=lambda r: r.fun)
        ours = np.linalg.norm(proj - a) ** 2
        assert ours <= best.fun + 1e-9  # nothing the brute force found is closer
        assert best.fun - ours < 1e-6  # and it finds the same distance


def test_physical_shadow_estimate_is_a_closer_density_matrix():
    # σ is a density matrix, so projecting σ̂ onto that convex set cannot move it away from σ
    sigma = np.asarray(gibbs_state(tfim(nx.cycle_graph(3), 1.0, 1.0), 1.0))
    for seed, shots in ((0, 50), (1, 500), (2, 5000)):
        data = measure_shadows(sigma, jax.random.PRNGKey(seed), shots)
        raw, phys = np.asarray(data.unbiased_estimate()), np.asarray(data.physical_estimate())
        assert np.linalg.eigvalsh(raw).min() < -1e-3  # the raw estimate is not PSD here
        check_density_matrix(phys, "physical estimate")
        assert np.linalg.norm(phys - sigma) <= np.linalg.norm(raw - sigma) + 1e-12


def test_physical_estimate_keeps_few_shot_qmhl_bounded():
    # n = 3 TFIM ring at β = 1, 100 shots (data seed 0), Adam 0.05 × 200 steps from one start.
    # Observed: D(σ‖ρ) = 8.90 from the raw estimate (its loss ran to −30, below any D ≥ 0),
    # 1.36 from the physical one; asserted: physical < raw / 3.
    sigma = np.asarray(gibbs_state(tfim(nx.cycle_graph(3), 1.0, 1.0), 1.0))
    model = QHBM(Parity(3, 2), hardware_efficient(3, 2))
    data = measure_shadows(sigma, jax.random.PRNGKey(0), 100)
    exact = jax.jit(qmhl_loss(model, sigma))
    s = float(entropy(sigma))
    start = model.init(jax.random.PRNGKey(0))
    final = {}
    for estimator in ("unbiased", "physical"):
        res = fit(qmhl_loss(model, data, estimator=estimator), start, adam(0.05), 200)
        final[estimator] = (float(exact(res.params)) - s, res.final_loss)
    raw_d, raw_loss = final["unbiased"]
    phys_d, phys_loss = final["physical"]
    assert raw_loss < 0  # −Tr(σ̂ log ρ) ran below zero: the unbounded direction
    assert phys_loss >= float(entropy(data.physical_estimate())) - 1e-9  # L ≥ S(σ̃): bounded below
    assert phys_d < raw_d / 3


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="square"):
        nearest_density_matrix(np.ones((2, 3)))
    with pytest.raises(ValueError, match="Hermitian"):
        nearest_density_matrix(np.array([[0.5, 1.0], [0.0, 0.5]]))
    with pytest.raises(ValueError, match="non-finite"):
        nearest_density_matrix(np.array([[np.nan, 0], [0, 1.0]]))
    sigma = np.eye(4) / 4
    model = QHBM(Parity(2, 2), hardware_efficient(2, 1))
    with pytest.raises(ValueError, match="estimator"):
        qmhl_loss(model, measure_shadows(sigma, jax.random.PRNGKey(0), 10), estimator="mle")
