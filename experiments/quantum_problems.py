"""The quantum studies' problems: a QHBM ansatz, a loss family and its data.

``Problem``: the optimizers minimise ``loss_fn(params, data)``. Problems of one ``family``
share the model and ``loss_fn`` and differ only in ``data`` (β, a target state, shadow
estimates), which the jitted steps take as an argument: one compile serves the family.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp

import qgeom  # noqa: F401  (enables float64)


@dataclasses.dataclass(eq=False)
class Problem:
    """A training problem on a QHBM.

    The reported divergence is ``loss + offset`` (exact for VQT: D(ρ‖σ_β) = L + log Z_β; for
    QMHL from exact σ: D(σ‖ρ) = L − S(σ)) unless ``divergence(params)`` is given (e.g. when
    the loss is estimated from shots and D is evaluated exactly on the side).
    ``evaluate(params)`` returns the sparse, more expensive reports (fidelity, ...), never
    timed. ``key`` names the problem in checkpoints and must change whenever it does.
    """

    key: str
    family: str
    model: Any
    loss_fn: Callable
    data: Any = None
    offset: float = 0.0
    divergence: Callable | None = None
    evaluate: Callable | None = None

    def loss(self, params):
        """The training loss at ``params`` (jitted once per family)."""
        return jitted_loss(self)(params, self.data)


_LOSSES: dict = {}


def jitted_loss(problem: Problem):
    """``jax.jit(problem.loss_fn)``, one per family (the data are an argument)."""
    if problem.family not in _LOSSES:
        _LOSSES[problem.family] = jax.jit(problem.loss_fn)
    return _LOSSES[problem.family]


def ring(n: int):
    """The ring graph of the TFIM (networkx cycle)."""
    import networkx as nx

    if n < 3:
        raise ValueError(f"a ring needs n >= 3 spins, got n={n}")
    return nx.cycle_graph(n)


def make_model(n: int, ansatz: str = "cx3"):
    """QHBM for the studies.

    ``cxL``  — order-2 parity EBM + L hardware-efficient layers of RY, RZ rotations and a
               CNOT ladder (the reference ansatz ``cx3``: floors D* ≈ 0.05 at n = 4 and
               ≈ 0.2 at n = 6 for the β = 1 TFIM ring, as in the reference study);
    ``heL``  — order-2 parity EBM + L layers of RX, RZ and CZ brickwork (the reference study's
               layer, far less expressive here: D* ≈ 0.16 at n = 4, ≈ 0.72 at n = 6);
    ``qaoaL``— full-order parity EBM + L TFIM-structured layers on the ring;
    ``heLfull`` / ``cxLfull`` — full-order parity EBM (the expressive option at n = 4).
    """
    from qgeom.quantum import QHBM, circuits, ebm

    kinds = {"qaoa": {}, "he": {}, "cx": dict(rotations=("RY", "RZ"), entangler="CNOT")}
    kind = next((k for k in kinds if ansatz.startswith(k)), None)
    body = ansatz[len(kind):] if kind else ""
    full = body.endswith("full")
    if kind is None or not (body[:-4] if full else body).isdigit() or (kind == "qaoa" and full):
        raise ValueError(f"unknown ansatz {ansatz!r} (expected cxL, heL, cxLfull, heLfull or qaoaL, e.g. cx3)")
    layers = int(body[:-4] if full else body)
    if layers < 1:
        raise ValueError(f"ansatz {ansatz!r} needs at least one layer")
    if kind == "qaoa":
        return QHBM(ebm.Parity(n, n), circuits.tfim_qaoa(ring(n), layers))
    return QHBM(ebm.Parity(n, n if full else 2), circuits.hardware_efficient(n, layers, **kinds[kind]))


def n_params(model) -> int:
    """Number of real parameters of ``model``."""
    return int(jax.flatten_util.ravel_pytree(model.init(jax.random.PRNGKey(0)))[0].size)


@functools.cache
def _fidelity(model):
    from qgeom.quantum import fidelity

    return jax.jit(lambda p, sigma: fidelity(model.density_matrix(p), sigma))


def fidelity_fn(model, sigma):
    """params → squared fidelity F(ρ_params, σ) (PennyLane's convention); one compile per model."""
    fid = _fidelity(model)
    sigma = jnp.asarray(sigma)
    return lambda p: fid(p, sigma)
