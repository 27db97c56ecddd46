"""Preconditioned conjugate gradients and the randomized Nyström preconditioner.

Frangella, Tropp & Udell, "Randomized Nyström preconditioning", SIAM J. Matrix Anal. Appl.
44(2):718–752 (2023), solving (A + μI)x = b for a PSD A known by mat-vecs:

* sketch (their Alg. 2.1, the stable single-pass Nyström of Tropp et al. 2017): Ω = orth(randn(n, ℓ)),
  Y = AΩ (ℓ mat-vecs, vmapped over one linearization of the operator), shift
  ν = √n · eps · ‖Y‖_F, Y_ν = Y + νΩ, C = chol(Ωᵀ Y_ν) (if that Cholesky fails, Ωᵀ Y_ν is
  shifted by |λ_min| + ν and Y_ν with it), F = Y_ν C⁻ᵀ = U Σ Vᵀ, Λ = max(0, Σ² − ν):
  Â = U Λ Uᵀ = (AΩ)(ΩᵀAΩ)⁺(AΩ)ᵀ. All n-long work is matrix products: orth is Cholesky-QR
  applied twice (CholQR2, Fukaya et al. 2014; exact to rounding for a Gaussian Ω, κ ≈ 1), and
  the SVD of F comes from the ℓ × ℓ Gram matrix, eigh(FᵀF) = V Σ² Vᵀ, U = F V Σ⁻¹, with the
  columns whose σ² ≤ ν (Λ = 0, errors of order eps·σ₁² ≤ ν) set to zero. Householder QR and
  the SVD of the n × ℓ blocks took 20 of the sketch's 32 CPU-s at n = 2.8M, ℓ = 64;
* preconditioner (their eq. 5.3):
  P⁻¹x = (λ̂_ℓ + μ) U (Λ + μI)⁻¹ Uᵀx + (x − UUᵀx), λ̂_ℓ the smallest kept eigenvalue;
  κ(P^{-1/2}(A + μI)P^{-1/2}) ≤ (λ̂_ℓ + μ + ‖A − Â‖)/μ (their Prop. 5.3), a constant once
  ℓ ≳ the effective dimension d_eff(μ) = tr A(A + μI)⁻¹;
* adaptive rank (their §5.4.2): double ℓ — keeping the sketch already paid for — until
  λ̂_ℓ/μ ≤ ``rank_tol`` (the cheap a-posteriori proxy for κ) or ℓ reaches ``max_rank``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qgeom.spectral.lanczos import _concrete, _hashable


class NystromPreconditioner(NamedTuple):
    """Â = U diag(lam) Uᵀ (U: n × ℓ orthonormal, lam descending) and the shift μ."""

    U: jax.Array
    lam: jax.Array
    mu: jax.Array

    def apply(self, x):
        """P⁻¹x = (λ̂_ℓ + μ) U (Λ + μ)⁻¹ Uᵀx + x − UUᵀx = x + U [((λ̂_ℓ + μ)/(Λ + μ) − 1) Uᵀx].

        Uᵀx is written x·U: XLA on CPU materializes the n × ℓ transpose for ``U.T @ x`` (1.5 s
        per product at n = 2.8M, ℓ = 64, against 0.1 s)."""
        ux = x @ self.U
        return x + self.U @ (((self.lam[-1] + self.mu) / (self.lam + self.mu) - 1.0) * ux)


def _columns(mv, cols):
    """A·cols for an (n, ℓ) block, one mat-vec per column (vmapped)."""
    return jax.vmap(mv, in_axes=1, out_axes=1)(cols)


def _from_sketch(omega, y):
    """Stable Nyström factors (U, Λ) from an orthonormal test matrix Ω and Y = AΩ."""
    n, dtype = omega.shape[0], omega.dtype
    nu = jnp.sqrt(n) * jnp.finfo(dtype).eps * jnp.linalg.norm(y)
    y_nu = y + nu * omega
    b = omega.T @ y_nu
    b = 0.5 * (b + b.T)
    c = jnp.linalg.cholesky(b)

    def shifted(_):  # A not numerically PSD on range(Ω): shift past the negative eigenvalue
        s = jnp.abs(jnp.linalg.eigvalsh(b)[0]) + nu
        return jnp.linalg.cholesky(b + s * jnp.eye(b.shape[0], dtype=dtype)), s

    c, extra = jax.lax.cond(jnp.all(jnp.isfinite(c)), lambda _: (c, jnp.zeros((), dtype)), shifted, None)
    f = _right_solve(y_nu + extra * omega, c)  # Y_ν C⁻ᵀ
    gram = f.T @ f
    sig2, v = jnp.linalg.eigh(0.5 * (gram + gram.T))
    sig2, v = sig2[::-1], v[:, ::-1]  # descending
    lam = jnp.maximum(sig2 - nu - extra, 0.0)
    keep = lam > 0
    u = (f @ v) * jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, sig2, 1.0)), 0.0)
    return u, lam


def _right_solve(a, c):
    """a C⁻ᵀ for a tall a and a small lower-triangular C, as one product with the ℓ × ℓ C⁻¹
    (a triangular solve on the n × ℓ block would transpose it twice)."""
    return a @ jax.scipy.linalg.solve_triangular(c, jnp.eye(c.shape[0], dtype=c.dtype), lower=True).T


def _orthonormalize(a):
    """Orthonormal basis of range(a) for a tall, well-conditioned a: Cholesky-QR twice."""
    for _ in range(2):
        gram = a.T @ a
        a = _right_solve(a, jnp.linalg.cholesky(0.5 * (gram + gram.T)))
    return a


_from_sketch_jit = jax.jit(_from_sketch)


def nystrom_sketch(mv, dim, rank, key, dtype=None):
    """Rank-``rank`` randomized Nyström approximation (U, Λ) of a PSD operator from ``rank`` mat-vecs."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    omega = _orthonormalize(jax.random.normal(key, (dim, rank), dtype))
    return _from_sketch(omega, _columns(mv, omega).astype(dtype))


