"""Closed-form Gaussian Fisher against the Hessian of the KL divergence (autodiff) and dense solves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import qgeom  # noqa: F401  (float64)
from qgeom.metrics.gaussian import GaussianFisher, GaussianFisherDiag, gaussian_fisher

N = 3


@pytest.fixture(scope="module")
def gauss():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(N, N))
    cov = a @ a.T / N + 0.5 * np.eye(N)  # condition number ~ 10
    return jnp.asarray(rng.normal(size=N)), jnp.asarray(cov)


def kl(m0, c0, m1, c1):
    """KL(N(m0, c0) ‖ N(m1, c1)) in closed form, c1 symmetrized (the metric's coordinates)."""
    c1 = 0.5 * (c1 + c1.T)
    p1 = jnp.linalg.inv(c1)
    d = m1 - m0
    return 0.5 * (jnp.trace(p1 @ c0) + d @ p1 @ d - m0.shape[0] + jnp.linalg.slogdet(c1)[1] - jnp.linalg.slogdet(c0)[1])


def test_dense_is_kl_hessian(gauss):
    mean, cov = gauss
    params = {"cov": cov, "mean": mean}
    flat, unravel = ravel_pytree(params)
    hess = jax.jit(jax.hessian(lambda f: kl(mean, cov, unravel(f)["mean"], unravel(f)["cov"])))(flat)
    g = gaussian_fisher(mean, cov).dense()
    # both O(‖Σ⁻¹‖²) ~ 10 in size; float64 rounding through an inverse of cond ~ 10
    np.testing.assert_allclose(g, hess, rtol=0, atol=1e-12 * float(jnp.abs(hess).max()) * 10)


def test_diag_dense_is_kl_hessian(gauss):
    mean, cov = gauss
    var = jnp.diagonal(cov)
    flat, unravel = ravel_pytree({"mean": mean, "var": var})
    hess = jax.jit(jax.hessian(lambda f: kl(mean, jnp.diag(var), unravel(f)["mean"], jnp.diag(unravel(f)["var"]))))(flat)
    np.testing.assert_allclose(gaussian_fisher(mean, var).dense(), hess, rtol=1e-12, atol=1e-14)


def test_mv_and_solve_match_dense(gauss):
    mean, cov = gauss
    fm = gaussian_fisher(mean, cov)
    rng = np.random.default_rng(1)
    v = {"cov": jnp.asarray(rng.normal(size=(N, N))), "mean": jnp.asarray(rng.normal(size=N))}
    flat, unravel = ravel_pytree(v)
    g = np.asarray(fm.dense())
    np.testing.assert_allclose(ravel_pytree(fm.mv(v))[0], g @ flat, rtol=1e-12, atol=1e-12)
    lam = 0.3  # cond(G + λI) ≤ (‖G‖ + λ)/λ ~ 50: 1e-10 is 1e6 ε of headroom
    np.testing.assert_allclose(ravel_pytree(fm.solve(v, lam))[0], np.linalg.solve(g + lam * np.eye(len(flat)), flat),
                               rtol=1e-10, atol=1e-12)
    # λ = 0: pseudo-inverse (antisymmetric directions are the null space)
    np.testing.assert_allclose(ravel_pytree(fm.solve(v, 0.0))[0], np.linalg.pinv(g, rcond=1e-10) @ flat,
                               rtol=1e-9, atol=1e-10)
    d = gaussian_fisher(mean, jnp.diagonal(cov))
    vd = {"mean": v["mean"], "var": v["mean"][::-1]}
    fd, _ = ravel_pytree(vd)
    gd = np.asarray(d.dense())
    np.testing.assert_allclose(ravel_pytree(d.solve(vd, lam))[0], np.linalg.solve(gd + lam * np.eye(2 * N), fd), rtol=1e-12)
    np.testing.assert_allclose(ravel_pytree(d.mv(vd))[0], gd @ fd, rtol=1e-12)


def test_natural_gradient_closed_form(gauss):
    """F⁻¹∇ = (Σ∇_μ, 2Σ∇_ΣΣ) for a symmetric ∇_Σ."""
    mean, cov = gauss
    rng = np.random.default_rng(2)
    gs = rng.normal(size=(N, N))
    grad = {"cov": jnp.asarray(gs + gs.T), "mean": jnp.asarray(rng.normal(size=N))}
    nat = gaussian_fisher(mean, cov).solve(grad, 0.0)
    np.testing.assert_allclose(nat["mean"], cov @ grad["mean"], rtol=1e-10)
    np.testing.assert_allclose(nat["cov"], 2 * cov @ grad["cov"] @ cov, rtol=1e-10, atol=1e-12)


def test_metric_is_a_pytree(gauss):
    mean, cov = gauss
    leaves = jax.tree_util.tree_leaves(gaussian_fisher(mean, cov))
    assert len(leaves) == 2
    out = jax.jit(lambda m: m.dense())(GaussianFisher(mean, cov))
    assert out.shape == (N * N + N, N * N + N)
    assert isinstance(gaussian_fisher(mean, jnp.ones(N)), GaussianFisherDiag)


@pytest.mark.parametrize(
    "cov, match",
    [
        (np.diag([1.0, -1.0, 1.0]), "positive definite"),
        (np.array([[1.0, 2.0, 0], [0, 1.0, 0], [0, 0, 1.0]]), "symmetric"),
        (np.full((N, N), np.nan), "non-finite"),
        (np.eye(N + 1), "shape"),
        (np.array([1.0, 0.0, 1.0]), "positive"),
    ],
)
def test_bad_covariance_is_refused(cov, match):
    with pytest.raises(ValueError, match=match):
        gaussian_fisher(jnp.zeros(N), jnp.asarray(cov))
