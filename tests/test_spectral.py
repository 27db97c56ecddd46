"""qgeom.spectral Lanczos / SLQ against matfree's tridiagonalization and dense eigh."""

import jax
import jax.numpy as jnp
import matfree.decomp
import numpy as np
import pytest
import scipy.linalg

import qgeom  # noqa: F401  (enables x64)
from qgeom.metrics import KroneckerFactored
from qgeom.spectral import (
    extremal_eigenvalues,
    flat_operator,
    lanczos,
    slq,
    spectral_density,
    trace_estimate,
    tridiagonal,
)

EPS = np.finfo(np.float64).eps
N = 48


def _matrix(eigs, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigs), len(eigs))))
    return (q * np.asarray(eigs)) @ q.T


@pytest.fixture(scope="module")
def spiked():
    """Bulk in [0.5, 1.5] plus three outliers: κ = 8, eigenvalues distinct, ‖A‖ = 4."""
    eigs = np.concatenate([np.linspace(0.5, 1.5, N - 3), [2.5, 3.2, 4.0]])
    a = jnp.asarray(_matrix(eigs))
    return a, eigs, jax.tree_util.Partial(jnp.matmul, a)  # one mv object: compiled once per shape


def test_lanczos_equals_matfree_tridiag_sym(spiked):
    """Same start vector, both with full reorthogonalization: the same T (ours under jit). The Krylov basis
    of 10 steps on 48 distinct eigenvalues in [0.5, 4] is well conditioned, so T's entries are
    forward-stable to O(m·eps·‖A‖) rounding; 1e3·eps·‖A‖ leaves a wide margin."""
    a, _, mv = spiked
    v0 = jnp.asarray(np.random.default_rng(1).standard_normal(N))
    alphas, betas = jax.jit(lambda v: lanczos(mv, v, 10))(v0)  # also traceable inside jit
    ref = matfree.decomp.tridiag_sym(10, reortho="full", materialize=True)(lambda v: a @ v, v0)
    t = np.asarray(ref.J_small)
    np.testing.assert_allclose(alphas, np.diag(t), atol=1e3 * EPS * 4.0)
    np.testing.assert_allclose(betas, np.diag(t, 1), atol=1e3 * EPS * 4.0)


def test_gauss_quadrature_reproduces_quadratic_forms(spiked):
    """vᵀ f(A) v / ‖v‖² = Σ τ_j f(θ_j): exact for f = t^k, k ≤ 2m − 1 (relative rounding ≤
    k·n·eps on a spectrum in [0.5, 4]); for exp and log at m = 30 the Gauss-rule error is below
    ρ^{−2m} ≈ 1e-19 (log's singularity at 0 gives the Bernstein ellipse ρ ≈ 2.1), i.e. rounding."""
    a, eigs, mv = spiked
    v = np.random.default_rng(2).standard_normal(N)
    m = 8
    alphas, betas = lanczos(mv, jnp.asarray(v), m)
    theta, s = np.linalg.eigh(np.asarray(tridiagonal(alphas, betas)))
    tau = s[0] ** 2
    an = np.asarray(a)
    for k in (1, 2, 5, 2 * m - 1):
        dense = v @ np.linalg.matrix_power(an, k) @ v / (v @ v)
        np.testing.assert_allclose(tau @ theta**k, dense, rtol=k * N * EPS * 10)
    alphas, betas = lanczos(mv, jnp.asarray(v), 30)
    theta, s = np.linalg.eigh(np.asarray(tridiagonal(alphas, betas)))
    for f, fa in ((np.exp, scipy.linalg.expm(an)), (np.log, scipy.linalg.logm(an).real)):
        np.testing.assert_allclose(s[0] ** 2 @ f(theta), v @ fa @ v / (v @ v), rtol=1e3 * EPS * 8)


