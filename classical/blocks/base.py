"""The curvature-block protocol: one layer's statistics, factorization and damped inverse.

Following kfac-jax's separation (``kfac_jax/_src/curvature_blocks/``: blocks apart from the
estimator apart from the optimizer), a K-FAC-family method is

* one ``CurvatureBlock`` per layer — what statistics it keeps and how it inverts them;
* a ``Curvature`` over all layers — ``Layerwise`` (block-diagonal: each layer alone) or a
  structured one coupling layers (``classical.blocks.tridiagonal``);
* the optimizer (``classical.kfac.KFAC``), which never knows which block it holds.

Layer convention (``classical.models``): a layer's parameters are one matrix W of shape
(d_in + 1, d_out), bias last, s = Wᵀ ā with ā = [a; 1]; a conv layer shares W over T
positions. For each statistics update the optimizer hands every block a ``LayerBatch`` of
the curvature rows: the layer inputs a (N, T, d_in) and, when the block declares
``needs_preact_grads``, the per-example pre-activation gradients g_n = ∂(−log p(y_n|x_n))/∂s
(N, T, d_out), y_n sampled from the model (Fisher) or the data labels (empirical Fisher).
Per-example weight gradients ∇W_n = Σ_t ā_{n,t} g_{n,t}ᵀ are computed from them only if a
block calls ``LayerBatch.per_example_grads()``.

A block is a small frozen dataclass built from the layer's weight shape (``shape`` =
(d_in + 1, d_out), its first field) and its settings; its state is a pytree:

* ``init() -> stats``                              identity-like statistics before any data;
* ``update(stats, batch, decay) -> stats``         EMA ``decay``·old + (1 − decay)·new;
* ``refresh(stats, damping) -> (stats, cache)``    its factorization (every T steps); a block
                                                   whose statistics live in the refreshed
                                                   basis (EKFAC) returns them transformed, the
                                                   others return ``stats`` unchanged;
* ``apply_inverse(stats, cache, grad, damping)``   the damped inverse applied to ∇W;
* ``metric(stats) -> qgeom.metrics.Metric``        the curvature it approximates with;
* ``rebase(stats, batch) -> stats``                optional (``rebases = True``): right after a
                                                   refresh, re-estimate the statistics that live
                                                   in the new basis from this step's batch
                                                   (EKFAC's scaling, George et al. Algorithm 1).

``damping`` is the total damping λ + η (η: the ℓ2 coefficient) at refresh and at apply; a
block that bakes it into its cache (factored Tikhonov) ignores the value at apply.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from qgeom.metrics.base import BlockDiagonal, Metric

F32 = jnp.float32
Stats = Any
Cache = Any


def gram(m):
    """mᵀm contracting the leading axis directly (no materialised transpose)."""
    return jax.lax.dot_general(m, m, (((0,), (0,)), ((), ())))


def input_factor(x):
    """A = (1/N) Σ_{n,t} ā ā ᵀ, ā = [x; 1], for layer inputs x of shape (N, T, d_in) (blockwise)."""
    n, t, d = x.shape
    xf = x.reshape(n * t, d)
    s = jnp.sum(xf, axis=0)[:, None]
    top = jnp.concatenate([gram(xf), s], axis=1)
    bottom = jnp.concatenate([s.T, jnp.full((1, 1), n * t, xf.dtype)], axis=1)
    return jnp.concatenate([top, bottom], axis=0) / n


def output_factor(g):
    """G = (1/(N T)) Σ_{n,t} g gᵀ for per-example pre-activation gradients g of shape (N, T, d_out)."""
    n, t, d = g.shape
    return gram(g.reshape(n * t, d)) / (n * t)


def ema(old, new, decay):
    """decay·old + (1 − decay)·new, leaf by leaf."""
    return jax.tree_util.tree_map(lambda o, x: decay * o + (1 - decay) * x, old, new)


class LayerBatch(NamedTuple):
    """One layer's data on the curvature rows (see the module docstring)."""

    inputs: jax.Array  # a: (N, T, d_in), without the homogeneous 1
    preact_grads: jax.Array | None  # g: (N, T, d_out), per-example; None if no block needs them

    def homogeneous_inputs(self):
        """ā = [a; 1] of shape (N, T, d_in + 1)."""
        ones = jnp.ones((*self.inputs.shape[:2], 1), self.inputs.dtype)
        return jnp.concatenate([self.inputs, ones], axis=-1)

    def per_example_grads(self):
        """∇W_n = Σ_t ā_{n,t} g_{n,t}ᵀ of shape (N, d_in + 1, d_out) (conv: summed over positions)."""
        if self.preact_grads is None:
            raise ValueError("per-example gradients need preact_grads (the block must declare needs_preact_grads)")
        return jnp.einsum("nti,nto->nio", self.homogeneous_inputs(), self.preact_grads)


