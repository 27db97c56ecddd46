"""MBF's block (classical.blocks.mini_block) against the dense per-example empirical Fisher.

The reference takes per-example gradients by ``jax.vmap(jax.grad)`` of single-example NLLs (not the
tapped pre-activation gradients the block reads), forms F = (1/N) Σ_n vec∇W_n vec∇W_nᵀ in float64,
and builds the mini-block mask from the partition written out by hand. Float32 statistics of O(1)
entries over N = 12 examples: rtol 1e-5 (≈ 100 u32); the solve adds u32·cond(F_masked + λI).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qgeom  # noqa: F401
from classical.blocks.base import LayerBatch
from classical.blocks.mini_block import MiniBlockFisherBlock, mini_block_rows
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

    g, inputs = jax.grad(summed_nll, has_aux=True)(net.zero_taps(x))
    per_ex = jax.vmap(lambda xi, yi: jax.grad(
        lambda p: jnp.sum(net.output.nll(net.apply(p, xi[None]), yi[None])))(params))(x, y)
    fishers = {}
    for k in net.names:
        w = np.asarray(per_ex[k], np.float64).reshape(N, -1)
        fishers[k] = w.T @ w / N
    return {k: LayerBatch(inputs[k], g[k]) for k in net.names}, fishers


@pytest.fixture(scope="module")
def dense_case():
    net = Network([Dense(6, "tanh"), Dense(3, "linear")], (5,))
    return net, *_setup(net)


@pytest.fixture(scope="module")
def conv_case():
    net = Network([Conv2D(3, (2, 2), padding="VALID", activation="tanh"), Flatten(), Dense(3, "linear")], (4, 4, 2))
    return net, *_setup(net, seed=3)


def _mask(groups, rows, d_out):
    """Mini-block mask of the row-major vec(W): entries (r, j), (r', j) with r, r' in one group."""
    m = np.zeros((rows * d_out, rows * d_out))
    for grp in groups:
        for j in range(d_out):
            ids = np.asarray(grp) * d_out + j
            m[np.ix_(ids, ids)] = 1
    return m


def _check(block, batch, fisher, groups, lam=0.2):
    rows, d_out = block.shape
    stats = block.update(block.init(), batch, 0.0)
    for b, grp in enumerate(groups):  # each mini-block is the matching entries of the dense Fisher
        for j in range(d_out):
            ids = np.asarray(grp) * d_out + j
            want = fisher[np.ix_(ids, ids)]
            got = np.asarray(stats["B"][b, j])[: len(grp), : len(grp)]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(fisher).max())
    masked = fisher * _mask(groups, rows, d_out)
    np.testing.assert_allclose(block.metric(stats).dense(), masked, rtol=1e-5, atol=1e-5 * np.abs(fisher).max())
    grad = np.random.default_rng(0).standard_normal((rows, d_out)).astype(np.float32)
    _, cache = block.refresh(stats, lam)
    want = np.linalg.solve(masked + lam * np.eye(rows * d_out), grad.ravel().astype(np.float64))
    tol = 100 * U32 * np.linalg.cond(masked + lam * np.eye(rows * d_out))
    got = np.asarray(block.apply_inverse(stats, cache, jnp.asarray(grad), lam)).ravel()
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    np.testing.assert_allclose(np.asarray(block.metric(stats).solve(jnp.asarray(grad), lam)).ravel(), want,
                               rtol=tol, atol=tol * np.abs(want).max())


def test_dense_layers_match_the_dense_empirical_fisher(dense_case):
    net, batches, fishers = dense_case
    # layer00: rows 0..5 (5 inputs + bias) in mini-blocks of 4: {0..3}, {4, 5}; layer01: 7 rows: {0..3}, {4..6}
    for k, groups in zip(net.names, [[range(0, 4), range(4, 6)], [range(0, 4), range(4, 7)]]):
        _check(MiniBlockFisherBlock(net.layer_shapes[k], block_size=4), batches[k], fishers[k], groups)


def test_conv_layer_kernel_slices_match_the_dense_empirical_fisher(conv_case):
    net, batches, fishers = conv_case
    k = net.names[0]  # 2 input channels × 2×2 kernel: slices {0..3}, {4..7}, bias {8}
    _check(MiniBlockFisherBlock(net.layer_shapes[k], kernel_size=(2, 2)), batches[k], fishers[k],
           [range(0, 4), range(4, 8), [8]])


def test_unit_wise_limit_and_partition_checks():
    np.testing.assert_array_equal(mini_block_rows(3, block_size=10), [[0, 1, 2]])
    np.testing.assert_array_equal(mini_block_rows(5, kernel_size=(2, 2)), [[0, 1, 2, 3], [4, 5, 5, 5]])
    with pytest.raises(ValueError, match="divisible"):
        mini_block_rows(6, kernel_size=(2, 2))
    with pytest.raises(ValueError, match="block_size"):
        MiniBlockFisherBlock((5, 3), block_size=0)


def test_zero_damping_with_padding_stays_finite(dense_case):
    net, batches, _ = dense_case
    block = MiniBlockFisherBlock(net.layer_shapes["layer00"], block_size=4)
    stats = block.update(block.init(), batches["layer00"], 0.9)  # EMA with the identity init: B ≻ 0
    _, cache = block.refresh(stats, 0.0)
    assert np.all(np.isfinite(np.asarray(cache)))