def test_extremal_eigenvalues_and_residual_bounds(spiked):
    """Interlacing: θ_min ≥ λ_min, θ_max ≤ λ_max (up to rounding); the residual bound holds
    against dense eigh; with 30 steps the outliers are converged (bounds far below the gap)."""
    a, eigs, mv = spiked
    v0 = jnp.asarray(np.random.default_rng(3).standard_normal(N))
    ext = extremal_eigenvalues(mv, v0, 30, k=2)
    lam = np.linalg.eigvalsh(np.asarray(a))
    tiny = 1e3 * EPS * 4.0
    assert ext.largest[0] <= lam[-1] + tiny and ext.smallest[0] >= lam[0] - tiny
    for theta, r in zip(np.concatenate([ext.largest, ext.smallest]),
                        np.concatenate([ext.largest_bound, ext.smallest_bound])):
        assert np.min(np.abs(lam - theta)) <= r + tiny
    assert np.all(np.abs(np.asarray(ext.largest) - [4.0, 3.2]) <= np.asarray(ext.largest_bound) + tiny)
    assert float(ext.largest_bound[0]) < 1e-6


@pytest.mark.slow
def test_invariant_subspace_restart():
    """A with 3 distinct eigenvalues: the Krylov space is invariant after 3 steps. Lanczos
    continues from a fresh orthogonal vector with β = 0, so the later blocks' Ritz values carry
    zero weight and the quadrature stays exact; without the restart the basis would collapse."""
    eigs = np.repeat([1.0, 2.0, 5.0], 10)
    a = jnp.asarray(_matrix(eigs, seed=4))
    v = np.random.default_rng(5).standard_normal(30)
    alphas, betas = lanczos(lambda x: a @ x, jnp.asarray(v), 8)
    assert abs(float(betas[2])) == 0.0
    theta, s = np.linalg.eigh(np.asarray(tridiagonal(alphas, betas)))
    tau = s[0] ** 2
    for k in (1, 3, 7):
        ref = v @ np.linalg.matrix_power(np.asarray(a), k) @ v / (v @ v)
        np.testing.assert_allclose(tau @ theta**k, ref, rtol=1e-12)
    seen = tau > 1e3 * EPS  # the first block's Ritz values are the three eigenvalues
    np.testing.assert_allclose(np.sort(theta[seen]), [1.0, 2.0, 5.0], atol=1e3 * EPS * 5)
    np.testing.assert_allclose(np.sum(tau[seen]), 1.0, atol=1e3 * EPS)


@pytest.fixture(scope="module")
def slq_run(spiked):
    a, _, mv = spiked
    key = jax.random.PRNGKey(7)
    nodes, weights = slq(mv, N, key, 16, 12)
    probes = np.asarray(jax.random.rademacher(key, (16, N), jnp.float64))
    return nodes, weights, probes


def test_slq_traces_match_hutchinson_and_dense(spiked, slq_run):
    """Per probe Σ τ θᵏ = vᵀAᵏv/n exactly (k ≤ 23), so SLQ's tr Aᵏ equals Hutchinson's with the
    same Rademacher probes; and it lies within 5 Monte-Carlo standard errors of the dense trace
    (Rademacher variance per probe: 2(‖Aᵏ‖_F² − Σ (Aᵏ)_ii²))."""
    a, eigs, mv = spiked
    nodes, weights, probes = slq_run
    assert nodes.shape == weights.shape == (16, 12)
    np.testing.assert_allclose(np.sum(weights, axis=1), 1.0, rtol=100 * EPS)
    an = np.asarray(a)
    for k in (1, 2, 4):
        ak = np.linalg.matrix_power(an, k)
        est = float(trace_estimate(lambda t: t**k, nodes, weights, N))
        hutch = np.mean(np.einsum("pi,ij,pj->p", probes, ak, probes))
        np.testing.assert_allclose(est, hutch, rtol=k * N * EPS * 100)
        se = np.sqrt(2 * (np.sum(ak**2) - np.sum(np.diag(ak) ** 2)) / 16)
        assert abs(est - np.sum(eigs**k)) <= 5 * se


