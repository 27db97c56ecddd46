"""MBF's block (classical.blocks.mini_block) against the dense per-example empirical Fisher.

The reference takes per-example gradients by ``jax.vmap(jax.grad)`` of single-example NLLs (not the
tapped pre-activation gradients the block reads), forms F = (1/N) Σ_n vec∇W_n vec∇W_nᵀ in float64,
and builds the mini-block mask from the partition written out by hand. Float32 statistics of O(1)
entries over N = 12 examples: rtol 1e-5 (≈ 100 u32); the solve adds u32·cond(F_masked + λI).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import classical
import qgeom  # noqa: F401
from classical.blocks.base import LayerBatch
from classical.blocks.mini_block import MiniBlockFisherBlock, mini_block_rows
from classical.kfac import KFAC
from classical.models import Conv2D, Dense, Flatten, Network

N = 12
U32 = np.finfo(np.float32).eps


def _setup(net, seed=0):
    params = net.init(jax.random.PRNGKey(seed))
    kx, ky = jax.random.split(jax.random.PRNGKey(seed + 1))
    x = jax.random.normal(kx, (N, *net.input_shape), jnp.float32)
    y = jax.random.randint(ky, (N,), 0, net.output_shape[-1])

    def summed_nll(taps):
        out, inputs = net.apply_tapped(params, x, taps)
        return jnp.sum(net.output.nll(out, y)), inputs

    g, inputs = jax.jit(jax.grad(summed_nll, has_aux=True))(net.zero_taps(x))
    per_ex = jax.jit(jax.vmap(lambda xi, yi: jax.grad(
        lambda p: jnp.sum(net.output.nll(net.apply(p, xi[None]), yi[None])))(params)))(x, y)
    fishers = {}
    for k in net.names:
        w = np.asarray(per_ex[k], np.float64).reshape(N, -1)
        fishers[k] = w.T @ w / N
    return {k: LayerBatch(inputs[k], g[k]) for k in net.names}, fishers


@pytest.fixture(scope="module")
def dense_case():
    net = Network([Dense(6, "tanh"), Dense(3, "linear")], (5,))
    return net, *_setup(net)


def _mask(groups, rows, d_out):
    """Mini-block mask of the row-major vec(W): entries (r, j), (r', j) with r, r' in one group."""
    m = np.zeros((rows * d_out, rows * d_out))
    for grp in groups:
        for j in range(d_out):
            ids = np.asarray(grp) * d_out + j
            m[np.ix_(ids, ids)] = 1
    return m


def _check(block, batch, fisher, groups, lam=0.2, solves=True):
    rows, d_out = block.shape
    update = jax.jit(block.update)
    stats = update(block.init(), batch, 0.0)
    for b, grp in enumerate(groups):  # each mini-block is the matching entries of the dense Fisher
        for j in range(d_out):
            ids = np.asarray(grp) * d_out + j
            want = fisher[np.ix_(ids, ids)]
            got = np.asarray(stats["B"][b, j])[: len(grp), : len(grp)]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(fisher).max())
    if not solves:
        return
    masked = fisher * _mask(groups, rows, d_out)
    np.testing.assert_allclose(jax.jit(lambda s: block.metric(s).dense())(stats), masked, rtol=1e-5, atol=1e-5 * np.abs(fisher).max())
    grad = np.random.default_rng(0).standard_normal((rows, d_out)).astype(np.float32)
    refresh = jax.jit(block.refresh)
    _, cache = refresh(stats, lam)
    # λ = 0 with padded mini-blocks: padding entries get a unit diagonal, the inverse stays finite
    assert np.all(np.isfinite(np.asarray(refresh(update(block.init(), batch, 0.9), 0.0)[1])))
    want = np.linalg.solve(masked + lam * np.eye(rows * d_out), grad.ravel().astype(np.float64))
    tol = 100 * U32 * np.linalg.cond(masked + lam * np.eye(rows * d_out))
    got = np.asarray(jax.jit(block.apply_inverse)(stats, cache, jnp.asarray(grad), lam)).ravel()
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    solve = jax.jit(lambda s, v: block.metric(s).solve(v, lam))
    np.testing.assert_allclose(np.asarray(solve(stats, jnp.asarray(grad))).ravel(), want,
                               rtol=tol, atol=tol * np.abs(want).max())


def test_dense_layers_match_the_dense_empirical_fisher(dense_case):
    net, batches, fishers = dense_case
    # layer00: rows 0..5 (5 inputs + bias) in mini-blocks of 4: {0..3}, {4, 5}; layer01: 7 rows: {0..3}, {4..6}
    for k, groups in zip(net.names, [[range(0, 4), range(4, 6)], [range(0, 4), range(4, 7)]]):
        _check(MiniBlockFisherBlock(net.layer_shapes[k], block_size=4), batches[k], fishers[k], groups,
               solves=k == net.names[0])


def test_conv_layer_kernel_slices_match_the_dense_empirical_fisher():
    """A conv layer's batch: T = 5 positions, patches of 2 channels × 2×2 kernel (channel-major, as
    ``classical.models`` orders them), 3 output channels; ∇W_n = Σ_t ā_{n,t} g_{n,t}ᵀ in float64 NumPy.
    Mini-blocks: kernel slices {0..3}, {4..7} and the bias {8}, per output channel."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((N, 5, 8)).astype(np.float32)
    g = rng.standard_normal((N, 5, 3)).astype(np.float32)
    ab = np.concatenate([a, np.ones((N, 5, 1), np.float32)], axis=-1).astype(np.float64)
    w = np.einsum("nti,nto->nio", ab, g).reshape(N, -1)
    _check(MiniBlockFisherBlock((9, 3), kernel_size=(2, 2)), LayerBatch(jnp.asarray(a), jnp.asarray(g)),
           w.T @ w / N, [range(0, 4), range(4, 8), [8]])


