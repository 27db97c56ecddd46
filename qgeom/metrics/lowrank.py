"""Low-rank metrics: randomized Nyström of a mat-vec operator, and gradient windows.

* ``nystrom`` — Halko, Martinsson & Tropp (2011), "Finding structure with randomness",
  Alg. 4.3/4.4 (range finder with power iterations) followed by the numerically stable
  Nyström approximation of Tropp, Yurtsever, Udell & Cevher (2017), "Fixed-rank
  approximation of a positive-semidefinite matrix from streaming data", Alg. 3.
* ``GradientWindow`` / ``mfac`` — F = GᵀG/m for a window of m gradients, with the
  Woodbury solve of M-FAC (Frantar, Kurtic & Alistarh 2021, "M-FAC: Efficient
  matrix-free approximations of second-order information").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from qgeom.metrics.base import Metric, check_damping, check_like, pytree_dataclass


def _concrete(x):
    """``x`` as a numpy value, or None if it is a tracer."""
    try:
        return np.asarray(x)
    except (TypeError, jax.errors.TracerArrayConversionError):
        return None


@pytree_dataclass
class LowRankPlusDiagonal(Metric):
    """G = U diag(s) Uᵀ + diag(d) over parameters shaped like ``params`` (U: P×k orthonormal).

    ``d`` is ``None`` (pure low rank) or a length-P vector (or scalar). ``solve`` is exact
    for this matrix:

    * ``d is None``: (U S Uᵀ + λI)⁻¹ = U diag(1/(s+λ)) Uᵀ + (I − UUᵀ)/λ; at λ = 0 the
      pseudo-inverse U S⁺ Uᵀ (the complement of range U is dropped).
    * otherwise Woodbury with D' = d + λ > 0:
      (D' + U S Uᵀ)⁻¹ = D'⁻¹ − D'⁻¹U (S⁻¹ + Uᵀ D'⁻¹ U)⁻¹ Uᵀ D'⁻¹ (needs s > 0).
    """

    U: jax.Array
    s: jax.Array
    params: object
    d: jax.Array | None = None

    def _like(self):
        return self.params

    def mv(self, v):
        flat, unravel = self._flat(v)
        out = self.U @ (self.s * (self.U.T @ flat))
        if self.d is not None:
            out = out + self.d * flat
        return unravel(out)

    def dense(self):
        g = (self.U * self.s) @ self.U.T
        if self.d is not None:
            g = g + jnp.diag(jnp.broadcast_to(self.d, (self.U.shape[0],)))
        return g

    def _scalar_shift(self):
        return self.d is None or jnp.ndim(self.d) == 0

    def factorize(self):
        """Itself when the diagonal is absent or a scalar (its ``solve`` is exact for any λ and its
        spectrum is {s + d} ∪ {d}); otherwise the dense ``EighFactorization``."""
        return self if self._scalar_shift() else Metric.factorize(self)

    def _spectrum_ends(self):
        shift = 0.0 if self.d is None else self.d
        lo, hi = jnp.min(self.s) + shift, jnp.max(self.s) + shift
        if self.U.shape[1] < self.U.shape[0]:  # the complement of range U carries eigenvalue d
            lo, hi = jnp.minimum(lo, shift), jnp.maximum(hi, shift)
        return lo, hi

    def min_eigenvalue(self):
        return self._spectrum_ends()[0]

    def max_eigenvalue(self):
        return self._spectrum_ends()[1]

    def solve(self, v, damping=0.0):
        check_damping(damping)
        flat, unravel = self._flat(v)
        proj = self.U.T @ flat
        if self.d is None:
            inside = self.U @ (proj * jnp.where(self.s + damping > 0, 1.0 / jnp.where(self.s + damping > 0, self.s + damping, 1.0), 0.0))
            rest = flat - self.U @ proj
            safe = jnp.where(damping > 0, damping, 1.0)
            return unravel(inside + jnp.where(damping > 0, rest / safe, 0.0))
        dinv = 1.0 / jnp.broadcast_to(self.d + damping, flat.shape)
        core = jnp.diag(1.0 / self.s) + (self.U.T * dinv) @ self.U
        corr = self.U @ jnp.linalg.solve(core, self.U.T @ (dinv * flat))
        return unravel(dinv * (flat - corr))


def nystrom(mv_fn, params, rank, key, power_iters=2, oversample=10):
    """Randomized Nyström approximation of a PSD operator known only by mat-vecs.

    ``mv_fn(v)`` returns G·v for pytrees shaped like ``params``. With a Gaussian test
    matrix Ω (P × ℓ, ℓ = rank + oversample), the range finder Y = G^{q+1} Ω with
    ``power_iters`` = q re-orthonormalized power (subspace) iterations
    (HMT 2011, Alg. 4.4) gives Q = orth(Y); the Nyström approximant with test matrix Q,

        Ĝ = (GQ) (QᵀGQ)⁺ (GQ)ᵀ,

    is computed stably with a small shift ν (Tropp et al. 2017, Alg. 3) and truncated to
    its ``rank`` leading eigenpairs. Cost: ℓ·(q + 2) mat-vecs and O(P ℓ²).
    Since Ĝ = G^{1/2} P G^{1/2} with P the projector onto range(G^{q+3/2} Ω), HMT's
    bounds (Thm 9.2 and §10) applied to G^{1/2} give, with probability ≥ 1 − 6·p⁻ᵖ
    (p = oversample), ‖G − Ĝ‖ ≤ [1 + 11√ℓ·√P]^{2/(2q+3)} λ_{k+1}, plus λ_{k+1} for the
    truncation to rank k.

    Returns a ``LowRankPlusDiagonal`` (no diagonal); its ``solve`` is exact for Ĝ.
    """
    flat0, unravel = ravel_pytree(params)
    n = flat0.shape[0]
    if not (isinstance(rank, (int, np.integer)) and 1 <= rank <= n):
        raise ValueError(f"rank must be an integer in [1, {n}] (the number of parameters), got {rank!r}")
    if not (isinstance(power_iters, (int, np.integer)) and power_iters >= 0):
        raise ValueError(f"power_iters must be a non-negative integer, got {power_iters!r}")
    if not (isinstance(oversample, (int, np.integer)) and oversample >= 0):
        raise ValueError(f"oversample must be a non-negative integer, got {oversample!r}")
    ell = min(rank + oversample, n)
    dtype = flat0.dtype

    def op(cols):  # (P, ℓ) -> G (P, ℓ), one mat-vec per column
        return jax.vmap(lambda c: ravel_pytree(mv_fn(unravel(c)))[0], in_axes=1, out_axes=1)(cols)

    omega = jax.random.normal(key, (n, ell), dtype)
    q, _ = jnp.linalg.qr(op(omega))
    for _ in range(power_iters):
        q, _ = jnp.linalg.qr(op(q))
    y = op(q)
    nu = jnp.sqrt(n) * jnp.finfo(dtype).eps * jnp.linalg.norm(y)
    y_nu = y + nu * q
    b = q.T @ y_nu
    c = jnp.linalg.cholesky(0.5 * (b + b.T))  # b = c cᵀ
    f = jax.scipy.linalg.solve_triangular(c, y_nu.T, lower=True).T  # y_nu c⁻ᵀ
    u, sig, _ = jnp.linalg.svd(f, full_matrices=False)
    lam = jnp.maximum(sig**2 - nu, 0.0)
    return LowRankPlusDiagonal(u[:, :rank], lam[:rank], params)


@pytree_dataclass
class GradientWindow(Metric):
    """F = GᵀG/m for a window of m flattened gradients (rows of ``grads``, m × P).

    This is the (empirical or sampled) Fisher of the window, as used by M-FAC
    (Frantar et al. 2021). ``solve`` uses Woodbury,

        (λI + GᵀG/m)⁻¹ v = (v − Gᵀ (mλ I + G Gᵀ)⁻¹ G v) / λ,

    O(P m) per call after the O(P m²) Gram matrix (``inverse`` caches its Cholesky
    factor). Needs λ > 0 (GᵀG/m has rank ≤ m). ``push(g)`` slides the window.
    """

    grads: jax.Array
    params: object

    @classmethod
    def from_gradients(cls, grads, params):
        """Window from a gradient pytree whose leaves carry a leading axis of size m."""
        leaves = jax.tree_util.tree_leaves(grads)
        if not leaves:
            raise ValueError("grads is empty")
        m = jnp.shape(leaves[0])[0] if jnp.ndim(leaves[0]) else None
        if m is None or any(jnp.ndim(x) == 0 or jnp.shape(x)[0] != m for x in leaves):
            raise ValueError("every leaf of grads needs the same leading (window) axis")
        check_like(jax.tree_util.tree_map(lambda x: x[0], grads), params, "grads[0]")
        rows = jax.vmap(lambda g: ravel_pytree(g)[0])(grads)
        return cls(rows, params)

    def _like(self):
        return self.params

    def mv(self, v):
        flat, unravel = self._flat(v)
        return unravel(self.grads.T @ (self.grads @ flat) / self.grads.shape[0])

    def dense(self):
        return self.grads.T @ self.grads / self.grads.shape[0]

    def push(self, g):
        """Window with gradient pytree ``g`` appended and the oldest one dropped."""
        check_like(g, self.params, "g")
        return GradientWindow(jnp.concatenate([self.grads[1:], ravel_pytree(g)[0][None]]), self.params)

    def inverse(self, damping):
        """Cache the Cholesky factor of mλI + GGᵀ; returns an object with ``apply(v)``."""
        check_damping(damping)
        d = _concrete(damping)
        if d is not None and d <= 0:
            raise ValueError("GradientWindow.solve needs damping > 0: GᵀG/m has rank at most m")
        m = self.grads.shape[0]
        gram = self.grads @ self.grads.T + m * damping * jnp.eye(m, dtype=self.grads.dtype)
        return GradientWindowInverse(self.grads, jnp.linalg.cholesky(gram), damping, self.params)

    def solve(self, v, damping):
        """(λI + GᵀG/m)⁻¹ v by Woodbury; λ = ``damping`` must be > 0."""
        return self.inverse(damping).apply(v)


@pytree_dataclass
class GradientWindowInverse:
    """Cached (λI + GᵀG/m)⁻¹ of a ``GradientWindow``: ``apply(v)`` costs O(P m)."""

    grads: jax.Array
    chol: jax.Array
    damping: jax.Array
    params: object

    def apply(self, v):
        check_like(v, self.params, "v")
        flat, unravel = ravel_pytree(v)
        z = jax.scipy.linalg.cho_solve((self.chol, True), self.grads @ flat)
        return unravel((flat - self.grads.T @ z) / self.damping)


def mfac(grads, params):
    """M-FAC metric F = GᵀG/m from a window of gradients (pytree with leading axis m)."""
    return GradientWindow.from_gradients(grads, params)
