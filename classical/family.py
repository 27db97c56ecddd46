"""Factories for the K-FAC family on the block engine: each returns a ``classical.kfac.KFAC``
(fused ``step``, optax ``update``, ``gradient_transformation()``) with another curvature.

* ``ekfac(model, s_decay=None, **settings)`` — EKFAC (George et al. 2018):
  ``classical.blocks.ekfac.EKFACBlock`` on every layer;
* ``rs_kfac(model, rank=..., **settings)`` — randomized K-FAC (Puiu 2022):
  ``classical.blocks.randomized.RandomizedKroneckerBlock``;
* ``kfac_tridiag(model, **settings)`` — block-tridiagonal K-FAC (Martens & Grosse 2015 §4.3):
  ``classical.blocks.tridiagonal.TridiagonalKronecker`` over all layers;
* ``tnt(model, form=..., **settings)`` — TNT (Ren & Goldfarb 2021): ``classical.blocks.tnt.TNTBlock``;
* ``mbf(model, block_size=..., **settings)`` — mini-block Fisher (Bahamou, Goldfarb & Ren 2023):
  ``classical.blocks.mini_block.MiniBlockFisherBlock`` with the empirical estimator.

``settings`` are ``KFAC``'s keyword arguments (learning rate, momentum, damping, periods, …).
"""

from __future__ import annotations

import functools

from classical.blocks.ekfac import EKFACBlock
from classical.blocks.mini_block import MiniBlockFisherBlock
from classical.blocks.randomized import RandomizedKroneckerBlock
from classical.blocks.tnt import TNTBlock
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


def tnt(model, *, form="minibatch", **settings) -> KFAC:
    """TNT: the sampled-target gradient modelled as tensor-normal, F_W ≈ Ũ_1 ⊗ Ũ_2 with the authors'
    same-trace normalisation, on every layer (``form`` "minibatch" as the authors' code, or
    "per_example"; see ``classical.blocks.tnt``). Keeps K-FAC's sampled-target estimator."""
    _no_blocks(settings, "tnt")
    if settings.get("estimator", "fisher") != "fisher":
        raise ValueError("tnt models the sampled-target (true) Fisher: estimator must be 'fisher'")
    return KFAC(model, blocks=functools.partial(TNTBlock, form=form), **settings)


def mbf(model, *, block_size=16, **settings) -> KFAC:
    """MBF: every layer's empirical-Fisher block cut into mini-blocks, inverted as one batch —
    dense layers into runs of ``block_size`` rows per output unit, conv layers into one k_h·k_w
    kernel slice per (input, output) channel pair (kernel sizes read from ``model``); see
    ``classical.blocks.mini_block``. Uses the empirical estimator (data labels)."""
    from classical.models import Conv2D

    _no_blocks(settings, "mbf")
    if settings.setdefault("estimator", "empirical") != "empirical":
        raise ValueError("mbf preconditions with the empirical Fisher: estimator must be 'empirical'")
    kernels = {f"layer{i:02d}": tuple(layer.kernel_size) for i, layer in enumerate(model.layers)
               if isinstance(layer, Conv2D)}
    blocks = {name: functools.partial(MiniBlockFisherBlock, block_size=block_size, kernel_size=kernels.get(name))
              for name in model.layer_shapes}
    return KFAC(model, blocks=blocks, **settings)
