"""Nyström-PCG (qgeom.spectral.nystrom_pcg) against scipy's CG, dense solves and the paper's bounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse.linalg

import qgeom  # noqa: F401  (enables x64)
from qgeom.spectral import nystrom_pcg, nystrom_sketch, pcg
from qgeom.spectral.pcg import _orthonormalize

EPS = np.finfo(np.float64).eps
N = 80
MU = 1e-4


def _matrix(eigs, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigs), len(eigs))))
    return (q * np.asarray(eigs)) @ q.T


@pytest.fixture(scope="module")
def decaying():
    """λ_i = i⁻³ (i = 1..80) and μ = 1e-4: κ(A + μI) ≈ 1e4, effective dimension ≈ 13."""
    eigs = np.arange(1, N + 1, dtype=float) ** -3.0
    a = jnp.asarray(_matrix(eigs))
    b = jnp.asarray(np.random.default_rng(1).standard_normal(N))
    return a, eigs, b, jax.tree_util.Partial(jnp.matmul, a)


def test_same_solution_as_scipy_cg(decaying):
    """Both solve to relative residual 1e-10; then ‖x − x*‖/‖x*‖ ≤ κ(A + μI)·1e-10 for each,
    so they agree to 2κ·1e-10 (κ computed here by eigh)."""
    a, eigs, b, mv = decaying
    x, info = nystrom_pcg(mv, b, MU, 20, jax.random.PRNGKey(0), tol=1e-10)
    dense = np.asarray(a) + MU * np.eye(N)
    ref, code = scipy.sparse.linalg.cg(dense, np.asarray(b), rtol=1e-10, maxiter=10 * N)
    assert code == 0 and bool(info["converged"])
    kappa = np.linalg.cond(dense)
    np.testing.assert_allclose(x, ref, atol=2 * kappa * 1e-10 * np.linalg.norm(ref))
    np.testing.assert_allclose(x, np.linalg.solve(dense, np.asarray(b)), atol=kappa * 1e-10 * np.linalg.norm(ref) * 2)


def test_preconditioned_condition_number_bound(decaying):
    """Frangella–Tropp–Udell Prop. 5.3: κ(P^{-1/2}(A + μI)P^{-1/2}) ≤ (λ̂_ℓ + μ + ‖A − Â‖)/μ, checked
    with dense eigh of the preconditioned matrix (P⁻¹ applied to the identity's columns);
    CG's classical bound then caps the iterations: k ≤ ⌈½√κ ln(2/tol)⌉, while plain CG needs
    far more (κ ≈ 1e4)."""
    a, eigs, b, mv = decaying
    x, info = nystrom_pcg(mv, b, MU, 20, jax.random.PRNGKey(2), tol=1e-8)
    pre = info["preconditioner"]
    u, lam = np.asarray(pre.U), np.asarray(pre.lam)
    err = np.linalg.norm(np.asarray(a) - (u * lam) @ u.T, 2)
    pinv = np.asarray(jax.vmap(pre.apply, in_axes=1, out_axes=1)(jnp.eye(N)))
    w, v = np.linalg.eigh(pinv)
    half = (v * np.sqrt(w)) @ v.T  # P^{-1/2}
    ev = np.linalg.eigvalsh(half @ (np.asarray(a) + MU * np.eye(N)) @ half)
    kappa = ev[-1] / ev[0]
    bound = (lam[-1] + MU + err) / MU
    assert 1 <= kappa <= bound * (1 + 1e-8)
    assert int(info["iterations"]) <= np.ceil(0.5 * np.sqrt(bound) * np.log(2 / 1e-8))
    _, plain = pcg(lambda v: mv(v) + MU * v, b, tol=1e-8, maxiter=10 * N)
    assert int(info["iterations"]) < int(plain["iterations"])


def test_sketch_equals_dense_nystrom_formula(decaying):
    """The matmul-only factorization (CholQR2 test matrix, Gram/eigh core) against the dense
    definition Â = (AΩ)(ΩᵀAΩ)⁻¹(AΩ)ᵀ with the same Ω (numpy, float64): U orthonormal on the
    kept columns and UΛUᵀ = Â up to the shift ν = √n·eps·‖Y‖_F (error ≲ 10ν). ℓ = 12 keeps
    λ_ℓ(A) ≈ 6e-4 ≫ ν ≈ 1e-14, so every column is kept; U = FVΣ⁻¹ is orthonormal to
    eps·σ₁²/σ_ℓ² ≈ 4e-13."""
    a, eigs, _, mv = decaying
    key, ell = jax.random.PRNGKey(11), 12
    u, lam = map(np.asarray, nystrom_sketch(mv, N, ell, key, jnp.float64))
    omega = np.asarray(_orthonormalize(jax.random.normal(key, (N, ell), jnp.float64)))
    np.testing.assert_allclose(omega.T @ omega, np.eye(ell), atol=10 * EPS * ell)
    y = np.asarray(a) @ omega
    dense = y @ np.linalg.solve(omega.T @ y, y.T)
    nu = np.sqrt(N) * EPS * np.linalg.norm(y)
    assert np.all(lam > 0) and np.all(np.diff(lam) <= 0)
    np.testing.assert_allclose(u.T @ u, np.eye(ell), atol=1e-10)
    np.testing.assert_allclose((u * lam) @ u.T, dense, atol=10 * nu)


@pytest.mark.slow
def test_exact_for_low_rank_operators():
    """A of rank 5 sketched with ℓ = 8: Â = A up to the shift ν = √n·eps·‖Y‖ (error ≲ 10ν),
    so P⁻¹(A + μI) = μ·I on range(A)ᗮ and (λ̂_ℓ + μ)·I on range(A), with λ̂_ℓ ≈ 0: one CG step."""
    eigs = np.zeros(N)
    eigs[:5] = [5.0, 3.0, 2.0, 1.0, 0.5]
    a = jnp.asarray(_matrix(eigs, seed=3))
    b = jnp.asarray(np.random.default_rng(5).standard_normal(N))
    x, info = nystrom_pcg(lambda v: a @ v, b, 1e-2, 8, jax.random.PRNGKey(4), tol=1e-10)
    u, lam = np.asarray(info["preconditioner"].U), np.asarray(info["preconditioner"].lam)
    nu = np.sqrt(N) * EPS * 5.0 * np.sqrt(8)
    np.testing.assert_allclose((u * lam) @ u.T, a, atol=10 * nu)
    assert int(info["iterations"]) <= 2


def test_adaptive_rank_doubles_until_ratio_test(decaying):
    """Start at ℓ = 8 and double while λ̂_ℓ/μ > 10. Â ≼ A gives λ̂_j ≤ λ_j(A), so a doubling past
    ℓ/2 needs λ_{ℓ/2}(A) > 10μ: ℓ/2 ≤ #{i: λ_i > 10μ} = 9 here. The returned ℓ passes the test
    and the solve converges."""
    a, eigs, b, mv = decaying
    x, info = nystrom_pcg(mv, b, MU, 8, jax.random.PRNGKey(6), tol=1e-8, adaptive=True, rank_tol=10.0)
    ell = int(info["rank"])
    assert ell in (8, 16) and float(info["lambda_l"]) <= 10.0 * MU
    assert ell == 8 or ell // 2 <= np.sum(eigs > 10.0 * MU)
    assert bool(info["converged"])


@pytest.mark.slow
def test_cholesky_fallback_on_indefinite_noise():
    """A PSD matrix plus an eigenvalue −1e-6 (a Hessian slightly indefinite): Ωᵀ(AΩ) may fail
    Cholesky; the shifted fallback keeps P finite and the solve with μ = 1e-2 ≫ 1e-6 exact
    (κ(A + μI) ≤ 600, tolerance 600·1e-10·2)."""
    eigs = np.concatenate([[5.0, 2.0, 1.0], np.zeros(N - 4), [-1e-6]])
    a = jnp.asarray(_matrix(eigs, seed=7))
    b = jnp.asarray(np.random.default_rng(8).standard_normal(N))
    x, info = nystrom_pcg(lambda v: a @ v, b, 1e-2, N, jax.random.PRNGKey(9), tol=1e-10)
    assert np.all(np.isfinite(np.asarray(info["preconditioner"].lam)))
    ref = np.linalg.solve(np.asarray(a) + 1e-2 * np.eye(N), np.asarray(b))
    np.testing.assert_allclose(x, ref, atol=2 * 600 * 1e-10 * np.linalg.norm(ref))


@pytest.mark.slow
def test_jit_and_warm_start(decaying):
    """Under jit with a fixed rank and a warm start: from x0 = 0 the dense solution (to
    κ·1e-10), from x0 = the solution no iteration at all."""
    a, eigs, b, mv = decaying
    solve = jax.jit(lambda rhs, x0: nystrom_pcg(mv, rhs, MU, 20, jax.random.PRNGKey(0), tol=1e-10, x0=x0)[:2])
    dense = np.asarray(a) + MU * np.eye(N)
    exact = np.linalg.solve(dense, np.asarray(b))
    x, _ = solve(b, jnp.zeros(N))
    np.testing.assert_allclose(x, exact, atol=2 * np.linalg.cond(dense) * 1e-10 * np.linalg.norm(exact))
    _, info = solve(b, jnp.asarray(exact))
    assert int(info["iterations"]) == 0


def test_bad_input_raises():
    mv = jax.tree_util.Partial(jnp.multiply, 2.0)
    b = jnp.ones(4)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="mu"):
        nystrom_pcg(mv, b, 0.0, 2, key)
    with pytest.raises(ValueError, match="rank"):
        nystrom_pcg(mv, b, 1.0, 5, key)
    with pytest.raises(ValueError, match="NaN"):
        nystrom_pcg(mv, b.at[0].set(jnp.nan), 1.0, 2, key)
    with pytest.raises(ValueError, match="non-finite"):
        nystrom_pcg(lambda v: v * jnp.inf, b, 1.0, 2, key)
    with pytest.raises(ValueError, match="max_rank"):
        nystrom_pcg(mv, b, 1.0, 2, key, adaptive=True, max_rank=1)
