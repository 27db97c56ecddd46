"""Block-tridiagonal K-FAC (classical.blocks.tridiagonal) against a dense numpy construction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import qgeom  # noqa: F401  (float64)
from classical.blocks import LayerBatch, TridiagonalKronecker
from classical.family import kfac_tridiag
from classical.models import mlp


@pytest.fixture(scope="module")
def chain():
    """Statistics of a 3-layer net from one batch (float64): joint second moments are PSD, so
    every Σ_{i|i+1} is positive definite."""
    rng = np.random.default_rng(0)
    shapes = {"layer00": (4, 5), "layer01": (6, 4), "layer02": (5, 3)}
    n = 50
    batches = {k: LayerBatch(jnp.asarray(rng.standard_normal((n, 1, s[0] - 1))),
                             jnp.asarray(rng.standard_normal((n, 1, s[1])))) for k, s in shapes.items()}
    curv = TridiagonalKronecker(shapes)
    return curv, jax.jit(lambda b: curv.update(curv.init(), b, 0.0))(batches), shapes


def _dense_blocks(curv, stats, a, g):
    """F̃ blocks (i, j), |i − j| ≤ 1, densely: Ā ⊗ G with the damped diagonal factors a, g."""
    n = curv.names
    blocks = {(k, k): np.kron(a[k], g[k]) for k in n}
    for i, j in zip(n[:-1], n[1:]):
        blocks[(i, j)] = np.kron(stats[i]["A_next"], stats[i]["G_next"])
        blocks[(j, i)] = blocks[(i, j)].T
    return blocks


def test_inverse_is_block_tridiagonal_and_matches_dense_ggm(chain):
    """Dense numpy: Ψ = F̃_{i,i+1} F̃_{i+1,i+1}⁻¹, Σ = F̃_{ii} − Ψ F̃_{i+1,i+1} Ψᵀ, F̂⁻¹ = Ξᵀ Λ Ξ.
    Ours equals it (float64, κ(Σ) < 1e4 here: rtol 1e-9); F̂⁻¹ has zero blocks beyond the first
    off-diagonal; F̂ = (F̂⁻¹)⁻¹ equals F̃ on the diagonal and first off-diagonal blocks."""
    curv, stats, shapes = chain
    lam = 0.1
    _, cache = curv.refresh(stats, lam)
    a, g = curv._damped(stats, lam)
    n, sizes = curv.names, [shapes[k][0] * shapes[k][1] for k in curv.names]
    off = np.concatenate([[0], np.cumsum(sizes)])
    fb = _dense_blocks(curv, stats, {k: np.asarray(v) for k, v in a.items()}, {k: np.asarray(v) for k, v in g.items()})
    P = off[-1]
    xi, lam_blocks = np.eye(P), np.zeros((P, P))
    for idx, k in enumerate(n):
        sl = slice(off[idx], off[idx + 1])
        if idx + 1 < len(n):
            j, sj = n[idx + 1], slice(off[idx + 1], off[idx + 2])
            psi = fb[(k, j)] @ np.linalg.inv(fb[(j, j)])
            xi[sl, sj] = -psi
            lam_blocks[sl, sl] = np.linalg.inv(fb[(k, k)] - psi @ fb[(j, j)] @ psi.T)
        else:
            lam_blocks[sl, sl] = np.linalg.inv(fb[(k, k)])
    f_hat_inv = xi.T @ lam_blocks @ xi
    like = {k: jnp.zeros(shapes[k]) for k in n}
    _, unravel = ravel_pytree(like)
    ours = np.asarray(jax.jit(jax.vmap(lambda e: ravel_pytree(cache.inverse_mv(unravel(e)))[0]))(jnp.eye(P))).T
    np.testing.assert_allclose(ours, f_hat_inv, rtol=1e-9, atol=1e-10 * np.abs(f_hat_inv).max())
    assert np.abs(ours[off[0]:off[1], off[2]:off[3]]).max() < 1e-12 * np.abs(ours).max()
    f_hat = np.linalg.inv(ours)
    for (i, j), blk in fb.items():
        si, sj = n.index(i), n.index(j)
        np.testing.assert_allclose(f_hat[off[si]:off[si + 1], off[sj]:off[sj + 1]], blk, rtol=1e-8,
                                   atol=1e-9 * np.abs(blk).max())
    # mv (two sweeps) is the inverse of inverse_mv, and dense() is F̂
    np.testing.assert_allclose(np.asarray(cache.dense()), f_hat, rtol=1e-8, atol=1e-9 * np.abs(f_hat).max())


def test_zero_cross_statistics_give_block_diagonal_kfac(chain):
    """Ψ = 0: F̂⁻¹ is ⊕ (A + π√λ I)⁻¹ ⊗ (G + √λ/π I)⁻¹, K-FAC's Tikhonov inverse."""
    curv, stats, shapes = chain
    zeroed = {k: {f: (jnp.zeros_like(v) if f.endswith("_next") else v) for f, v in s.items()} for k, s in stats.items()}
    _, cache = curv.refresh(zeroed, 0.2)
    a, g = curv._damped(zeroed, 0.2)
    v = {k: jnp.asarray(np.random.default_rng(1).standard_normal(s)) for k, s in shapes.items()}
    out = cache.inverse_mv(v)
    for k in curv.names:
        np.testing.assert_allclose(out[k], np.linalg.solve(a[k], np.linalg.solve(g[k], np.asarray(v[k]).T).T),
                                   rtol=1e-10)


@pytest.mark.slow
def test_tridiagonal_kfac_smoke():
    net = mlp([4, 6, 5, 3], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(2))
    x = jax.random.normal(jax.random.PRNGKey(3), (64, 4), jnp.float32)
    y = jnp.argmax(x[:, :3], axis=1)
    opt = kfac_tridiag(net, learning_rate=0.3, momentum=0.0, damping=0.1, adapt_damping=False)
    p, s = params, opt.init(params)
    loss0 = float(net.loss(params, x, y))
    for _ in range(30):
        p, s, info = opt.step(p, s, (x, y))
    assert not bool(info["rejected"]) and float(net.loss(p, x, y)) < 0.5 * loss0


def test_conv_layers_refused(chain):
    """Cross-layer statistics need one position per example (dense layers): T = 2 is refused."""
    curv, stats, shapes = chain
    batches = {k: LayerBatch(jnp.zeros((3, 2, s[0] - 1)), jnp.zeros((3, 2, s[1]))) for k, s in shapes.items()}
    with pytest.raises(ValueError, match="dense layers"):
        curv.update(stats, batches, 0.0)
