"""Factories for the K-FAC family on the block engine: each returns a ``classical.kfac.KFAC``
(fused ``step``, optax ``update``, ``gradient_transformation()``) with another curvature.

* ``ekfac(model, s_decay=None, **settings)`` — EKFAC (George et al. 2018):
  ``classical.blocks.ekfac.EKFACBlock`` on every layer;
* ``rs_kfac(model, rank=..., **settings)`` — randomized K-FAC (Puiu 2022):
  ``classical.blocks.randomized.RandomizedKroneckerBlock``;
* ``kfac_tridiag(model, **settings)`` — block-tridiagonal K-FAC (Martens & Grosse 2015 §4.3):
  ``classical.blocks.tridiagonal.TridiagonalKronecker`` over all layers.

``settings`` are ``KFAC``'s keyword arguments (learning rate, momentum, damping, periods, …).
"""

from __future__ import annotations

import functools

from classical.blocks.ekfac import EKFACBlock
from classical.blocks.randomized import RandomizedKroneckerBlock
from classical.blocks.tridiagonal import TridiagonalKronecker
from classical.kfac import KFAC


def _no_blocks(settings, name):
    for bad in ("blocks", "inverse"):
        if bad in settings:
            raise ValueError(f"{name} sets its own curvature; it has no {bad!r} setting")


def ekfac(model, *, s_decay=None, s_at_refresh="batch", **settings) -> KFAC:
    """EKFAC: K-FAC's eigenbasis (refreshed every ``inverse_period`` steps) with the diagonal
    S = E[(Q_Aᵀ ∇W_n Q_G)²] re-estimated at every statistics update (EMA decay ``s_decay``, or
    the statistics' ε_k when ``None``); ΔW = Q_A[(Q_Aᵀ ∇W Q_G)/(S + λ)]Q_Gᵀ. At a basis refresh S
    restarts from the step's batch in the new basis (``s_at_refresh="batch"``, the paper's
    Algorithm 1), or from the K-FAC eigenvalues (``"kfac"``, the authors' code), or is projected
    (``"project"``); see ``classical.blocks.ekfac``."""
    _no_blocks(settings, "ekfac")
    return KFAC(model, blocks=functools.partial(EKFACBlock, s_decay=s_decay, s_at_refresh=s_at_refresh),
                **settings)


def rs_kfac(model, *, rank=220, oversample=10, power_iters=3, relative_damping=False, **settings) -> KFAC:
    """Randomized K-FAC (RS-KFAC): K-FAC whose factors are replaced at every refresh by rank-``rank``
    randomized Nyström eigendecompositions (``oversample``, ``power_iters`` as in Halko et al.);
    defaults are the paper's (220, 10, 3). ``relative_damping``: λ·max(D) per factor (the paper)
    instead of K-FAC's factored Tikhonov split."""
    _no_blocks(settings, "rs_kfac")
    seed = settings.get("seed", 0)
    return KFAC(model, blocks=functools.partial(RandomizedKroneckerBlock, rank=rank, oversample=oversample,
                                                power_iters=power_iters, relative_damping=relative_damping,
                                                seed=seed), **settings)


def kfac_tridiag(model, **settings) -> KFAC:
    """Block-tridiagonal K-FAC: F̂⁻¹ = Ξᵀ Λ Ξ of the layer-chain Gaussian graphical model, with
    cross-layer statistics E[ā_{i−1} ā_iᵀ], E[g_i g_{i+1}ᵀ] (dense layers only)."""
    _no_blocks(settings, "kfac_tridiag")
    return KFAC(model, blocks=TridiagonalKronecker(dict(model.layer_shapes)), **settings)
