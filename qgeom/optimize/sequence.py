"""Geometric-locality initialization along sequences of targets.

Fit a sequence of nearby targets, starting each fit from the previous optimum ("warm")
or from a fresh random draw ("cold"), and record how many steps each point needs to reach a
tolerance and the fidelity it ends with (fidelity squared, PennyLane's convention).

* ``imaginary_time``: VQT of e^{−βH}/Z along a β sweep; tolerance on D(ρ‖σ_β), tracked
  exactly from the loss as L + log Z_β (L = β Tr ρH − S(ρ) = D(ρ‖σ_β) − log Z_β).
* ``real_time``: σ_k = V ρ_{k−1} V†, V = e^{−iΔt H_zz} e^{−iΔt H_x} (one Trotter step), where
  ρ_{k−1} is the previous TRAINED model (so errors propagate as in the experiment of Sbahi
  et al. 2022); each point is fitted by QMHL, tolerance on D(σ_k‖ρ) = L − S(σ_k).
  σ_0 is given (e.g. a thermal state).

Compiled once: the points of a sequence differ only in their target (β, or σ_k), which
the jitted step takes as an argument (``fit_vqt`` / ``fit_qmhl``). One step is compiled per
(model, optimizer object, loss family) and reused by every point, every warm and cold chain
and every later call with the same optimizer object.
"""

from __future__ import annotations

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import optax

from qgeom.optimize._checks import check_count, check_positive
from qgeom.optimize.runner import FitResult, fit, make_step
from qgeom.quantum import (
    entropy,
    fidelity,
    gibbs_state,
    hamiltonian_matrix,
    log_partition,
    qmhl_loss,
    vqt_loss,
)
from qgeom.quantum.thermo import check_density_matrix


@dataclasses.dataclass
class SequencePoint:
    """One point of a sequence: the fitted ``params``; ``steps_to_tol`` (updates until the
    divergence first fell to ``tol``; None if never); ``divergence`` (per-step curve and
    ``final_divergence``); ``fidelity`` with the point's target (and, for real time,
    ``exact_fidelity`` with the exactly evolved state); ``label`` (β or time); ``status``
    of the fit ("completed" or the non-finite quantity and step, as ``fit`` reports it)."""

    label: float
    params: dict
    steps_to_tol: int | None
    divergence: list
    final_divergence: float
    fidelity: float
    exact_fidelity: float | None = None
    status: str = "completed"


# ----------------------------------------------------------------------------- compiled once

_COMPILED: dict = {}


def _compiled(model, optimizer, family: str, H=None):
    """(loss, step): ``runner.make_step``'s jitted step, built once per (model, optimizer,
    family) with the target as an argument: step(params, state, data).
    ``family`` "vqt" (data = β; H fixed, keyed by its matrix) or "qmhl" (data = σ).
    """
    key = (model, optimizer, family)
    if family == "vqt":
        key += (hashlib.sha1(np.asarray(hamiltonian_matrix(H, model.wires)).tobytes()).hexdigest(),)
    if key in _COMPILED:
        return _COMPILED[key]
    if family == "vqt":
        obs = model.prepare(H)

        def loss_fn(params, beta):
            return vqt_loss(model, obs, beta)(params)
    else:
        def loss_fn(params, sigma):
            return qmhl_loss(model, sigma)(params)
    if not isinstance(optimizer, optax.GradientTransformationExtraArgs):
        optimizer = optax.with_extra_args_support(optimizer)
    _COMPILED[key] = loss_fn, make_step(loss_fn, optimizer)
    return _COMPILED[key]


def _fit(compiled, optimizer, params, data, steps) -> FitResult:
    loss_fn, step = compiled
    return fit(loss_fn, params, optimizer, steps, data=(data,), step=step)


def fit_vqt(model, H, beta, optimizer, steps, params) -> FitResult:
    """``fit(vqt_loss(model, H, beta), params, optimizer, steps)`` with β traced: one compile
    serves every β (and every call with the same model, H and optimizer object)."""
    beta = check_positive("beta", beta)
    steps = check_count("steps", steps)
    vqt_loss(model, H, beta)  # validates H and the memory needed
    return _fit(_compiled(model, optimizer, "vqt", H), optimizer, params, jnp.asarray(beta), steps)


