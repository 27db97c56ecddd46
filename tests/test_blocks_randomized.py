"""RS-KFAC block (classical.blocks.randomized) against K-FAC's Tikhonov inverse and dense algebra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qgeom  # noqa: F401  (float64)
from classical.blocks import KroneckerBlock, LayerBatch, RandomizedKroneckerBlock
from classical.family import rs_kfac
from classical.models import mlp


def _batch(rng, n=40, d_in=5, d_out=4, decay=0.7):
    """Inputs with a decaying spectrum (so a low rank is meaningful), float64."""
    a = rng.standard_normal((n, 1, d_in)) * decay ** np.arange(d_in)
    return LayerBatch(jnp.asarray(a), jnp.asarray(rng.standard_normal((n, 1, d_out))))


def test_full_rank_equals_kfac_tikhonov():
    """r = d: the Nyström eigendecomposition is exact (up to its shift ν ~ √d·eps·‖X‖), so the
    block applies K-FAC's (A + π√λ I)⁻¹ ∇W (G + √λ/π I)⁻¹; float64, κ(A + γ_A I) < 1e3."""
    rng = np.random.default_rng(0)
    batch, shape = _batch(rng), (6, 4)
    rs, kf = RandomizedKroneckerBlock(shape, rank=6), KroneckerBlock(shape)
    grad = jnp.asarray(rng.standard_normal(shape))

    @jax.jit
    def both(batch, grad):
        out = []
        for blk in (rs, kf):
            stats, cache = blk.refresh(blk.update(blk.init(), batch, 0.0), 0.3)
            out.append(blk.apply_inverse(stats, cache, grad, 0.3))
        return out

    got, want = both(batch, grad)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_low_rank_inverse_is_dense_damped_inverse_and_within_halko_bound():
    """r < d: the applied inverse equals (U D Uᵀ + γ_A I)⁻¹ ∇W (U' D' U'ᵀ + γ_G I)⁻¹ from dense
    ``np.linalg.solve`` on the block's own factors, and ‖A − U D Uᵀ‖₂ lies within the
    Halko–Martinsson–Tropp bound ([1 + 11√ℓ√d]^{2/(2q+3)} + 1) λ_{r+1}(A) (failure prob. ≤ 6p⁻ᵖ)."""
    rng = np.random.default_rng(1)
    batch, shape = _batch(rng, n=60, d_in=11, d_out=3), (12, 3)
    blk = RandomizedKroneckerBlock(shape, rank=4, oversample=4, power_iters=1)
    stats, cache = blk.refresh(blk.update(blk.init(), batch, 0.0), 0.5)
    grad = rng.standard_normal(shape)
    a_r = (cache["U_A"] * cache["D_A"]) @ cache["U_A"].T + cache["gamma_A"] * np.eye(12)
    g_r = (cache["U_G"] * cache["D_G"]) @ cache["U_G"].T + cache["gamma_G"] * np.eye(3)
    want = np.linalg.solve(g_r, np.linalg.solve(a_r, grad).T).T
    np.testing.assert_allclose(blk.apply_inverse(stats, cache, jnp.asarray(grad), 0.5), want, rtol=1e-9)
    lam = np.linalg.eigvalsh(np.asarray(stats["A"]))[::-1]
    err = np.linalg.norm(np.asarray(stats["A"]) - (cache["U_A"] * cache["D_A"]) @ cache["U_A"].T, 2)
    bound = ((1 + 11 * np.sqrt(8) * np.sqrt(12)) ** (2 / 5) + 1) * lam[4]
    assert lam[4] * (1 - 1e-9) <= err <= bound


def test_settings_validated():
    with pytest.raises(ValueError, match="rank"):
        RandomizedKroneckerBlock((3, 2), rank=0)
    with pytest.raises(ValueError, match="power_iters"):
        rs_kfac(mlp([2, 2]), power_iters=-1)


@pytest.mark.slow
def test_rs_kfac_smoke():
    net = mlp([6, 12, 3], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(2))
    x = jax.random.normal(jax.random.PRNGKey(3), (64, 6), jnp.float32)
    y = jnp.argmax(x[:, :3], axis=1)
    opt = rs_kfac(net, rank=4, learning_rate=0.3, momentum=0.0, damping=0.1, adapt_damping=False)
    p, s = params, opt.init(params)
    loss0 = float(net.loss(params, x, y))
    for _ in range(30):
        p, s, _ = opt.step(p, s, (x, y))
    assert float(net.loss(p, x, y)) < 0.5 * loss0