@dataclasses.dataclass(frozen=True)
class CurvatureBlock(abc.ABC):
    """One layer's curvature approximation: a frozen dataclass whose first field is ``shape``
    (d_in + 1, d_out) of the layer's W, then its settings (so ``functools.partial(Block,
    **settings)`` is a factory ``shape -> block``)."""

    shape: tuple

    needs_preact_grads = True  # class attribute: does ``update`` read ``batch.preact_grads``?
    rebases = False  # does ``rebase`` change the statistics after a refresh?

    @abc.abstractmethod
    def init(self) -> Stats:
        """Statistics before any data (identity-like)."""

    @abc.abstractmethod
    def update(self, stats: Stats, batch: LayerBatch, decay) -> Stats:
        """New statistics: ``decay``·stats + (1 − decay)·(this batch's estimate)."""

    @abc.abstractmethod
    def refresh(self, stats: Stats, damping) -> tuple[Stats, Cache]:
        """(stats, the factorization / damped inverse used until the next refresh)."""

    @abc.abstractmethod
    def apply_inverse(self, stats: Stats, cache: Cache, grad, damping):
        """The block's damped inverse applied to this layer's gradient (shape of W)."""

    @abc.abstractmethod
    def metric(self, stats: Stats) -> Metric:
        """The block's curvature as a ``qgeom.metrics`` metric on W (``mv``/``solve``/``dense``)."""

    def rebase(self, stats: Stats, batch: LayerBatch) -> Stats:
        """Statistics re-estimated in the basis just refreshed (called only when ``rebases``)."""
        return stats


@dataclasses.dataclass(frozen=True)
class Layerwise:
    """Block-diagonal curvature: layer k uses ``blocks[k]`` alone (the K-FAC paper's F̆, §4.2).

    The same interface as a block, over dicts keyed by layer name; any structured
    ``Curvature`` (e.g. block-tridiagonal) offers these methods too.
    """

    blocks: dict

    @classmethod
    def build(cls, shapes: dict, factory) -> Layerwise:
        """``factory(shape) -> block`` for every layer, or a dict ``{layer: factory}``."""
        if isinstance(factory, dict):
            if set(factory) != set(shapes):
                raise ValueError(f"blocks must name every layer {sorted(shapes)}, got {sorted(factory)}")
            return cls({k: factory[k](tuple(s)) for k, s in shapes.items()})
        return cls({k: factory(tuple(s)) for k, s in shapes.items()})

    @property
    def needs_preact_grads(self):
        return any(b.needs_preact_grads for b in self.blocks.values())

    @property
    def rebases(self):
        return any(b.rebases for b in self.blocks.values())

    def rebase(self, stats, batches: dict):
        return {k: b.rebase(stats[k], batches[k]) if b.rebases else stats[k] for k, b in self.blocks.items()}

    def init(self):
        return {k: b.init() for k, b in self.blocks.items()}

    def update(self, stats, batches: dict, decay):
        return {k: b.update(stats[k], batches[k], decay) for k, b in self.blocks.items()}

    def refresh(self, stats, damping):
        out = {k: b.refresh(stats[k], damping) for k, b in self.blocks.items()}
        return {k: o[0] for k, o in out.items()}, {k: o[1] for k, o in out.items()}

    def apply_inverse(self, stats, cache, grads, damping):
        return {k: b.apply_inverse(stats[k], cache[k], grads[k], damping) for k, b in self.blocks.items()}

    def metric(self, stats) -> BlockDiagonal:
        return BlockDiagonal({k: b.metric(stats[k]) for k, b in self.blocks.items()})
