"""The metric protocol shared by every curvature object in qgeom.

A metric is a symmetric positive semi-definite operator G(θ) on a parameter pytree.
Every metric object offers

* ``mv(v)``               G·v for a pytree ``v`` shaped like the parameters;
* ``solve(v, damping)``   (G + damping·I)⁻¹ v;
* ``dense()``             the P×P matrix in ``jax.flatten_util.ravel_pytree`` order;
* ``factorize()``         the same operator decomposed once (``qgeom.metrics.factorization``):
                          cheap ``solve`` for any damping, extremal eigenvalues;

and is a JAX pytree, so it can cross ``jit``/``vmap`` boundaries.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

PyTree = Any


def check_damping(damping) -> None:
    """Raise ``ValueError`` if a concrete ``damping`` is negative or not finite.

    Traced values (inside ``jit``) cannot be inspected and pass through unchecked.
    """
    try:
        d = np.asarray(damping)
    except (TypeError, jax.errors.TracerArrayConversionError):
        return
    if d.ndim != 0:
        raise ValueError(f"damping must be a scalar, got shape {d.shape}")
    if not np.isfinite(d) or d < 0:
        raise ValueError(f"damping must be a finite number >= 0, got {float(d)}")


def check_like(v: PyTree, like: PyTree, name: str = "v") -> None:
    """Raise ``ValueError`` unless ``v`` has the tree structure and leaf shapes of ``like``."""
    sv, sl = jax.tree_util.tree_structure(v), jax.tree_util.tree_structure(like)
    if sv != sl:
        raise ValueError(f"{name} has tree structure {sv}, expected {sl} (the parameters')")
    for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(like)):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(f"{name} has a leaf of shape {jnp.shape(a)} where the parameters have {jnp.shape(b)}")


def _register(cls):
    """Register a dataclass as a pytree: fields in ``meta_fields`` are static, the rest leaves."""
    meta = tuple(getattr(cls, "meta_fields", ()))
    data = tuple(f.name for f in dataclasses.fields(cls) if f.name not in meta)
    return jax.tree_util.register_dataclass(cls, data_fields=list(data), meta_fields=list(meta))


def pytree_dataclass(cls):
    """Decorator: frozen dataclass registered as a pytree (``meta_fields`` class attr = static fields)."""
    return _register(dataclasses.dataclass(frozen=True)(cls))


class Metric(abc.ABC):
    """Abstract metric. Subclasses implement ``mv`` and ``dense``; ``solve`` defaults to a dense solve."""

    @abc.abstractmethod
    def mv(self, v: PyTree) -> PyTree:
        """G·v."""

    @abc.abstractmethod
    def dense(self) -> jax.Array:
        """The P×P matrix in ``ravel_pytree`` order."""

    @abc.abstractmethod
    def _like(self) -> PyTree:
        """A pytree shaped like the parameters (used to ravel/unravel and validate)."""

    def _flat(self, v: PyTree):
        """``ravel_pytree(v)`` after checking that ``v`` is shaped like the parameters."""
        check_like(v, self._like(), "v")
        return ravel_pytree(v)

    def solve(self, v: PyTree, damping=0.0) -> PyTree:
        """(G + damping·I)⁻¹ v by a dense LU solve (``jnp.linalg.solve``) of the P×P matrix (small P only)."""
        check_damping(damping)
        flat, unravel = self._flat(v)
        g = self.dense()
        x = jnp.linalg.solve(g + damping * jnp.eye(g.shape[0], dtype=g.dtype), flat)
        return unravel(x.astype(flat.dtype))

    def factorize(self):
        """A factorization of this metric (``qgeom.metrics.factorization``): the same operator,
        decomposed once so that ``solve(v, λ)`` is cheap for every λ, with ``min_eigenvalue()``
        and ``max_eigenvalue()``. Default: ``EighFactorization`` of ``dense()``."""
        from qgeom.metrics.factorization import EighFactorization

        return EighFactorization.of(self)


@pytree_dataclass
class DenseMetric(Metric):
    """A metric held as an explicit P×P matrix ``matrix`` over parameters shaped like ``params``."""

    matrix: jax.Array
    params: PyTree

    def _like(self):
        return self.params

    def mv(self, v):
        flat, unravel = self._flat(v)
        return unravel((self.matrix @ flat).astype(flat.dtype))

    def dense(self):
        return self.matrix


@pytree_dataclass
class BlockDiagonal(Metric):
    """Block-diagonal metric over the entries of a dict of parameters: G = ⊕_k G_k.

    ``blocks[k]`` is a metric for ``params[k]``; cross blocks are zero. ``mv`` and
    ``solve`` act block by block, so a structured block keeps its cheap solve.
    ``dense()`` assembles the blocks in ``ravel_pytree`` order of the dict (sorted keys).
    """

    blocks: dict

    def _like(self):
        return {k: b._like() for k, b in self.blocks.items()}

    def _check_keys(self, v):
        if not isinstance(v, dict) or set(v) != set(self.blocks):
            keys = sorted(v) if isinstance(v, dict) else type(v).__name__
            raise ValueError(f"expected a dict with keys {sorted(self.blocks)}, got {keys}")

    def mv(self, v):
        self._check_keys(v)
        return {k: b.mv(v[k]) for k, b in self.blocks.items()}

    def solve(self, v, damping=0.0):
        check_damping(damping)
        self._check_keys(v)
        return {k: b.solve(v[k], damping) for k, b in self.blocks.items()}

    def dense(self):
        mats = [self.blocks[k].dense() for k in sorted(self.blocks)]
        return jax.scipy.linalg.block_diag(*mats)

    def factorize(self):
        """Block by block: each block keeps its own (structured) factorization."""
        return BlockDiagonal({k: b.factorize() for k, b in self.blocks.items()})

    def min_eigenvalue(self):
        """Smallest eigenvalue over the blocks (blocks must be factorizations)."""
        return jnp.min(jnp.stack([b.min_eigenvalue() for b in self.blocks.values()]))

    def max_eigenvalue(self):
        """Largest eigenvalue over the blocks (blocks must be factorizations)."""
        return jnp.max(jnp.stack([b.max_eigenvalue() for b in self.blocks.values()]))