def fit_qmhl(model, sigma, optimizer, steps, params) -> FitResult:
    """``fit(qmhl_loss(model, sigma), params, optimizer, steps)`` with the density matrix σ traced:
    one compile serves every target (and every call with the same model and optimizer object)."""
    steps = check_count("steps", steps)
    qmhl_loss(model, sigma)  # validates σ (shape, Hermitian, unit trace, PSD) and the memory needed
    return _fit(_compiled(model, optimizer, "qmhl"), optimizer, params, jnp.asarray(sigma, jnp.complex128), steps)


# ----------------------------------------------------------------------------- sequences


def _steps_to(curve, tol):
    hits = np.nonzero(np.asarray(curve) <= tol)[0]
    return int(hits[0]) if hits.size else None


def _start(model, warm, previous, key):
    return previous if (warm and previous is not None) else model.init(key)


def imaginary_time(model, H, betas, optimizer, steps, tol=1e-2, warm=True, key=None, initial=None):
    """VQT along ``betas`` with ``optimizer`` (any transformation ``fit`` accepts).

    Each point runs ``steps`` iterations (no early stop, so warm and cold get equal budgets)
    from the previous optimum (``warm``) or a fresh ``model.init`` (``key`` split per point).
    ``initial`` starts the first point (default: ``model.init``). Returns a list of
    ``SequencePoint`` (label = β).
    """
    betas = [check_positive("beta", b) for b in betas]
    steps = check_count("steps", steps)
    tol = check_positive("tol", tol)
    key = jax.random.PRNGKey(0) if key is None else key
    h = hamiltonian_matrix(H, model.wires)
    out, previous = [], initial
    for beta, k in zip(betas, jax.random.split(key, len(betas))):
        log_z = float(log_partition(h, beta))
        res = fit_vqt(model, H, beta, optimizer, steps, _start(model, warm, previous, k))
        curve = [v + log_z for v in res.loss] + [res.final_loss + log_z]
        fid = float(fidelity(model.density_matrix(res.params), gibbs_state(h, beta)))
        out.append(SequencePoint(beta, res.params, _steps_to(curve, tol), curve, curve[-1], fid, status=res.status))
        previous = res.params
    return out


def trotter_step(H_zz, H_x, dt, wires):
    """V = e^{−iΔt H_zz} e^{−iΔt H_x} as a dense matrix."""
    hz, hx = hamiltonian_matrix(H_zz, wires), hamiltonian_matrix(H_x, wires)
    return jsl.expm(-1j * dt * hz) @ jsl.expm(-1j * dt * hx)


def real_time(model, H_zz, H_x, dt, n_points, optimizer, steps, sigma0, tol=1e-2, warm=True, key=None,
              initial=None):
    """QMHL along a Trotterized real-time evolution (module docstring).

    ``sigma0``: the initial density matrix; ``initial``: parameters of a model fitted to it
    (the warm start of the first point; default ``model.init``). Point k fits
    σ_k = V ρ_{k−1} V† with ρ_{k−1} the previous trained model (σ_0 evolved once for k = 1).
    Returns a list of ``SequencePoint`` (label = kΔt) whose ``exact_fidelity`` compares the
    model with V^k σ_0 V^{†k}.
    """
    dt = check_positive("dt", dt)
    n_points = check_count("n_points", n_points)
    steps = check_count("steps", steps)
    tol = check_positive("tol", tol)
    check_density_matrix(sigma0, "sigma0")
    key = jax.random.PRNGKey(0) if key is None else key
    v = trotter_step(H_zz, H_x, dt, model.wires)
    prev_state = jnp.asarray(sigma0, jnp.complex128)
    exact = prev_state
    out, previous = [], initial
    for k, sub in enumerate(jax.random.split(key, n_points), start=1):
        target = v @ prev_state @ v.conj().T
        target = 0.5 * (target + target.conj().T)
        exact = v @ exact @ v.conj().T
        s_target = float(entropy(target))
        res = fit_qmhl(model, target, optimizer, steps, _start(model, warm, previous, sub))
        curve = [val - s_target for val in res.loss] + [res.final_loss - s_target]
        rho = model.density_matrix(res.params)
        out.append(SequencePoint(k * dt, res.params, _steps_to(curve, tol), curve, curve[-1],
                                 float(fidelity(rho, target)), float(fidelity(rho, exact)), res.status))
        previous, prev_state = res.params, rho
    return out
