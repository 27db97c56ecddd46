"""Per-axis tensor algebra shared by Shampoo, SOAP and TNT.

For an order-k tensor G of shape (n_1, …, n_k):

* ``axis_gram(G, i)`` — the contraction of G with itself over every axis but i,
  (G_(i) G_(i)ᵀ) of shape (n_i, n_i), where G_(i) is the mode-i unfolding. For a matrix,
  axis 0 gives G Gᵀ (Shampoo's L) and axis 1 gives Gᵀ G (Shampoo's R).
* ``mode_dot(G, M, i)`` — the mode-i product G ×_i M: every mode-i fibre x becomes M x.
* ``axis_sq_sum(G, i)`` — diag(axis_gram(G, i)) without forming it (diagonal factors).
* ``inverse_root(S, p, eps)`` — (S + ε λ_max(S) I)^{-1/p} by ``eigh`` (ε relative to the
  largest eigenvalue, as in distributed Shampoo's ``relative_matrix_epsilon``).
"""

from __future__ import annotations

import jax.numpy as jnp


def axis_gram(x, i):
    """G_(i) G_(i)ᵀ: contraction of ``x`` with itself over every axis but ``i``."""
    others = [a for a in range(x.ndim) if a != i]
    return jnp.tensordot(x, x, axes=(others, others))


def axis_sq_sum(x, i):
    """The diagonal of ``axis_gram(x, i)``: Σ over all axes but i of x²."""
    return jnp.sum(jnp.square(x), axis=tuple(a for a in range(x.ndim) if a != i))


def mode_dot(x, m, i):
    """G ×_i M: contract axis ``i`` of ``x`` with the columns of ``m``, keeping the axis order."""
    return jnp.moveaxis(jnp.tensordot(m, x, axes=([1], [i])), 0, i)


def inverse_root(s, p, eps):
    """(S + ε·λ_max(S)·I)^{-1/p} of a symmetric PSD matrix ``s`` by ``eigh``.

    Eigenvalues below zero (round-off) are clipped to 0 before the shift. Returns
    ``(root, ok)``; ``ok`` is False when λ_max ≤ 0 or the result is not finite (then the
    caller keeps its previous root).
    """
    w, v = jnp.linalg.eigh(s)
    lmax = w[-1]
    w = jnp.maximum(w, 0.0) + eps * lmax
    root = (v * w ** (-1.0 / p)) @ v.T
    ok = (lmax > 0) & jnp.all(jnp.isfinite(root))
    return root, ok


def diag_inverse_root(d, p, eps):
    """The diagonal analogue of ``inverse_root`` for a vector of non-negative entries."""
    dmax = jnp.max(d)
    root = (jnp.maximum(d, 0.0) + eps * dmax) ** (-1.0 / p)
    return root, (dmax > 0) & jnp.all(jnp.isfinite(root))
