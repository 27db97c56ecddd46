"""Geometric-locality initialization along sequences of targets (DESIGN.md §5).

Fit a sequence of nearby targets, starting each fit from the previous optimum ("warm")
or from a fresh random draw ("cold"), and record how many steps each point needs to reach a
tolerance and the fidelity it ends with (fidelity squared, PennyLane's convention).

* ``imaginary_time``: VQT of e^{−βH}/Z along a β sweep; tolerance on D(ρ‖σ_β), tracked
  exactly from the loss as L + log Z_β (L = β Tr ρH − S(ρ) = D(ρ‖σ_β) − log Z_β).
* ``real_time``: σ_k = V ρ_{k−1} V†, V = e^{−iΔt H_zz} e^{−iΔt H_x} (one Trotter step), where
  ρ_{k−1} is the previous TRAINED model (so errors propagate as in the experiment of Sbahi
  et al. 2022); each point is fitted by QMHL, tolerance on D(σ_k‖ρ) = L − S(σ_k).
  σ_0 is given (e.g. a thermal state).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from qgeom.optimize._checks import check_count, check_positive
from qgeom.optimize.runner import fit
from qgeom.quantum import entropy, fidelity, gibbs_state, hamiltonian_matrix, log_partition, qmhl_loss, vqt_loss


@dataclasses.dataclass
class SequencePoint:
    """One point of a sequence: the fitted ``params``; ``steps_to_tol`` (updates until the
    divergence first fell to ``tol``; None if never); ``divergence`` (per-step curve and
    ``final_divergence``); ``fidelity`` with the point's target (and, for real time,
    ``exact_fidelity`` with the exactly evolved state); ``label`` (β or time)."""

    label: float
    params: dict
    steps_to_tol: int | None
    divergence: list
    final_divergence: float
    fidelity: float
    exact_fidelity: float | None = None


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
        loss = vqt_loss(model, H, beta)
        log_z = float(log_partition(h, beta))
        start = _start(model, warm, previous, k)
        res = fit(loss, start, optimizer, steps)
        curve = [v + log_z for v in res.loss] + [res.final_loss + log_z]
        sigma = gibbs_state(h, beta)
        fid = float(fidelity(model.density_matrix(res.params), sigma))
        out.append(SequencePoint(beta, res.params, _steps_to(curve, tol), curve, curve[-1], fid))
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
    key = jax.random.PRNGKey(0) if key is None else key
    v = trotter_step(H_zz, H_x, dt, model.wires)
    prev_state = jnp.asarray(sigma0, jnp.complex128)
    exact = prev_state
    out, previous = [], initial
    for k, sub in enumerate(jax.random.split(key, n_points), start=1):
        target = v @ prev_state @ v.conj().T
        target = 0.5 * (target + target.conj().T)
        exact = v @ exact @ v.conj().T
        loss = qmhl_loss(model, target)
        s_target = float(entropy(target))
        start = _start(model, warm, previous, sub)
        res = fit(loss, start, optimizer, steps)
        curve = [val - s_target for val in res.loss] + [res.final_loss - s_target]
        rho = model.density_matrix(res.params)
        out.append(SequencePoint(k * dt, res.params, _steps_to(curve, tol), curve, curve[-1],
                                 float(fidelity(rho, target)), float(fidelity(rho, exact))))
        previous, prev_state = res.params, rho
    return out
