"""Quantum metrics: Fubini–Study for pure states, Petz monotone metrics for mixed states.

Pure states ψ(θ):  G_ij = Re(⟨∂iψ|∂jψ⟩ − ⟨∂iψ|ψ⟩⟨ψ|∂jψ⟩), PennyLane's ``qml.metric_tensor``
convention; the quantum Fisher information (SLD) of a pure state is 4·G.

Mixed states ρ(θ) = Σ_k p_k |k⟩⟨k|: every monotone metric (Petz 1996, "Monotone metrics on
matrix spaces") is

    G_ij = Σ_{k,l} K(p_k, p_l) Re[(∂iρ)_kl (∂jρ)_lk],   entries in ρ's eigenbasis,

with K(p, q) = 1/(q f(p/q)) for an operator-monotone f:

    SLD (Bures)      f(t) = (1+t)/2           K = 2/(p+q)
    BKM (Kubo–Mori)  f(t) = (t−1)/log t       K = (log p − log q)/(p − q)
    Wigner–Yanase    f(t) = ((1+√t)/2)²       K = 4/(√p+√q)²

all with K(p, p) = 1/p. Normalization: for diagonal ρ every one reduces to the classical
Fisher Σ_k (∂p_k)²/p_k, so the SLD metric here is the full SLD quantum Fisher information
(= 4·Fubini–Study in the pure-state limit), and the BKM metric is the Hessian of the
relative entropy D(ρ_θ‖ρ_θ') at θ' = θ.

Numerics. Eigenvalues are clipped at ``floor`` (default 1e-12; ρ has unit trace, so this
is relative to the spectrum's scale) before entering K, and pairs with BOTH eigenvalues
below the floor are dropped: for any family that stays PSD, (∂ρ)_kl vanishes on ρ's
kernel, so this drop is exact and keeps round-off from being amplified by 1/floor.
The BKM kernel is evaluated as K = e^{−m}/sinhc(d/2) with m = (log p + log q)/2,
d = log p − log q and a series for sinhc near 0 — no 0/0 at p = q, in values or
gradients. (Derivatives of the metric itself flow through ``eigh``, whose JAX derivative
is undefined at exactly degenerate spectra.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from qgeom.metrics.base import Metric, check_like, pytree_dataclass

KINDS = ("sld", "bkm", "wy")
DEFAULT_FLOOR = 1e-12


def _sinhc(x):
    """sinh(x)/x with a Taylor series for |x| < 1e-3 (finite values and gradients at 0)."""
    small = jnp.abs(x) < 1e-3
    safe = jnp.where(small, 1.0, x)
    x2 = x * x
    return jnp.where(small, 1.0 + x2 / 6.0 + x2 * x2 / 120.0, jnp.sinh(safe) / safe)


def petz_kernel(p, q, kind="bkm"):
    """Petz kernel K(p, q) = 1/(q f(p/q)) for p, q > 0 (broadcasting); K(p, p) = 1/p.

    sld: 2/(p+q);  wy: 4/(√p+√q)²;  bkm: (log p − log q)/(p − q) = e^{−m}/sinhc(d/2),
    m = (log p + log q)/2, d = log p − log q (stable at p = q).
    """
    if kind == "sld":
        return 2.0 / (p + q)
    if kind == "wy":
        return 4.0 / (jnp.sqrt(p) + jnp.sqrt(q)) ** 2
    if kind == "bkm":
        lp, lq = jnp.log(p), jnp.log(q)
        return jnp.exp(-0.5 * (lp + lq)) / _sinhc(0.5 * (lp - lq))
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _concrete(x):
    try:
        return np.asarray(x)
    except (TypeError, jax.errors.TracerArrayConversionError):
        return None


DENSITY_ATOL = 1e-8


def check_density_matrix(rho, name: str = "rho", atol: float = DENSITY_ATOL) -> None:
    """Raise ``ValueError`` unless a concrete ``rho`` is a square, Hermitian, PSD, unit-trace matrix.

    One tolerance ``atol`` for all three rounding checks: max|ρ − ρ†| ≤ atol,
    |tr ρ − 1| ≤ atol, λ_min ≥ −atol. Tracers pass unchecked (checks run on concrete input).
    """
    r = _concrete(rho)
    if r is None:
        return
    what = f"{name} is not a density matrix"
    if r.ndim != 2 or r.shape[0] != r.shape[1]:
        raise ValueError(f"{what}: shape {r.shape} is not square")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{what}: non-finite entries")
    herm = np.max(np.abs(r - r.conj().T), initial=0.0)
    if herm > atol:
        raise ValueError(f"{what}: not Hermitian (max |ρ − ρ†| = {herm:.3g})")
    tr = np.trace(r).real
    if abs(tr - 1.0) > atol:
        raise ValueError(f"{what}: trace is {tr:.12g}, not 1")
    lmin = np.linalg.eigvalsh(0.5 * (r + r.conj().T))[0] if r.size else 0.0
    if lmin < -atol:
        raise ValueError(f"{what}: not positive semi-definite (negative eigenvalue {lmin:.3g}, tol {atol:g})")


def _real_vjp(fn, params, x):
    """The pytree of Re⟨∂_iF, x⟩ = Σ Re(∂_iF)·Re(x) + Im(∂_iF)·Im(x) for F = fn(params) complex."""
    def split(p):
        z = fn(p)
        return jnp.real(z), jnp.imag(z)

    _, vjp = jax.vjp(split, params)
    (out,) = vjp((jnp.real(x), jnp.imag(x)))
    return out


def _kernel_matrix(p, kind, floor):
    """K_kl on the clipped spectrum, zero where both eigenvalues are below ``floor``."""
    pc = jnp.maximum(p, floor)
    k = petz_kernel(pc[:, None], pc[None, :], kind)
    live = (p[:, None] > floor) | (p[None, :] > floor)
    return jnp.where(live, k, 0.0)


@pytree_dataclass
class PetzMetric(Metric):
    """Monotone metric of ``kind`` for ρ(θ) = rho_fn(params) = V diag(p) V† (see module docstring).

    ``mv`` costs one JVP and one VJP of ``rho_fn`` plus two D×D basis changes;
    ``dense`` one ``jacfwd`` of ``rho_fn`` and a weighted contraction
    G = Re(R̃ R̃†), R̃_i = √K ∘ (V† ∂iρ V).
    """

    params: object
    evals: jax.Array
    evecs: jax.Array
    rho_fn: object = None
    kind: str = "bkm"
    floor: float = DEFAULT_FLOOR

    meta_fields = ("rho_fn", "kind", "floor")

    def _like(self):
        return self.params

    def kernel(self):
        """The D×D matrix K(p_k, p_l) used by this metric."""
        return _kernel_matrix(self.evals, self.kind, self.floor)

    def mv(self, v):
        check_like(v, self.params, "v")
        v_ = self.evecs
        _, drho = jax.jvp(self.rho_fn, (self.params,), (v,))
        x = v_ @ (self.kernel() * (v_.conj().T @ drho @ v_)) @ v_.conj().T
        return _real_vjp(self.rho_fn, self.params, x)

    def eigenframe_derivatives(self):
        """R with R[i] = V† ∂iρ V, shape (P, D, D), from one ``jacfwd`` of ``rho_fn``."""
        flat, unravel = ravel_pytree(self.params)
        drho = jax.jacfwd(lambda t: self.rho_fn(unravel(t)))(flat)  # (D, D, P)
        drho = jnp.moveaxis(drho, -1, 0)
        return self.evecs.conj().T @ drho @ self.evecs

    def dense(self):
        r = self.eigenframe_derivatives()
        w = (jnp.sqrt(self.kernel()) * r).reshape(r.shape[0], -1)
        return w.real @ w.real.T + w.imag @ w.imag.T


def petz(rho_fn, params, kind="bkm", floor=DEFAULT_FLOOR):
    """Petz monotone metric ``kind`` ∈ {"sld", "bkm", "wy"} of ρ(θ) = rho_fn(params) (D×D).

    G_ij = Σ_{k,l} K(p_k, p_l) Re[(∂iρ)_kl (∂jρ)_lk] in ρ's eigenbasis (Petz 1996; kernels in
    the module docstring). ρ is validated at ``params`` (square, Hermitian, PSD, unit trace →
    otherwise ``ValueError``), diagonalized once; eigenvalues are clipped at ``floor``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (0.0 < float(floor) < 1.0):
        raise ValueError(f"floor must lie in (0, 1), got {floor!r}")
    rho = rho_fn(params)
    check_density_matrix(rho)
    p, v = jnp.linalg.eigh(0.5 * (rho + jnp.conj(rho).T))
    return PetzMetric(params, p, v, rho_fn=rho_fn, kind=kind, floor=float(floor))