def nystrom_preconditioner(mv, dim, mu, rank, key, dtype=None, *, adaptive=False, max_rank=None,
                           rank_tol=10.0):
    """The Nyström preconditioner of A + μI; with ``adaptive`` the rank starts at ``rank`` and
    doubles (reusing the sketch) while λ̂_ℓ/μ > ``rank_tol`` and ℓ < ``max_rank`` (default dim)."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    if not adaptive:
        u, lam = nystrom_sketch(mv, dim, rank, key, dtype)
        return NystromPreconditioner(u, lam, jnp.asarray(mu, dtype))
    max_rank = dim if max_rank is None else max_rank
    if not isinstance(max_rank, (int, np.integer)) or not rank <= max_rank <= dim:
        raise ValueError(f"max_rank must be an integer in [rank={rank}, dim={dim}], got {max_rank!r}")
    if not float(rank_tol) > 0:
        raise ValueError(f"rank_tol must be > 0, got {rank_tol!r}")
    omega = jnp.zeros((dim, 0), dtype)
    y = jnp.zeros((dim, 0), dtype)
    new = rank
    while True:
        key, sub = jax.random.split(key)
        block = jax.random.normal(sub, (dim, new), dtype)
        block = block - omega @ (omega.T @ block)  # new directions orthogonal to the old sketch
        block = _orthonormalize(block - omega @ (omega.T @ block))
        omega = jnp.concatenate([omega, block], axis=1)
        y = jnp.concatenate([y, _columns(mv, block).astype(dtype)], axis=1)
        u, lam = _from_sketch_jit(omega, y)
        ell = omega.shape[1]
        if float(lam[-1]) <= rank_tol * float(mu) or ell >= max_rank:
            return NystromPreconditioner(u, lam, jnp.asarray(mu, dtype))
        new = min(ell, max_rank - ell)


def pcg(mv, b, x0=None, precond=None, tol=1e-8, maxiter=1000):
    """Preconditioned conjugate gradients for a symmetric positive-definite A (jit-able).

    Stops when ‖b − Ax‖ ≤ tol·‖b‖ or after ``maxiter`` iterations. ``precond(r)`` applies an
    SPD P⁻¹ (identity if None). Returns (x, info) with ``iterations``, ``residual`` (the
    relative residual ‖b − Ax‖/‖b‖ of the returned x, recursively updated) and ``converged``.
    """
    precond = (lambda r: r) if precond is None else precond
    x = jnp.zeros_like(b) if x0 is None else x0.astype(b.dtype)
    bnorm = jnp.linalg.norm(b)
    target = tol * bnorm
    r = b - mv(x) if x0 is not None else b
    z = precond(r)
    p, rz = z, jnp.vdot(r, z)

    def cond(c):
        _, r, _, _, _, k = c
        rn = jnp.linalg.norm(r)
        return (rn > target) & (k < maxiter) & jnp.isfinite(rn)

    def body(c):
        x, r, _, p, rz, k = c
        ap = mv(p)
        alpha = rz / jnp.vdot(p, ap)
        x, r = x + alpha * p, r - alpha * ap
        z = precond(r)
        rz_new = jnp.vdot(r, z)
        return x, r, z, z + (rz_new / rz) * p, rz_new, k + 1

    x, r, _, _, _, k = jax.lax.while_loop(cond, body, (x, r, z, p, rz, jnp.zeros((), jnp.int32)))
    res = jnp.linalg.norm(r) / jnp.where(bnorm > 0, bnorm, 1.0)
    return x, {"iterations": k, "residual": res, "converged": res <= tol}


def nystrom_pcg(mv, b, mu, rank, key, tol=1e-8, maxiter=1000, *, x0=None, adaptive=False,
                max_rank=None, rank_tol=10.0):
    """Solve (A + μI)x = b by CG preconditioned with a rank-ℓ randomized Nyström approximation.

    Args:
      mv: A·v for a PSD A, 1-D array to 1-D array.
      b: right-hand side (1-D).
      mu: the shift μ > 0.
      rank: sketch size ℓ (the initial one with ``adaptive=True``), 1 ≤ ℓ ≤ dim.
      key: PRNG key of the Gaussian test matrix.
      tol, maxiter: stop at ‖b − (A + μI)x‖ ≤ tol‖b‖ or after ``maxiter`` CG iterations.
      x0: optional warm start.
      adaptive: double ℓ until λ̂_ℓ/μ ≤ ``rank_tol`` or ℓ = ``max_rank`` (not jit-able).

    Returns:
      (x, info): info has ``iterations``, ``residual`` (relative), ``converged``, ``rank`` (ℓ
      used), ``lambda_l`` (λ̂_ℓ) and ``preconditioner`` (a ``NystromPreconditioner``).
    Cost: ℓ mat-vecs and O(nℓ²) for the sketch, one mat-vec and O(nℓ) per iteration.
    """
    b = jnp.asarray(b)
    if b.ndim != 1 or b.shape[0] == 0:
        raise ValueError(f"b must be a non-empty 1-D array, got shape {b.shape}")
    dim = b.shape[0]
    if not jnp.issubdtype(b.dtype, jnp.floating):
        b = b.astype(jnp.result_type(float))
    if not isinstance(rank, (int, np.integer)) or not 1 <= rank <= dim:
        raise ValueError(f"rank must be an integer in [1, {dim}] (the dimension), got {rank!r}")
    if not isinstance(maxiter, (int, np.integer)) or maxiter < 0:
        raise ValueError(f"maxiter must be a non-negative integer, got {maxiter!r}")
    for name, val in (("mu", mu), ("tol", tol)):
        c = _concrete(val)
        if c is not None and not (c.ndim == 0 and np.isfinite(c) and c > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {val!r}")
    cb = _concrete(b)
    if cb is not None and not np.all(np.isfinite(cb)):
        raise ValueError("b contains NaN or Inf")
    mu = jnp.asarray(mu, b.dtype)
    jit = _hashable(mv)  # compiled once per (mv, rank, maxiter, shapes) when mv can key a cache
    if adaptive:
        pre = nystrom_preconditioner(mv, dim, mu, rank, key, b.dtype, adaptive=True, max_rank=max_rank,
                                     rank_tol=rank_tol)
        x, info = (_solve_jit if jit else _solve)(mv, b, mu, pre, x0, tol, int(maxiter))
    else:
        x, info, pre = (_sketch_solve_jit if jit else _sketch_solve)(mv, b, mu, int(rank), key, x0, tol,
                                                                     int(maxiter))
    cx = _concrete(x)
    if cx is not None and not np.all(np.isfinite(cx)):
        raise ValueError("the operator returned non-finite values (NaN/Inf) during Nyström-PCG")
    return x, {**info, "rank": pre.U.shape[1], "lambda_l": pre.lam[-1], "preconditioner": pre}


def _solve(mv, b, mu, pre, x0, tol, maxiter):
    return pcg(lambda v: mv(v).astype(b.dtype) + mu * v, b, x0, pre.apply, tol, maxiter)


def _sketch_solve(mv, b, mu, rank, key, x0, tol, maxiter):
    pre = nystrom_preconditioner(mv, b.shape[0], mu, rank, key, b.dtype)
    return (*_solve(mv, b, mu, pre, x0, tol, maxiter), pre)


_solve_jit = jax.jit(_solve, static_argnums=(0, 6))
_sketch_solve_jit = jax.jit(_sketch_solve, static_argnums=(0, 3, 7))
