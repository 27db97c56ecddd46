r"""Matrix-free products with the QHBM circuit BKM block, and its Nyström approximation.

With T_v = Σ_j v_j T_j = i U†∂_vU (the generator of a tangent direction v of the circuit
parameters, in the model's eigenframe) and W_kl = (p_k − p_l)(log p_k − log p_l) ≥ 0, the
circuit block of the exact BKM metric (``qgeom.metrics.qhbm.qhbm_bkm``) is

    G_ij = Σ_kl W_kl Re[(T_i)_kl (T_j)_lk],   i.e.   vᵀGv = Σ_kl W_kl |(T_v)_kl|²,

so G·v = ∇_v ½ Σ_kl W_kl |(T_v)_kl|². :func:`circuit_bkm_mv` evaluates it without forming
any T_j or G — a few circuit simulations on a 2ⁿ×2ⁿ block per product, independent of the
number of parameters P_φ: by the frame sweeps of ``qgeom.metrics.qhbm_frames`` when every
parameterized gate acts on one qubit, else by one tangent (``jax.linearize``) of the
simulation of U(φ), U† applied by the reversed simulation (``Circuit.apply_adjoint``), and
the reverse pass of both.

:func:`qhbm_bkm_nystrom` feeds these products to the randomized Nyström approximation
``qgeom.metrics.lowrank.nystrom`` (Halko, Martinsson & Tropp 2011; Tropp et al. 2017):
rank k, ℓ = k + oversample test vectors, ``power_iters`` = q subspace iterations,
ℓ(q + 2) products. The EBM block stays exact (the classical Fisher, cheap). The result
is a ``BlockDiagonal`` metric whose circuit block is low-rank, Ĝ ≼ G, with an exact
Woodbury ``solve`` — for amortized natural gradient, e.g.
``natural_gradient(lambda p: qhbm_bkm_nystrom(model, p, rank, key), lr, refresh_every=k)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from qgeom.metrics.base import BlockDiagonal, DenseMetric, check_like
from qgeom.metrics.lowrank import nystrom
from qgeom.metrics.qhbm import _check_qhbm_params, ebm_fisher_matrix
from qgeom.metrics.qhbm_frames import frame_mv


def _bkm_weights(ebm, theta):
    """W_kl = (p_k − p_l)(log p_k − log p_l), log p exact (log-softmax of −E)."""
    log_p = jax.nn.log_softmax(-ebm.energies(theta))
    p = jnp.exp(log_p)
    return (p[:, None] - p[None, :]) * (log_p[:, None] - log_p[None, :])


def circuit_bkm_mv(model, params):
    """``mv(v) = G_φ v`` for the circuit block of the QHBM BKM metric, matrix-free.

    ``v`` has the shape of ``params["phi"]``; ``mv`` is linear, jit- and vmap-able. When every
    parameterized gate acts on one qubit it uses the frame sweeps of
    ``qgeom.metrics.qhbm_frames.frame_mv`` (≈ 4 circuit simulations per product); otherwise
    the simulation of U(φ) is linearized once, here, and each product is a tangent, an adjoint
    simulation and the reverse pass of both. Equals ``qhbm_bkm(model, params)
    .blocks["phi"].mv(v)`` up to rounding (tests/test_qhbm_lowrank.py, tests/test_qhbm_frames.py).
    """
    _check_qhbm_params(params)
    circuit, theta, phi = model.circuit, params["theta"], params["phi"]
    circuit.check_params(phi)
    model.ebm.check_params(theta)
    w = _bkm_weights(model.ebm, theta)
    framed = frame_mv(circuit, phi, w)
    if framed is not None:  # every parameterized gate acts on one qubit: the frame sweeps

        def mv_frames(v):
            check_like(v, phi, "v")
            return framed(jnp.asarray(v, dtype=phi.dtype).reshape(-1)).reshape(phi.shape)

        return mv_frames
    _, tangent = jax.linearize(circuit.unitary, phi)

    def quadratic(v):  # ½ Σ W |T_v|², T_v = i U†∂_vU (the factor i drops out of |·|²)
        return 0.5 * jnp.sum(w * jnp.abs(circuit.apply_adjoint(phi, tangent(v))) ** 2)

    grad = jax.grad(quadratic)

    def mv(v):
        check_like(v, phi, "v")
        return grad(jnp.asarray(v, dtype=phi.dtype))

    return mv


def qhbm_bkm_nystrom(model, params, rank, key, power_iters=1, oversample=5):
    """BKM metric of a QHBM with a rank-``rank`` Nyström circuit block: ``BlockDiagonal``.

    ``{"theta": DenseMetric(classical Fisher of p_θ), "phi": LowRankPlusDiagonal}``. The
    circuit block Ĝ = (GQ)(QᵀGQ)⁺(GQ)ᵀ, truncated to its ``rank`` leading eigenpairs, uses
    ℓ(q + 2) matrix-free products (ℓ = rank + ``oversample`` ≤ P_φ, q = ``power_iters``);
    0 ≼ Ĝ ≼ G, and with probability ≥ 1 − 6·p⁻ᵖ (p = oversample)
    ‖G − Ĝ‖ ≤ ([1 + 11√(ℓ P_φ)]^{2/(2q+3)} + 1) λ_{rank+1}(G). With rank = P_φ it is G
    up to rounding. ``key``: a ``jax.random`` key for the Gaussian test matrix.
    """
    _check_qhbm_params(params)
    n_phi = int(np.prod(jnp.shape(params["phi"])))
    if not (isinstance(rank, (int, np.integer)) and 1 <= rank <= n_phi):
        raise ValueError(f"rank must be an integer in [1, {n_phi}] (the circuit parameters), got {rank!r}")
    mv = circuit_bkm_mv(model, params)
    theta = params["theta"]
    f_theta = ebm_fisher_matrix(model.ebm, theta)
    g_phi = nystrom(mv, params["phi"], int(rank), key, power_iters=power_iters, oversample=oversample)
    return BlockDiagonal({"theta": DenseMetric(f_theta, theta), "phi": g_phi})
