"""Factorizations: a metric decomposed once so that (G + λI)⁻¹ v is cheap for ANY damping λ.

``Metric.factorize()`` returns one. A factorization is itself a ``Metric`` (``mv``, ``solve``,
``dense``) and also reports its extremal eigenvalues (``min_eigenvalue``, ``max_eigenvalue``),
which damping rules need (the QPNGD shift "add 1 when λ_min(G) ≤ 1", relative damping
λ·λ_max of randomized K-FAC). Optimizers cache it in their state and solve every step with
the current damping; a refresh every T steps recomputes it.

* ``EighFactorization``: G = V diag(w) Vᵀ from ``eigh`` of ``dense()`` (w clipped at 0), the
  default for any metric; ``solve(v, λ) = V diag(1/(w + λ)) Vᵀ v``.
* ``KroneckerEigenbasis``: G = (Q_A ⊗ Q_G) diag(vec S) (Q_A ⊗ Q_G)ᵀ for a layer's (d_A, d_G)
  weight matrix W (row-major ravel); ``solve(V, λ) = Q_A [(Q_Aᵀ V Q_G) / (S + λ)] Q_Gᵀ``.
  With S = α γᵀ (eigenvalues of A and G) it is K-FAC's A ⊗ G exactly; with S re-fitted to
  per-example gradients it is EKFAC's metric (George et al. 2018).
* a ``BlockDiagonal`` of factorizations (``BlockDiagonal.factorize()``), whose extremal
  eigenvalues are those over its blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from qgeom.metrics.base import Metric, check_damping, check_like, pytree_dataclass


def _check_matrix(v, shape):
    if not hasattr(v, "shape") or v.shape != shape:
        raise ValueError(f"v must be an array of the layer's parameter shape {shape}, got "
                         f"{getattr(v, 'shape', type(v).__name__)}")


@pytree_dataclass
class EighFactorization(Metric):
    """A metric stored as its eigendecomposition G = V diag(w) Vᵀ (w ≥ 0) over ``params``."""

    vecs: jax.Array
    vals: jax.Array
    params: object

    @classmethod
    def of(cls, metric: Metric) -> EighFactorization:
        """``eigh`` of ``metric.dense()`` (symmetrised first; negative round-off clipped to 0)."""
        g = metric.dense()
        vals, vecs = jnp.linalg.eigh(0.5 * (g + g.T))
        return cls(vecs, jnp.maximum(vals, 0.0), metric._like())

    def _like(self):
        return self.params

    def _apply(self, v, weights):
        check_like(v, self.params, "v")
        flat, unravel = ravel_pytree(v)
        return unravel((self.vecs @ (weights * (self.vecs.T @ flat))).astype(flat.dtype))

    def mv(self, v):
        return self._apply(v, self.vals)

    def solve(self, v, damping=0.0):
        """V diag(1/(w + λ)) Vᵀ v: two mat-vecs for any λ."""
        check_damping(damping)
        return self._apply(v, 1.0 / (self.vals + damping))

    def dense(self):
        return (self.vecs * self.vals) @ self.vecs.T

    def factorize(self):
        return self

    def min_eigenvalue(self):
        return jnp.min(self.vals)

    def max_eigenvalue(self):
        return jnp.max(self.vals)


@pytree_dataclass
class KroneckerEigenbasis(Metric):
    """G = (Q_A ⊗ Q_G) diag(vec S) (Q_A ⊗ Q_G)ᵀ on one layer's weight matrix of shape S.shape.

    ``mv(V) = Q_A [S ∘ (Q_Aᵀ V Q_G)] Q_Gᵀ``, ``solve(V, λ) = Q_A [(Q_Aᵀ V Q_G) / (S + λ)] Q_Gᵀ``
    (exact, any λ ≥ 0 with S + λ > 0), ``dense() = kron(Q_A, Q_G) diag(vec S) kron(Q_A, Q_G)ᵀ``.
    """

    Q_A: jax.Array
    Q_G: jax.Array
    S: jax.Array

    @classmethod
    def of_factors(cls, A, G) -> KroneckerEigenbasis:
        """Exact eigenbasis of A ⊗ G: S = max(α γᵀ, 0) from ``eigh(A)``, ``eigh(G)``."""
        alpha, qa = jnp.linalg.eigh(A)
        gamma, qg = jnp.linalg.eigh(G)
        return cls(qa, qg, jnp.maximum(jnp.outer(alpha, gamma), 0.0))

    @property
    def shape(self):
        return self.S.shape

    def _like(self):
        return jnp.zeros(self.S.shape, self.S.dtype)

    def rotate(self, v):
        """Q_Aᵀ V Q_G: V's coordinates in the Kronecker eigenbasis."""
        return self.Q_A.T @ v @ self.Q_G

    def unrotate(self, c):
        """Q_A C Q_Gᵀ (inverse of ``rotate``)."""
        return self.Q_A @ c @ self.Q_G.T

    def mv(self, v):
        _check_matrix(v, self.shape)
        return self.unrotate(self.S * self.rotate(v))

    def solve(self, v, damping=0.0):
        check_damping(damping)
        _check_matrix(v, self.shape)
        return self.unrotate(self.rotate(v) / (self.S + damping))

    def dense(self):
        q = jnp.kron(self.Q_A, self.Q_G)
        return (q * self.S.ravel()) @ q.T

    def factorize(self):
        return self

    def min_eigenvalue(self):
        return jnp.min(self.S)

    def max_eigenvalue(self):
        return jnp.max(self.S)
