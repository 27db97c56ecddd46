"""Mini-block Fisher, MBF (Bahamou, Goldfarb & Ren, AISTATS 2023, arXiv 2202.04124).

A layer's block of the *empirical* Fisher (labels as targets: build the optimizer with the
empirical estimator) is itself approximated block-diagonally by many small mini-blocks,
inverted as one batch. With W of shape (d_in + 1, d_out) (bias last row) and the per-example
gradients ∇W_n, the mini-block of output unit j over a set of rows r is

    B_{r,j} = (1/N) Σ_n ∇W_n[r, j] ∇W_n[r, j]ᵀ + λI,

i.e. exactly the (r×{j}, r×{j}) entries of the dense per-example empirical Fisher of W.

Partition used here — stated, not quoted: the paper's §3 was not reachable offline (searched
2026-11-28; only the abstract of arXiv 2202.04124 / PMLR 206:9191 was found: it says no more than
that every layer's empirical-Fisher block, dense or convolutional, is itself block-diagonal in
many small mini-blocks):

* convolutional layers (``kernel_size=(k_h, k_w)``): one mini-block per (input channel, output
  channel) — the k_h·k_w weights of that kernel slice (patch features are channel-major,
  ``classical.models``) — and one 1×1 mini-block per output channel for its bias;
* dense layers: each output unit's d_in + 1 incoming weights (bias last) cut into consecutive
  mini-blocks of ``block_size`` rows (the last one shorter); ``block_size ≥ d_in + 1`` gives the
  unit-wise Fisher.

Statistics are EMAs. For a dense layer B_{r,j} = (1/N) Σ_n g_{n,j}² ā_{n,r} ā_{n,r}ᵀ is formed
without per-example gradients (N·d_in·d_out·s multiply-adds for mini-blocks of size s); a conv
layer forms ∇W_n = Σ_t ā_{n,t} g_{n,t}ᵀ first. Refresh: Cholesky of every B + λI in one batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from classical.blocks.base import F32, CurvatureBlock, LayerBatch, ema
from qgeom.metrics.base import Metric, check_damping, pytree_dataclass


def mini_block_rows(rows: int, block_size: int | None = None, kernel_size=None) -> np.ndarray:
    """Row indices (num_blocks, s) of each mini-block of a (rows, d_out) weight matrix; padding = ``rows``."""
    if kernel_size is not None:
        s = int(np.prod(kernel_size))
        if (rows - 1) % s:
            raise ValueError(f"a conv layer with kernel {tuple(kernel_size)} needs d_in divisible by {s}, "
                             f"got d_in = {rows - 1}")
        idx = np.arange(rows - 1).reshape(-1, s)
        bias = np.full((1, s), rows)
        bias[0, 0] = rows - 1
        return np.concatenate([idx, bias])
    if not (isinstance(block_size, int) and block_size >= 1):
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    s = min(block_size, rows)
    idx = np.full((-(-rows // s)) * s, rows)
    idx[:rows] = np.arange(rows)
    return idx.reshape(-1, s)


def _gather(w, idx):
    """Rows of ``w`` (..., rows, d_out) at ``idx`` (nb, s), a zero row where idx == rows."""
    pad = jnp.zeros((*w.shape[:-2], 1, w.shape[-1]), w.dtype)
    return jnp.take(jnp.concatenate([w, pad], axis=-2), jnp.asarray(idx), axis=-2)


def _scatter(blocks, idx, rows):
    """Inverse of ``_gather``: (nb, s, d_out) back to (rows, d_out), padding dropped."""
    out = jnp.zeros((rows + 1, blocks.shape[-1]), blocks.dtype).at[jnp.asarray(idx).ravel()].set(
        blocks.reshape(-1, blocks.shape[-1]))
    return out[:rows]


@pytree_dataclass
class MiniBlockMetric(Metric):
    """⊕_{b,j} B_{b,j} on W: ``blocks`` (nb, d_out, s, s) over the rows ``idx`` (static)."""

    blocks: jax.Array
    like: jax.Array
    idx: tuple
    meta_fields = ("idx",)

    def _like(self):
        return self.like

    def _apply(self, mats, v):
        idx = np.asarray(self.idx)
        vb = _gather(v, idx)
        return _scatter(jnp.einsum("bjrq,bqj->brj", mats, vb), idx, v.shape[0])

    def mv(self, v):
        self._flat(v)
        return self._apply(self.blocks, v)

    def solve(self, v, damping=0.0):
        check_damping(damping)
        self._flat(v)
        idx = np.asarray(self.idx)
        return self._apply(damped_inverses(self.blocks, damping, idx == self.like.shape[0]), v)

    def dense(self):
        return jax.vmap(lambda e: self.mv(e.reshape(self.like.shape)).ravel())(
            jnp.eye(self.like.size, dtype=self.blocks.dtype)).T


def damped_inverses(blocks, damping, pad):
    """(B + λI)⁻¹ of every mini-block by one batched Cholesky; ``pad`` (nb, s) marks padding
    entries, which get a unit diagonal so they stay decoupled and finite even at λ = 0."""
    eye = jnp.eye(blocks.shape[-1], dtype=blocks.dtype)
    unit = jnp.asarray(pad, blocks.dtype)[:, None, :, None] * eye
    l = jnp.linalg.cholesky(blocks + damping * eye + unit)
    l_inv = jax.scipy.linalg.solve_triangular(l, jnp.broadcast_to(eye, l.shape), lower=True)
    return jnp.swapaxes(l_inv, -1, -2) @ l_inv


@dataclasses.dataclass(frozen=True)
class MiniBlockFisherBlock(CurvatureBlock):
    """MBF's layer block: mini-blocks of the per-example (empirical) Fisher, batch-inverted."""

    block_size: int = 16
    kernel_size: tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "_idx", mini_block_rows(self.shape[0], self.block_size, self.kernel_size))

    @property
    def rows(self):
        """Row indices (num_blocks, s) of the mini-blocks (padding entries equal d_in + 1)."""
        return self._idx

    def init(self):
        nb, s = self._idx.shape
        return {"B": jnp.broadcast_to(jnp.eye(s, dtype=F32), (nb, self.shape[1], s, s))}

    def update(self, stats, batch: LayerBatch, decay):
        n, t = batch.inputs.shape[:2]
        if t == 1:
            ab = _gather(batch.homogeneous_inputs()[:, 0, :, None], self._idx)[..., 0]  # (N, nb, s)
            g2 = jnp.square(batch.preact_grads[:, 0])
            new = jnp.einsum("nj,nbr,nbq->bjrq", g2, ab, ab) / n
        else:
            wb = _gather(batch.per_example_grads(), self._idx)  # (N, nb, s, d_out)
            new = jnp.einsum("nbrj,nbqj->bjrq", wb, wb) / n
        return ema(stats, {"B": new}, decay)

    def metric(self, stats):
        return MiniBlockMetric(stats["B"], jnp.zeros(self.shape, F32), tuple(map(tuple, self._idx)))

    def refresh(self, stats, damping):
        return stats, damped_inverses(stats["B"], damping, self._idx == self.shape[0])

    def apply_inverse(self, stats, cache, grad, damping):
        return _scatter(jnp.einsum("bjrq,bqj->brj", cache, _gather(grad, self._idx)), self._idx, self.shape[0])