def bkm(rho_fn, params, floor=DEFAULT_FLOOR):
    """Bogoliubov–Kubo–Mori metric: ``petz(rho_fn, params, "bkm")``.

    G_ij = Σ_{k,l} (log p_k − log p_l)/(p_k − p_l) Re[(∂iρ)_kl (∂jρ)_lk] = ∂²D(ρ_θ‖ρ_θ')/∂θ'_i∂θ'_j
    at θ' = θ (Petz 1994, "Geometry of canonical correlation on the state space of a quantum
    system"; Sbahi et al. 2022, "Provably efficient variational generative modeling of quantum
    many-body systems via quantum-probabilistic information geometry").
    """
    return petz(rho_fn, params, "bkm", floor)


@pytree_dataclass
class FubiniStudy(Metric):
    """Fubini–Study metric G_ij = Re(⟨∂iψ|∂jψ⟩ − ⟨∂iψ|ψ⟩⟨ψ|∂jψ⟩) of ψ(θ) = state_fn(params)."""

    params: object
    psi: jax.Array
    state_fn: object = None

    meta_fields = ("state_fn",)

    def _like(self):
        return self.params

    def mv(self, v):
        check_like(v, self.params, "v")
        _, dpsi = jax.jvp(self.state_fn, (self.params,), (v,))
        w = dpsi - self.psi * jnp.vdot(self.psi, dpsi)
        return _real_vjp(self.state_fn, self.params, w)

    def jacobian(self):
        """J = ∂ψ/∂θ, shape (D, P) in ravel order."""
        flat, unravel = ravel_pytree(self.params)
        return jax.jacfwd(lambda t: self.state_fn(unravel(t)))(flat)

    def dense(self):
        j = self.jacobian()
        a = jnp.conj(self.psi) @ j  # ⟨ψ|∂jψ⟩
        return (jnp.conj(j).T @ j - jnp.outer(jnp.conj(a), a)).real


def fubini_study(state_fn, params):
    """Fubini–Study metric of the pure state ψ(θ) = state_fn(params), shape (D,) complex.

    G_ij = Re(⟨∂iψ|∂jψ⟩ − ⟨∂iψ|ψ⟩⟨ψ|∂jψ⟩) — the convention of PennyLane's
    ``qml.metric_tensor`` (Stokes et al. 2020, "Quantum natural gradient"); the quantum
    Fisher information is 4·G. ψ must be normalized (checked at ``params``).
    """
    psi = state_fn(params)
    c = _concrete(psi)
    if c is not None:
        if c.ndim != 1:
            raise ValueError(f"state_fn must return a 1-D state vector, got shape {c.shape}")
        norm = np.linalg.norm(c)
        if abs(norm - 1.0) > 1e-6:
            raise ValueError(f"state_fn returned a state of norm {norm:.8g}, expected 1")
    return FubiniStudy(params, psi, state_fn=state_fn)
