"""Lanczos tridiagonalization, extremal eigenvalues and stochastic Lanczos quadrature (SLQ).

Everything is matrix-free: an operator is a function ``mv`` mapping a 1-D array to a 1-D array
(``flat_operator`` turns a ``qgeom.metrics`` metric or a pytree mat-vec into one).

* Lanczos (1950) with full reorthogonalization: from q₁ = v₀/‖v₀‖, m steps give an orthonormal
  Q = [q₁ … q_m] and the tridiagonal T = QᵀAQ (diagonal α, off-diagonal β) with
  AQ = QT + β_m q_{m+1} e_mᵀ. Each new vector is orthogonalized twice (classical Gram–Schmidt
  repeated, "twice is enough") against all previous ones, so no ghost eigenvalues appear. If
  the Krylov space becomes invariant (β_j ≈ 0) Lanczos continues from a random vector
  orthogonal to Q and stores β_j = 0: T splits into blocks, each the Lanczos matrix of
  an orthogonal Krylov space, and the quadrature weights of the later blocks are exactly zero.
* Ritz pairs (θ_j, Q s_j) from T = S diag(θ) Sᵀ have residual ‖A Q s_j − θ_j Q s_j‖ =
  β_m |s_{mj}|, so an eigenvalue of A lies in [θ_j − r_j, θ_j + r_j]; by Cauchy interlacing
  θ_max ≤ λ_max and θ_min ≥ λ_min always.
* SLQ (Golub & Meurant 2010; Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019;
  Granziol et al. 2022): for a probe v with ‖v‖² = n, vᵀf(A)v/n ≈ Σ_j τ_j f(θ_j) with
  τ_j = s_{1j}², the m-point Gauss rule of the spectral measure seen from v (exact for
  polynomials of degree ≤ 2m − 1). Averaging over Rademacher probes gives
  tr f(A) ≈ n · mean_probes Σ_j τ_j f(θ_j), and the spectral density
  φ(t) = (1/n) Σ_i δ(t − λ_i) ≈ mean_probes Σ_j τ_j N(t; θ_j, σ²) after Gaussian broadening.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from qgeom.metrics import Metric


def flat_operator(op, params):
    """(mv, dim): a 1-D mat-vec and the dimension for a ``qgeom.metrics`` metric or a function
    ``op(v)`` on pytrees shaped like ``params`` (flattened in ``ravel_pytree`` order)."""
    flat0, unravel = ravel_pytree(params)
    fn = op.mv if isinstance(op, Metric) else op
    if not callable(fn):
        raise ValueError(f"op must be a qgeom.metrics metric or a function, got {type(op).__name__}")

    def mv(v):
        return ravel_pytree(fn(unravel(v.astype(flat0.dtype))))[0]

    return mv, flat0.shape[0]


def _check_steps(num_steps, dim):
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= dim:
        raise ValueError(f"num_steps must be an integer in [1, {dim}] (the dimension), got {num_steps!r}")


def _check_v0(v0):
    v0 = jnp.asarray(v0)
    if v0.ndim != 1 or v0.shape[0] == 0:
        raise ValueError(f"v0 must be a non-empty 1-D array, got shape {v0.shape}")
    if not jnp.issubdtype(v0.dtype, jnp.floating):
        v0 = v0.astype(jnp.result_type(float))
    c = _concrete(v0)
    if c is not None and (not np.all(np.isfinite(c)) or not np.any(c != 0)):
        raise ValueError("v0 must be finite and nonzero")
    return v0


def _lanczos(mv, v0, num_steps):
    """Full-reorthogonalization Lanczos: (alphas (m,), betas (m,), Q (m, n)); betas[-1] = β_m."""
    n, dtype = v0.shape[0], v0.dtype
    eps = jnp.finfo(dtype).eps
    q0 = v0 / jnp.linalg.norm(v0)
    basis = jnp.zeros((num_steps + 1, n), dtype).at[0].set(q0)
    key = jax.random.PRNGKey(0)  # deterministic restarts after an invariant subspace

    def orth(basis, w):
        w = w - basis.T @ (basis @ w)
        return w - basis.T @ (basis @ w)

    def body(j, carry):
        basis, alphas, betas, scale = carry
        q = basis[j]
        w = mv(q).astype(dtype)
        alpha = jnp.vdot(q, w)
        scale = jnp.maximum(scale, jnp.linalg.norm(w))
        w = orth(basis, w)
        beta = jnp.linalg.norm(w)
        invariant = beta <= 100 * eps * scale
        r = orth(basis, jax.random.normal(jax.random.fold_in(key, j), (n,), dtype))
        w = jnp.where(invariant, r / jnp.linalg.norm(r), w / jnp.where(invariant, 1.0, beta))
        beta = jnp.where(invariant, 0.0, beta)
        basis = basis.at[j + 1].set(jnp.where(j + 1 < n, w, 0.0))
        return basis, alphas.at[j].set(alpha), betas.at[j].set(beta), scale

    zeros = jnp.zeros((num_steps,), dtype)
    basis, alphas, betas, _ = jax.lax.fori_loop(
        0, num_steps, body, (basis, zeros, zeros, jnp.zeros((), dtype)))
    return alphas, betas, basis[:num_steps]


_lanczos_jit = jax.jit(_lanczos, static_argnums=(0, 2))


def _hashable(fn):
    try:
        hash(fn)
    except TypeError:
        return False
    return True


def _run(mv, v0, num_steps):
    """Lanczos compiled once per (mv, num_steps, v0 shape) when ``mv`` is hashable (a function
    reused across calls hits the cache); otherwise traced afresh."""
    return (_lanczos_jit if _hashable(mv) else _lanczos)(mv, v0, num_steps)


def lanczos(mv, v0, num_steps):
    """Lanczos tridiagonalization with full reorthogonalization.

    Args:
      mv: A·v for a symmetric A, mapping a 1-D array to a 1-D array (jax-traceable).
      v0: start vector (1-D, nonzero; normalized here).
      num_steps: m ≤ dim, the number of mat-vecs.

    Returns:
      (alphas, betas): the diagonal (m,) and off-diagonal (m − 1,) of T = QᵀAQ.
    """
    v0 = _check_v0(v0)
    _check_steps(num_steps, v0.shape[0])
    alphas, betas, _ = _run(mv, v0, num_steps)
    _check_finite(alphas, betas)
    return alphas, betas[:-1]


def _concrete(x):
    """``x`` as a numpy value, or None inside a trace (``jit``/``vmap``)."""
    try:
        return np.asarray(x)
    except (TypeError, jax.errors.TracerArrayConversionError):
        return None


def _check_finite(*arrays):
    for a in arrays:
        c = _concrete(a)
        if c is not None and not np.all(np.isfinite(c)):
            raise ValueError("the operator returned non-finite values (NaN/Inf) during Lanczos")


def tridiagonal(alphas, betas):
    """The dense symmetric tridiagonal matrix with diagonal ``alphas`` and off-diagonal ``betas``."""
    return jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)


def _ritz(alphas, betas_full):
    """Ritz values θ (ascending), first components² τ and residual norms β_m |s_mj|."""
    theta, s = jnp.linalg.eigh(tridiagonal(alphas, betas_full[:-1]))
    return theta, s[0] ** 2, jnp.abs(betas_full[-1] * s[-1])


class Extremal(NamedTuple):
    """Extremal Ritz values with residual bounds: an eigenvalue of A lies within ``*_bound``."""

    largest: jax.Array  # (k,) descending
    largest_bound: jax.Array
    smallest: jax.Array  # (k,) ascending
    smallest_bound: jax.Array


def extremal_eigenvalues(mv, v0, num_steps, k=1):
    """The k largest and k smallest Ritz values of A after ``num_steps`` Lanczos steps from v0.

    Each comes with its residual bound r_j = β_m |s_mj| (floored at eps·max|θ|, the rounding
    level of full-reorthogonalization Lanczos): [θ_j − r_j, θ_j + r_j] holds an eigenvalue of A. θ_max ≤ λ_max and θ_min ≥ λ_min always hold (interlacing), so once r
    is small and Lanczos has resolved the top (bottom) of the spectrum,
    λ_max ∈ [θ_max, θ_max + r]. A start vector orthogonal to the top eigenvector never
    finds it: use a random v0.
    """
    v0 = _check_v0(v0)
    _check_steps(num_steps, v0.shape[0])
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= num_steps:
        raise ValueError(f"k must be an integer in [1, num_steps={num_steps}], got {k!r}")
    alphas, betas, _ = _run(mv, v0, num_steps)
    _check_finite(alphas, betas)
    theta, _, res = _ritz(alphas, betas)
    res = jnp.maximum(res, jnp.finfo(theta.dtype).eps * jnp.max(jnp.abs(theta)))  # rounding floor
    return Extremal(theta[::-1][:k], res[::-1][:k], theta[:k], res[:k])


def slq(mv, dim, key, num_probes, num_steps, dtype=None):
    """Stochastic Lanczos quadrature: Gauss nodes and weights from Rademacher probes.

    Returns ``(nodes, weights)``, each (num_probes, num_steps): per probe the Ritz values θ_j
    and the squared first components τ_j of T's eigenvectors (Σ_j τ_j = 1), so that

        tr f(A) ≈ dim · mean_probes Σ_j τ_j f(θ_j)

    (``trace_estimate``) and the spectral density is ``spectral_density(nodes, weights, ...)``.
    Probes are run one after another (``lax.map``): memory is one Lanczos basis,
    (num_steps + 1) × dim. ``dtype`` defaults to float64 when x64 is on.
    """
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not isinstance(num_probes, (int, np.integer)) or num_probes < 1:
        raise ValueError(f"num_probes must be a positive integer, got {num_probes!r}")
    _check_steps(num_steps, dim)
    dtype = jnp.result_type(float) if dtype is None else dtype
    args = (mv, key, int(dim), int(num_probes), int(num_steps), jnp.dtype(dtype))
    nodes, weights = (_slq_jit if _hashable(mv) else _slq)(*args)
    _check_finite(nodes, weights)
    return nodes, weights


def _slq(mv, key, dim, num_probes, num_steps, dtype):
    probes = jax.random.rademacher(key, (num_probes, dim), dtype)

    def one(v):
        alphas, betas, _ = _lanczos(mv, v, num_steps)
        theta, tau, _ = _ritz(alphas, betas)
        return theta, tau

    return jax.lax.map(one, probes)


_slq_jit = jax.jit(_slq, static_argnums=(0, 2, 3, 4, 5))



def trace_estimate(f, nodes, weights, dim):
    """tr f(A) ≈ dim · mean_probes Σ_j τ_j f(θ_j) from ``slq`` output."""
    return dim * jnp.mean(jnp.sum(weights * f(nodes), axis=-1))


def spectral_density(nodes, weights, grid, sigma):
    """Gaussian-broadened SLQ density φ(t) = mean_probes Σ_j τ_j N(t; θ_j, σ²) on ``grid``.

    φ integrates to 1 over the real line (a probability density of eigenvalues: (1/n) times
    the eigenvalue count per unit length); its k-th moment is mean Σ τ θᵏ + (Gaussian terms),
    ≈ tr(Aᵏ)/n. For log-scale plots keep σ well below the spectral gaps of interest; Papyan's
    choice is σ = (λ_max − λ_min) / (m − 1) / √(8 ln κ) with κ ≈ 3.
    """
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    nodes, weights, grid = jnp.asarray(nodes), jnp.asarray(weights), jnp.asarray(grid)
    if nodes.shape != weights.shape:
        raise ValueError(f"nodes {nodes.shape} and weights {weights.shape} must have the same shape")
    z = (grid[:, None] - nodes.reshape(-1)[None, :]) / sigma
    kernel = jnp.exp(-0.5 * z**2) / (sigma * jnp.sqrt(2 * jnp.pi))
    return kernel @ weights.reshape(-1) / nodes.reshape(-1, nodes.shape[-1]).shape[0]
