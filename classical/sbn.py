"""Sigmoid belief networks (SBNs) and their exact unit-wise Fisher metric.

An SBN is a chain of Bernoulli layers h₀ → h₁ → … → h_m: unit u of layer l + 1 fires with
probability q_u = σ(h̄_lᵀ w_u), h̄_l = [h_l; 1] (bias folded in as the last input row), so
the parameters are a list of matrices W_l of shape (n_l + 1, n_{l+1}). A generative SBN
starts from an empty h₀ (its first matrix, shape (1, n_top), holds the top layer's prior
logits); a recognition SBN starts from the data. Probabilities are clipped to
[clip, 1 − clip] (``clip_probs`` of the NRWS reference code, 1e-3 for MNIST).

**Fisher.** log p(h₁…h_m | h₀) = Σ_{l,u} log Bern(h_{l+1,u}; q_u) and each unit's
parameters w_u appear in one term only, so the Fisher of the whole network is
block-diagonal over units, *exactly* (Várady, Volpi, Malagò & Ay 2022, "Natural
reweighted wake-sleep", Neural Networks 155, §3): F_u = E[q_u(1 − q_u) h̄ h̄ᵀ].
``UnitwiseFisher`` holds a sample estimate F_u = Σ_n c_nu h̄_n h̄_nᵀ (c_nu = weight_n ·
q_nu(1 − q_nu), weights summing to 1) and solves (F_u + αI)⁻¹ g per unit directly when the
fan-in d ≤ N, else by Woodbury on the N samples with Ũ_u = diag(√c_u) H̄:
(Ũᵀ Ũ + αI)⁻¹ g = α⁻¹[g − Ũᵀ(αI + ŨŨᵀ)⁻¹Ũ g] — no structural approximation either way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qgeom.metrics.base import Metric, check_damping, check_like, pytree_dataclass


def _bar(h):
    """h̄ = [h; 1]."""
    return jnp.concatenate([h, jnp.ones(h.shape[:-1] + (1,), h.dtype)], axis=-1)


def layer_probs(w, h, clip):
    """Clipped Bernoulli means σ(h̄ᵀW) of the next layer given ``h`` (N, n_in)."""
    return jnp.clip(jax.nn.sigmoid(_bar(h) @ w), clip, 1.0 - clip)


def sample(ws, h0, key, clip):
    """Ancestral sample [h₀, h₁, …, h_m] of the chain (float 0/1 arrays)."""
    layers = [h0]
    for w, k in zip(ws, jax.random.split(key, len(ws))):
        q = layer_probs(w, layers[-1], clip)
        layers.append((jax.random.uniform(k, q.shape, q.dtype) < q).astype(q.dtype))
    return layers


def log_prob(ws, layers, clip):
    """log p(h₁, …, h_m | h₀) per sample for given layer values (length m + 1 list)."""
    total = 0.0
    for w, h_in, h_out in zip(ws, layers[:-1], layers[1:]):
        q = layer_probs(w, h_in, clip)
        total = total + jnp.sum(h_out * jnp.log(q) + (1.0 - h_out) * jnp.log1p(-q), axis=-1)
    return total


@pytree_dataclass
class UnitwiseFisher(Metric):
    """F = ⊕_u Σ_n coef[n, u] h̄_n h̄_nᵀ over a matrix W (d, U) whose column u is unit u.

    ``inputs`` is H̄ (N, d) (the layer's input samples with the bias 1 appended),
    ``coef`` (N, U) the weighted Bernoulli variances. ``dense()`` is in ``ravel`` order
    of W (row-major: entry (i, u) at i·U + u).
    """

    inputs: jax.Array
    coef: jax.Array

    def _like(self):
        return jnp.zeros((self.inputs.shape[1], self.coef.shape[1]), self.inputs.dtype)

    def _check(self, v):
        check_like(v, self._like(), "v")

    def blocks(self):
        """The U per-unit blocks F_u, shape (U, d, d)."""
        return jnp.einsum("nu,ni,nj->uij", self.coef, self.inputs, self.inputs)

    def mv(self, v):
        self._check(v)
        return self.inputs.T @ (self.coef * (self.inputs @ v))

    def solve(self, v, damping=0.0):
        """(F_u + αI)⁻¹ v_u for every column; Woodbury on the samples when N < d.

        α = 0 needs every F_u invertible (N ≥ d and full-rank inputs)."""
        check_damping(damping)
        self._check(v)
        n, d = self.inputs.shape
        if n < d and not isinstance(damping, jax.core.Tracer) and float(damping) == 0.0:
            raise ValueError(f"F_u has rank <= {n} < fan-in {d}: solve needs damping > 0")
        if n >= d:
            mats = self.blocks() + damping * jnp.eye(d, dtype=v.dtype)
            chol = jnp.linalg.cholesky(mats)
            x = jax.vmap(lambda c, b: jax.scipy.linalg.cho_solve((c, True), b))(chol, v.T)
            return x.T
        root = jnp.sqrt(self.coef)  # (N, U): Ũ_u = root[:, u] ∘ H̄
        gram = self.inputs @ self.inputs.T  # H̄H̄ᵀ, shared by all units
        uv = root * (self.inputs @ v)  # Ũ_u v_u for every u, (N, U)

        def unit(r, b):
            core = r[:, None] * gram * r[None, :] + damping * jnp.eye(n, dtype=gram.dtype)
            return jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(core), True), b)

        z = jax.vmap(unit, in_axes=(1, 1), out_axes=1)(root, uv)  # (N, U)
        return (v - self.inputs.T @ (root * z)) / damping

    def dense(self):
        d, u = self.inputs.shape[1], self.coef.shape[1]
        eye = jnp.eye(u, dtype=self.inputs.dtype)
        return jnp.einsum("uij,uv->iujv", self.blocks(), eye).reshape(d * u, d * u)


@pytree_dataclass
class SBNFisher(Metric):
    """The SBN's Fisher over its list of matrices: block-diagonal over layers and units."""

    layers: tuple

    def _like(self):
        return [f._like() for f in self.layers]

    def _check_list(self, v):
        if not isinstance(v, (list, tuple)) or len(v) != len(self.layers):
            raise ValueError(f"expected a list of {len(self.layers)} layer matrices")

    def mv(self, v):
        self._check_list(v)
        return [f.mv(x) for f, x in zip(self.layers, v)]

    def solve(self, v, damping=0.0):
        self._check_list(v)
        return [f.solve(x, damping) for f, x in zip(self.layers, v)]

    def dense(self):
        return jax.scipy.linalg.block_diag(*[f.dense() for f in self.layers])


def sbn_fisher(ws, layers, clip, weights=None) -> SBNFisher:
    """Unit-wise Fisher of the chain ``ws`` estimated on the samples ``layers`` (as from
    ``sample``), each sample weighted by ``weights`` (default 1/N; pass p(s) to get the
    exact Fisher by enumeration)."""
    n = layers[0].shape[0]
    wts = jnp.full((n,), 1.0 / n, layers[0].dtype) if weights is None else weights
    blocks = []
    for w, h_in in zip(ws, layers[:-1]):
        q = layer_probs(w, h_in, clip)
        blocks.append(UnitwiseFisher(_bar(h_in), wts[:, None] * q * (1.0 - q)))
    return SBNFisher(tuple(blocks))