def test_unit_wise_limit_and_partition_checks():
    np.testing.assert_array_equal(mini_block_rows(3, block_size=10), [[0, 1, 2]])
    np.testing.assert_array_equal(mini_block_rows(5, kernel_size=(2, 2)), [[0, 1, 2, 3], [4, 5, 5, 5]])
    with pytest.raises(ValueError, match="divisible"):
        mini_block_rows(6, kernel_size=(2, 2))
    with pytest.raises(ValueError, match="block_size"):
        MiniBlockFisherBlock((5, 3), block_size=0)


def test_factory_reads_conv_kernels_and_steps_like_the_hand_built_kfac():
    """``classical.mbf`` on a conv net equals ``KFAC`` given the blocks by hand (kernel slices for the
    conv layer, rows of 4 for the dense one, empirical estimator), step for step; and it refuses
    the sampled-target estimator."""
    net = Network([Conv2D(2, (2, 2), activation="tanh"), Flatten(), Dense(3, "linear")], (3, 3, 1))
    x = jax.random.normal(jax.random.PRNGKey(0), (N, 3, 3, 1), jnp.float32)
    y = jax.random.randint(jax.random.PRNGKey(1), (N,), 0, 3)
    blocks = {"layer00": functools.partial(MiniBlockFisherBlock, kernel_size=(2, 2)),
              "layer02": functools.partial(MiniBlockFisherBlock, block_size=4)}
    settings = dict(learning_rate=0.1, momentum=0.5, damping=0.3, adapt_damping=False)
    params = net.init(jax.random.PRNGKey(2))
    ours, ref = classical.mbf(net, block_size=4, **settings), KFAC(net, blocks=blocks, estimator="empirical", **settings)
    pa, sa, pb, sb = params, ours.init(params), params, ref.init(params)
    for _ in range(2):
        pa, sa, _ = ours.step(pa, sa, (x, y))
        pb, sb, _ = ref.step(pb, sb, (x, y))
    for k in params:
        np.testing.assert_array_equal(pa[k], pb[k])
    assert not np.allclose(pa["layer00"], params["layer00"])
    with pytest.raises(ValueError, match="empirical"):
        classical.mbf(net, estimator="fisher")
