"""Matrix-free circuit BKM products and the Nyström BKM metric against the exact ``qhbm_bkm``.

* ``circuit_bkm_mv`` (a tangent of the simulated U, U† by the reversed simulation, reverse
  mode) vs the dense circuit block of ``qhbm_bkm`` (per-gate generators, one Gram product);
* ``qhbm_bkm_nystrom``: full rank reproduces the block; rank k obeys Eckart–Young from below
  (error ≥ λ_{k+1}), the stated Halko–Martinsson–Tropp bound from above, and 0 ≼ Ĝ ≼ G;
  its EBM block is the exact Fisher and its solve is that of the dense Ĝ + λI.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import qgeom  # noqa: F401  (float64)
from qgeom.metrics import qhbm_bkm
from qgeom.metrics.qhbm_lowrank import circuit_bkm_mv, qhbm_bkm_nystrom
from qgeom.quantum import QHBM, Parity, hardware_efficient

EPS = np.finfo(float).eps


@pytest.fixture(scope="module")
def setup():
    """n = 3, order-2 parity EBM, 2 RY/RZ + CNOT-ladder layers: P_φ = 12, G_φ well conditioned."""
    model = QHBM(Parity(3, 2), hardware_efficient(3, 2, rotations=("RY", "RZ"), entangler="CNOT"))
    params = model.init(jax.random.PRNGKey(1))
    exact = jax.jit(lambda p: [qhbm_bkm(model, p).blocks[k].dense() for k in ("theta", "phi")])(params)
    g = np.asarray(exact[1])
    evals = np.linalg.eigvalsh(g)
    assert evals[0] > 1e-3 * evals[-1]  # well conditioned at this point: tolerances below use cond(G_φ)
    nys = jax.jit(lambda p, key, rank: qhbm_bkm_nystrom(model, p, rank, key), static_argnums=2)
    return model, params, np.asarray(exact[0]), g, evals, nys


@pytest.fixture(scope="module")
def low_rank(setup):
    model, params, _, g, evals, nys = setup
    return 4, nys(params, jax.random.PRNGKey(0), 4)


def test_matrix_free_product_equals_dense_block(setup):
    model, params, _, g, evals, _ = setup
    vs = jax.random.normal(jax.random.PRNGKey(2), (3,) + params["phi"].shape)
    got = jax.jit(jax.vmap(lambda v: circuit_bkm_mv(model, params)(v)))(vs)
    want = np.asarray(vs).reshape(3, -1) @ g
    # both are forward computations of G v: rounding ≲ (gates + P) ε ‖G‖ ‖v‖
    tol = 100 * g.shape[0] * EPS * evals[-1] * np.linalg.norm(np.asarray(vs).reshape(3, -1), axis=1)
    assert np.all(np.abs(np.asarray(got).reshape(3, -1) - want).max(axis=1) <= tol)


def test_nystrom_full_rank_is_exact(setup):
    model, params, f_theta, g, evals, nys = setup
    metric = nys(params, jax.random.PRNGKey(0), g.shape[0])
    # Q is a full orthonormal basis: Ĝ = G up to the stabilizing shift ν = √P ε ‖GQ‖ amplified
    # by the conditioning of QᵀGQ (= cond G)
    tol = 10 * g.shape[0] * EPS * evals[-1] * (evals[-1] / evals[0])
    np.testing.assert_allclose(metric.blocks["phi"].dense(), g, atol=tol, rtol=0)
    np.testing.assert_allclose(metric.blocks["theta"].dense(), f_theta, atol=0, rtol=0)


def test_nystrom_low_rank_error_bounds(setup, low_rank):
    model, params, _, g, evals, nys = setup
    rank, metric = low_rank
    p_phi, ell, q = g.shape[0], rank + 5, 1
    approx = np.asarray(metric.blocks["phi"].dense())
    lam_next = evals[::-1][rank]
    err = np.linalg.norm(g - approx, 2)
    assert np.linalg.matrix_rank(approx, tol=1e-8 * evals[-1]) == rank
    assert err >= lam_next * (1 - 1e-8)  # Eckart–Young: no rank-k matrix does better
    hmt = ((1 + 11 * np.sqrt(ell * p_phi)) ** (2 / (2 * q + 3)) + 1) * lam_next  # fails w.p. ≤ 6·5⁻⁵
    assert err <= hmt
    # Nyström is a compression of G: 0 ≼ Ĝ ≼ G (up to rounding of the order of the full-rank test)
    floor = -10 * p_phi * EPS * evals[-1] * (evals[-1] / evals[0])
    assert np.linalg.eigvalsh(g - approx).min() >= floor
    assert np.linalg.eigvalsh(approx).min() >= floor


def test_nystrom_metric_solve_and_bad_input(setup, low_rank):
    model, params, _, g, evals, nys = setup
    metric = low_rank[1]
    v = jax.tree_util.tree_map(lambda x: jnp.ones_like(x), params)
    flat, _ = ravel_pytree(v)
    dense = np.asarray(metric.dense())
    damping = 0.1
    want = np.linalg.solve(dense + damping * np.eye(dense.shape[0]), np.asarray(flat))
    got = ravel_pytree(metric.solve(v, damping))[0]
    # Woodbury vs dense solve: cond(Ĝ + λI) ≤ (‖G‖ + λ)/λ
    np.testing.assert_allclose(got, want, atol=100 * EPS * (evals[-1] + damping) / damping * np.abs(want).max())
    with pytest.raises(ValueError, match="rank"):
        qhbm_bkm_nystrom(model, params, 0, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="rank"):
        qhbm_bkm_nystrom(model, params, g.shape[0] + 1, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="keys"):
        circuit_bkm_mv(model, {"phi": params["phi"]})
    with pytest.raises(ValueError, match="shape"):
        circuit_bkm_mv(model, {"theta": params["theta"], "phi": params["phi"][:1]})