def test_density_moments_equal_trace_moments(slq_run):
    """∫ φ = 1, ∫ t φ = mean Σ τθ, ∫ t² φ = mean Σ τθ² + σ² (Gaussian broadening adds σ²);
    the trapezoid rule on a grid 12σ beyond the nodes with step σ/20 is exact to ~1e-12."""
    nodes, weights, _ = slq_run
    sigma = 0.05
    grid = np.linspace(float(nodes.min()) - 12 * sigma, float(nodes.max()) + 12 * sigma, 4001)
    phi = np.asarray(spectral_density(nodes, weights, grid, sigma))
    m1 = np.mean(np.sum(weights * nodes, 1))
    m2 = np.mean(np.sum(weights * nodes**2, 1))
    np.testing.assert_allclose(np.trapezoid(phi, grid), 1.0, rtol=1e-10)
    np.testing.assert_allclose(np.trapezoid(grid * phi, grid), m1, rtol=1e-10)
    np.testing.assert_allclose(np.trapezoid(grid**2 * phi, grid), m2 + sigma**2, rtol=1e-10)


def test_metric_operator():
    """flat_operator on a qgeom metric (K-FAC's A ⊗ G): extremal Ritz values at m = n equal
    dense eigh of ``dense()`` (eigenvalues of a 12×12 matrix: 1e3·eps·‖A‖)."""
    rng = np.random.default_rng(8)
    fa, fg = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
    metric = KroneckerFactored(jnp.asarray(fa @ fa.T + 0.1 * np.eye(4)), jnp.asarray(fg @ fg.T + 0.1 * np.eye(3)))
    mv, dim = flat_operator(metric, jnp.zeros((4, 3)))
    lam = np.linalg.eigvalsh(np.asarray(metric.dense()))
    ext = extremal_eigenvalues(mv, jnp.ones(dim), dim)
    np.testing.assert_allclose([ext.largest[0], ext.smallest[0]], [lam[-1], lam[0]], atol=1e3 * EPS * lam[-1])


@pytest.mark.slow
def test_hessian_vector_operator():
    """flat_operator on a pytree Hessian-vector product: extremal Ritz values at m = n equal
    dense eigh of ``jax.hessian`` (7×7: 1e3·eps·max|λ|)."""
    rng = np.random.default_rng(9)
    params = {"w": jnp.asarray(rng.standard_normal(5)), "b": jnp.asarray(rng.standard_normal(2))}

    def f(p):
        return jnp.sum(jnp.cos(p["w"])) * jnp.sum(p["b"] ** 2) + jnp.sum(p["w"] ** 4)

    def hvp(v):
        return jax.jvp(jax.grad(f), (params,), (v,))[1]

    mv, dim = flat_operator(hvp, params)
    h = jax.hessian(lambda x: f(jax.flatten_util.ravel_pytree(params)[1](x)))(
        jax.flatten_util.ravel_pytree(params)[0])
    lam = np.linalg.eigvalsh(np.asarray(h))
    ext = extremal_eigenvalues(mv, jnp.ones(dim), dim)
    scale = np.max(np.abs(lam))
    np.testing.assert_allclose([ext.largest[0], ext.smallest[0]], [lam[-1], lam[0]], atol=1e3 * EPS * scale)


def test_bad_input_raises():
    a = jnp.eye(4)
    with pytest.raises(ValueError, match="num_steps"):
        lanczos(lambda v: a @ v, jnp.ones(4), 5)
    with pytest.raises(ValueError, match="nonzero"):
        lanczos(lambda v: a @ v, jnp.zeros(4), 2)
    with pytest.raises(ValueError, match="1-D"):
        lanczos(lambda v: a @ v, jnp.ones((2, 2)), 2)
    with pytest.raises(ValueError, match="non-finite"):
        lanczos(lambda v: jnp.full_like(v, jnp.nan), jnp.ones(4), 2)
    with pytest.raises(ValueError, match="num_probes"):
        slq(lambda v: v, 4, jax.random.PRNGKey(0), 0, 2)
    with pytest.raises(ValueError, match="k must"):
        extremal_eigenvalues(lambda v: v, jnp.ones(4), 2, k=3)
    with pytest.raises(ValueError, match="sigma"):
        spectral_density(jnp.ones((1, 2)), jnp.ones((1, 2)) / 2, jnp.linspace(0, 1, 5), 0.0)
