"""Block-tridiagonal K-FAC (Martens & Grosse 2015, arXiv:1503.05671, §4.3 and Appendix B).

With the Kronecker blocks F̃_{i,j} = Ā_{i−1,j−1} ⊗ G_{i,j} of the Fisher (Ā_{i−1,j−1} =
E[ā_{i−1} ā_{j−1}ᵀ] the inputs of layers i and j, G_{i,j} = E[g_i g_jᵀ]), the inverse is
approximated as that of a directed Gaussian graphical model along the layers, DW_i =
Ψ_{i,i+1} DW_{i+1} + ε_i, whose Fisher F̂ agrees with F̃ on the diagonal and first
off-diagonal blocks and whose inverse is block-tridiagonal:

    F̂⁻¹ = Ξᵀ Λ Ξ,   Ξ = I − (blocks Ψ_{i,i+1} above the diagonal),
    Ψ_{i,i+1} = F̃_{i,i+1} F̃_{i+1,i+1}⁻¹ = Ā_{i−1,i} Ā_{i,i}⁻¹ ⊗ G_{i,i+1} G_{i+1,i+1}⁻¹ = Ψ^A ⊗ Ψ^G,
    Λ = diag(Σ_{1|2}⁻¹, …, Σ_{ℓ−1|ℓ}⁻¹, F̃_{ℓ,ℓ}⁻¹),
    Σ_{i|i+1} = F̃_{i,i} − Ψ_{i,i+1} F̃_{i+1,i+1} Ψ_{i,i+1}ᵀ = A₁ ⊗ G₁ − A₂ ⊗ G₂,
    A₁ = Ā_{i−1,i−1}, A₂ = Ψ^A Ā_{i,i} Ψ^Aᵀ, G₁ = G_{i,i}, G₂ = Ψ^G G_{i+1,i+1} Ψ^Gᵀ.

Σ_{i|i+1}, a difference of Kronecker products, is inverted by the two-factor
eigendecomposition of Appendix B: with A₁ = L_A L_Aᵀ (Cholesky), L_A⁻¹ A₂ L_A⁻ᵀ = E_A diag(a) E_Aᵀ
and likewise for G, Σ = (L_A E_A ⊗ L_G E_G)(I − diag(a ⊗ g))(L_A E_A ⊗ L_G E_G)ᵀ, so
Σ⁻¹ vec V = vec(K_A [(K_Aᵀ V K_G) / (1 − a gᵀ)] K_Gᵀ), K = L⁻ᵀ E. Damping (§6.3): the
diagonal factors get the factored Tikhonov terms Ā_{i,i} + π_i√λ I, G_{i,i} + √λ/π_i I
before Ψ and Σ are formed (cross factors undamped), which keeps a, g in [0, 1).
Applying F̂⁻¹ is a sweep u = Ξ v, per-layer solves w = Λ u, and a sweep Ξᵀ w.

Layers are chained in sorted-name order (the network's); only dense layers (one position,
T = 1) have cross statistics. This is a curvature over all layers (not a per-layer block):
pass ``TridiagonalKronecker(model.layer_shapes)`` as ``KFAC(blocks=...)``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from classical.blocks.base import F32, ema, input_factor, output_factor
from qgeom.metrics.base import Metric, pytree_dataclass
from qgeom.metrics.kronecker import factored_damping, psd_inverse


def _cross(x, y):
    """E[x yᵀ] over the leading (example) axis."""
    return jax.lax.dot_general(x, y, (((0,), (0,)), ((), ()))) / x.shape[0]


def _sym_solve_right(m, d):
    """M D⁻¹ for symmetric positive-definite D (Cholesky)."""
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(d, lower=True), m.T).T


def _kron_difference_inverse(a1, g1, a2, g2):
    """Pieces (K_A, K_G, 1 − a gᵀ) of (A₁ ⊗ G₁ − A₂ ⊗ G₂)⁻¹ (Appendix B)."""
    def side(x1, x2):
        lo = jnp.linalg.cholesky(x1)
        inner = jax.scipy.linalg.solve_triangular(lo, jax.scipy.linalg.solve_triangular(lo, x2, lower=True).T,
                                                  lower=True)
        vals, vecs = jnp.linalg.eigh(0.5 * (inner + inner.T))
        return jax.scipy.linalg.solve_triangular(lo.T, vecs, lower=False), vals

    k_a, s_a = side(a1, a2)
    k_g, s_g = side(g1, g2)
    return k_a, k_g, 1.0 - jnp.outer(s_a, s_g)


@pytree_dataclass
class GaussianChainMetric(Metric):
    """F̂ of the module docstring from damped diagonal factors ``A``, ``G`` and cross factors.

    ``mv(v) = F̂ v`` (F̂ = Ξ⁻¹ diag(Σ) Ξ⁻ᵀ, by two triangular sweeps), ``inverse_mv(v) = F̂⁻¹ v =
    Ξᵀ Λ Ξ v``, ``dense()`` the P×P matrix, ``solve(v, λ)`` a dense solve (small P only).
    """

    names: tuple
    A: dict
    G: dict
    psi_A: dict
    psi_G: dict
    inv: dict  # per pair (K_A, K_G, 1 − a gᵀ); for the last layer (A⁻¹, G⁻¹)

    meta_fields = ("names",)

    @classmethod
    def build(cls, names, A, G, A_next, G_next):
        psi_a, psi_g, inv = {}, {}, {}
        for i, j in zip(names[:-1], names[1:]):
            psi_a[i], psi_g[i] = _sym_solve_right(A_next[i], A[j]), _sym_solve_right(G_next[i], G[j])
            a2, g2 = psi_a[i] @ A_next[i].T, psi_g[i] @ G_next[i].T  # Ψ Ā_{i,i} Ψᵀ = Ā_{i−1,i} Ā_{i,i}⁻¹ Ā_{i,i−1}
            inv[i] = _kron_difference_inverse(A[i], G[i], a2, g2)
        last = names[-1]
        inv[last] = (psd_inverse(A[last]), psd_inverse(G[last]))
        return cls(tuple(names), A, G, psi_a, psi_g, inv)

    def _like(self):
        return {k: jnp.zeros((self.A[k].shape[0], self.G[k].shape[0]), self.A[k].dtype) for k in self.names}

    def _psi(self, i, v):
        return self.psi_A[i] @ v @ self.psi_G[i].T

    def _psi_t(self, i, v):
        return self.psi_A[i].T @ v @ self.psi_G[i]

    def inverse_mv(self, v):
        """F̂⁻¹ v = Ξᵀ Λ Ξ v."""
        n = self.names
        u = {i: v[i] - self._psi(i, v[j]) for i, j in zip(n[:-1], n[1:])} | {n[-1]: v[n[-1]]}
        w = {}
        for i in n[:-1]:
            k_a, k_g, denom = self.inv[i]
            w[i] = k_a @ ((k_a.T @ u[i] @ k_g) / denom) @ k_g.T
        a_inv, g_inv = self.inv[n[-1]]
        w[n[-1]] = a_inv @ u[n[-1]] @ g_inv
        z = {n[0]: w[n[0]]}
        for i, j in zip(n[:-1], n[1:]):
            z[j] = w[j] - self._psi_t(i, w[i])
        return z

    def mv(self, v):
        """F̂ v = Ξ⁻¹ diag(Σ) Ξ⁻ᵀ v."""
        n = self.names
        y = {n[0]: v[n[0]]}
        for i, j in zip(n[:-1], n[1:]):  # Ξᵀ y = v
            y[j] = v[j] + self._psi_t(i, y[i])
        t = {}
        for i, j in zip(n[:-1], n[1:]):
            t[i] = self.A[i] @ y[i] @ self.G[i] - self._psi(i, self.A[j] @ self._psi_t(i, y[i]) @ self.G[j])
        t[n[-1]] = self.A[n[-1]] @ y[n[-1]] @ self.G[n[-1]]
        x = {n[-1]: t[n[-1]]}
        for i, j in zip(n[-2::-1], n[:0:-1]):  # Ξ x = t, from the last layer back
            x[i] = t[i] + self._psi(i, x[j])
        return x

    def dense(self):
        flat, unravel = ravel_pytree(self._like())
        cols = jax.vmap(lambda e: ravel_pytree(self.mv(unravel(e)))[0])(jnp.eye(flat.size, dtype=flat.dtype))
        return cols.T


@dataclasses.dataclass(frozen=True)
class TridiagonalKronecker:
    """Block-tridiagonal K-FAC curvature over the layers ``shapes`` ({name: (d_in + 1, d_out)})."""

    shapes: dict

    needs_preact_grads = True

    def __post_init__(self):
        if len(self.shapes) < 2:
            raise ValueError("block-tridiagonal K-FAC needs at least two layers")

    @property
    def names(self):
        return tuple(sorted(self.shapes))

    def init(self):
        n = self.names
        stats = {k: {"A": jnp.eye(self.shapes[k][0], dtype=F32), "G": jnp.eye(self.shapes[k][1], dtype=F32)}
                 for k in n}
        for i, j in zip(n[:-1], n[1:]):
            stats[i]["A_next"] = jnp.zeros((self.shapes[i][0], self.shapes[j][0]), F32)
            stats[i]["G_next"] = jnp.zeros((self.shapes[i][1], self.shapes[j][1]), F32)
        return stats

    def update(self, stats, batches, decay):
        n = self.names
        for k in n:
            if batches[k].inputs.shape[1] != 1:
                raise ValueError(f"block-tridiagonal K-FAC needs dense layers; {k} shares weights over "
                                 f"{batches[k].inputs.shape[1]} positions")
        abar = {k: batches[k].homogeneous_inputs()[:, 0] for k in n}
        g = {k: batches[k].preact_grads[:, 0] for k in n}
        new = {k: {"A": input_factor(batches[k].inputs), "G": output_factor(batches[k].preact_grads)} for k in n}
        for i, j in zip(n[:-1], n[1:]):
            new[i]["A_next"], new[i]["G_next"] = _cross(abar[i], abar[j]), _cross(g[i], g[j])
        return ema(stats, new, decay)

    def _damped(self, stats, damping):
        a, g = {}, {}
        for k in self.names:
            ga, gg = factored_damping(stats[k]["A"], stats[k]["G"], damping)
            a[k] = stats[k]["A"] + ga * jnp.eye(self.shapes[k][0], dtype=stats[k]["A"].dtype)
            g[k] = stats[k]["G"] + gg * jnp.eye(self.shapes[k][1], dtype=stats[k]["G"].dtype)
        return a, g

    def _chain(self, stats, a, g):
        n = self.names
        return GaussianChainMetric.build(n, a, g, {i: stats[i]["A_next"] for i in n[:-1]},
                                         {i: stats[i]["G_next"] for i in n[:-1]})

    def refresh(self, stats, damping):
        return stats, self._chain(stats, *self._damped(stats, damping))

    def apply_inverse(self, stats, cache, grads, damping):
        return cache.inverse_mv(grads)

    def metric(self, stats) -> GaussianChainMetric:
        """F̂ of the undamped statistics (needs positive-definite diagonal factors)."""
        n = self.names
        return self._chain(stats, {k: stats[k]["A"] for k in n}, {k: stats[k]["G"] for k in n})
