"""The Fisher metric of the Gaussian family N(μ, Σ), in closed form.

In the coordinates (μ, Σ) the Fisher information of q = N(μ, Σ) is block-diagonal:

* mean block:        F_μμ = Σ⁻¹;
* covariance block:  F_ΣΣ[V] = ½ Σ⁻¹ sym(V) Σ⁻¹, sym(V) = (V + Vᵀ)/2,

(e.g. Magris, Shabani & Iosifidis 2022, "Quasi black-box variational inference",
§2; Khan & Lin 2017), so the natural gradient is F⁻¹∇ = (Σ ∇_μ, 2 Σ ∇_Σ Σ). ``cov`` is
held as a full n×n leaf; the antisymmetric directions carry no information (null
space), so ``solve(v, 0)`` is the pseudo-inverse there. For a diagonal Σ = diag(s)
with the variances s as the coordinates, F = diag(1/s) ⊕ diag(1/(2s²)).

Parameters are the dict ``{"mean": (n,), "cov": (n, n)}`` (or ``{"mean", "var"}`` for
the diagonal family); ``dense()`` follows ``ravel_pytree`` order (sorted keys: the
covariance entries, row-major, then the mean).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from qgeom.metrics.base import Metric, check_damping, check_like, pytree_dataclass


def _check_spd(cov, name: str) -> None:
    """``ValueError`` unless a concrete covariance is finite and symmetric positive definite."""
    try:
        c = np.asarray(cov, dtype=float)
    except (TypeError, jax.errors.TracerArrayConversionError):
        return
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{name} has non-finite entries")
    if c.ndim == 1:
        if np.any(c <= 0):
            raise ValueError(f"{name} must be positive, smallest entry {c.min():.3g}")
        return
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {c.shape}")
    if not np.allclose(c, c.T, rtol=1e-10, atol=1e-12 * np.abs(c).max()):
        raise ValueError(f"{name} is not symmetric")
    if np.linalg.eigvalsh(c)[0] <= 0:
        raise ValueError(f"{name} is not positive definite (smallest eigenvalue {np.linalg.eigvalsh(c)[0]:.3g})")


@pytree_dataclass
class GaussianFisher(Metric):
    """Fisher of N(mean, cov) over ``{"mean": (n,), "cov": (n, n)}`` (full covariance)."""

    mean: jax.Array
    cov: jax.Array

    def _like(self):
        return {"cov": self.cov, "mean": self.mean}

    def mv(self, v):
        check_like(v, self._like(), "v")
        prec = jnp.linalg.inv(self.cov)
        sym = 0.5 * (v["cov"] + v["cov"].T)
        return {"cov": 0.5 * prec @ sym @ prec, "mean": prec @ v["mean"]}

    def solve(self, v, damping=0.0):
        """(F + λI)⁻¹ v in the eigenbasis Σ = Q diag(s) Qᵀ: mean (1/s + λ)⁻¹, covariance
        entries (½/(s_i s_j) + λ)⁻¹ on the symmetric part, 1/λ on the antisymmetric part
        (dropped at λ = 0: the pseudo-inverse)."""
        check_damping(damping)
        check_like(v, self._like(), "v")
        s, q = jnp.linalg.eigh(self.cov)
        m = q @ ((q.T @ v["mean"]) / (1.0 / s + damping))
        w = q.T @ v["cov"] @ q
        sym, anti = 0.5 * (w + w.T), 0.5 * (w - w.T)
        sym = sym / (0.5 / jnp.outer(s, s) + damping)
        safe = jnp.where(damping > 0, damping, 1.0)
        anti = jnp.where(damping > 0, anti / safe, 0.0)
        return {"cov": q @ (sym + anti) @ q.T, "mean": m}

    def dense(self):
        n = self.mean.shape[0]
        prec = jnp.linalg.inv(self.cov)
        # coefficient of V_kl in (½ P sym(V) P)_ij = ¼(P_ik P_lj + P_il P_kj)
        cc = 0.25 * (jnp.einsum("ik,lj->ijkl", prec, prec) + jnp.einsum("il,kj->ijkl", prec, prec))
        return jax.scipy.linalg.block_diag(cc.reshape(n * n, n * n), prec)


@pytree_dataclass
class GaussianFisherDiag(Metric):
    """Fisher of N(mean, diag(var)) over ``{"mean": (n,), "var": (n,)}``: diag(1/var) ⊕ diag(1/(2var²))."""

    mean: jax.Array
    var: jax.Array

    def _like(self):
        return {"mean": self.mean, "var": self.var}

    def _diag(self):
        return {"mean": 1.0 / self.var, "var": 0.5 / self.var**2}

    def mv(self, v):
        check_like(v, self._like(), "v")
        return jax.tree.map(lambda d, x: d * x, self._diag(), v)

    def solve(self, v, damping=0.0):
        check_damping(damping)
        check_like(v, self._like(), "v")
        return jax.tree.map(lambda d, x: x / (d + damping), self._diag(), v)

    def dense(self):
        d = self._diag()
        return jnp.diag(jnp.concatenate([d["mean"], d["var"]]))


def gaussian_fisher(mean, cov) -> GaussianFisher | GaussianFisherDiag:
    """The closed-form Fisher metric of N(mean, cov); a 1-D ``cov`` means diag(cov).

    Raises ``ValueError`` if ``cov`` is not (finite, symmetric) positive definite or its
    shape does not match ``mean``.
    """
    mean, cov = jnp.asarray(mean), jnp.asarray(cov)
    if mean.ndim != 1:
        raise ValueError(f"mean must be a vector, got shape {mean.shape}")
    n = mean.shape[0]
    if cov.shape not in ((n,), (n, n)):
        raise ValueError(f"cov must have shape ({n},) or ({n}, {n}) to match the mean, got {cov.shape}")
    _check_spd(cov, "cov")
    return GaussianFisherDiag(mean, cov) if cov.ndim == 1 else GaussianFisher(mean, cov)
