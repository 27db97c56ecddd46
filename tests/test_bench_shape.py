"""experiments.bench_shape: its multiply–add model against XLA's cost analysis of the library's own
pieces, and the refresh-period arithmetic of its table."""

import jax
import jax.numpy as jnp
import pytest

from classical.blocks.base import LayerBatch
from classical.blocks.mini_block import MiniBlockFisherBlock
from classical.blocks.tnt import TNTBlock
from classical.transforms.tensor_ops import axis_gram, mode_dot
from experiments import bench_shape as bs
from experiments.classical_methods import float32_mode

SHAPES = [(64, 48), (48, 96)]  # (d_in + 1, d_out); 64 and 48 are multiples of the mini-block size 16
N = 128
F32 = jnp.float32


def _flops(fn, *args):
    with float32_mode():
        cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost["flops"]


def _close(macs, flops, slack=0.05):
    # 2 flops per multiply–add; the elementwise remainder (EMA, concatenations) is lower order.
    assert 2 * macs <= flops <= 2 * macs * (1 + slack), (2 * macs, flops)


def _ws():
    return [jax.random.normal(jax.random.PRNGKey(i), s, F32) for i, s in enumerate(SHAPES)]


def _layer_batches():
    return [LayerBatch(jax.random.normal(jax.random.PRNGKey(10 + i), (N, 1, a - 1), F32),
                       jax.random.normal(jax.random.PRNGKey(20 + i), (N, 1, b), F32)) for i, (a, b) in enumerate(SHAPES)]


def test_shampoo_statistics_precondition_and_soap_rotations():
    ws = _ws()
    macs = bs.part_macs("shampoo", SHAPES, N)
    _close(macs["statistics"], _flops(lambda ws: [(axis_gram(w, 0), axis_gram(w, 1)) for w in ws], ws))
    fs = [(jnp.eye(a, dtype=F32), jnp.eye(b, dtype=F32)) for a, b in SHAPES]
    _close(macs["precondition"], _flops(lambda ws, fs: [mode_dot(mode_dot(w, f[0], 0), f[1], 1)
                                                        for w, f in zip(ws, fs)], ws, fs))
    rot = lambda ws, fs: [mode_dot(mode_dot(mode_dot(mode_dot(w, f[0].T, 0), f[1].T, 1), f[0], 0), f[1], 1)
                          for w, f in zip(ws, fs)]
    _close(bs.part_macs("soap", SHAPES, N)["rotations"], _flops(rot, ws, fs))


def test_tnt_and_mbf_statistics():
    lbs = _layer_batches()
    tnt = [TNTBlock(s) for s in SHAPES]
    _close(bs.part_macs("tnt", SHAPES, N)["statistics"],
           _flops(lambda st, lb: [b.update(s, x, 0.9) for b, s, x in zip(tnt, st, lb)], [b.init() for b in tnt], lbs))
    mbf = [MiniBlockFisherBlock(s, block_size=16) for s in SHAPES]
    _close(bs.part_macs("mbf", SHAPES, N, mini=16)["statistics"],
           _flops(lambda st, lb: [b.update(s, x, 0.9) for b, s, x in zip(mbf, st, lb)], [b.init() for b in mbf], lbs))


def test_mfac_window_passes():
    d = sum(a * b for a, b in SHAPES)
    buf, v = jnp.ones((8, d), F32), jnp.ones(d, F32)
    _close(bs.part_macs("mfac", SHAPES, N, window=8)["window"] - 8**3 / 6,
           _flops(lambda buf, v: (buf @ v, jnp.ones(8, F32) @ buf), buf, v))


def test_block_factors_and_refresh_model():
    # Shampoo cuts 1001 × 784 at 512 into 2 × 2 blocks: factors 512, 489 (rows) and 512, 272 (columns) each twice.
    assert sorted(bs._factors([(1001, 784)], 512)) == sorted([512, 512, 512, 272, 489, 512, 489, 272])
    assert bs._blocked([(1001, 784)], 2048) == [(1001, 784)]
    m = bs.part_macs("shampoo", [(10, 20)], 5, period=4)
    assert m["refresh"] == pytest.approx((bs.EIGH + bs.ROOT) * (10**3 + 20**3) / 4)
    with pytest.raises(ValueError, match="unknown method"):
        bs.part_macs("adamw", SHAPES, N)


def test_table_period_arithmetic():
    meas = {"batch": N, "mini": 16, "window": 8, "shapes": SHAPES,
            "cpu_s": {"sgd": {"step": 0.1, "gradient": 0.09},
                      "shampoo": {"statistics": 0.01, "precondition": 0.01, "refresh": 1.0, "step": 0.13,
                                  "refresh_step": 1.13},
                      "tnt": {"statistics": 0.05, "precondition": 0.05, "refresh": 0.2, "step": 0.2,
                              "refresh_step": 0.4}}}
    text = bs.table(meas, period=20)
    # Shampoo: budget 0.15 − 0.13 = 0.02 s per step, refresh 1.0 s extra → T ≥ 50.
    assert "shampoo: 1.5× needs T ≥ 50" in text
    assert "tnt: the plain step alone is 2.00× SGD > 1.5×" in text
