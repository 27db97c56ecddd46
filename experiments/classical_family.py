"""Builders for the K-FAC family and the gradient-only preconditioners in the classical studies.

Each builder turns one grid point (a dict of hyper-parameters) into what the harness adapts
(``experiments.harness.as_method``); the studies and ``qgeom bench-kfac`` call these same
builders, so a method means the same optimizer everywhere.

Curvature family (K-FAC's ``init/step`` shape; ``lr``, ``momentum``, ``damping``, ``ema``,
``inverse_period``, … as in ``classical_methods.kfac``; damping clipped to [1e-5, 1000]):

* ``ekfac`` — ``classical.ekfac`` (George et al. 2018), extra ``s_decay``, ``s_at_refresh``;
* ``kfac_tridiag`` — ``classical.kfac_tridiag`` (Martens & Grosse §4.3); dense layers only:
  refuses a conv net with a ``ValueError`` at build time;
* ``rs_kfac`` — ``classical.rs_kfac`` (Puiu 2022), extra ``rank``, ``oversample``, ``power_iters``;
* ``kld_wrm`` — ``classical.kld_wrm`` (SO-KLD-WRM, Puiu 2022); needs a fixed ``lr``;
* ``tnt`` — ``classical.tnt``: ``classical.blocks.tnt.TNTBlock`` on every layer (Ren & Goldfarb
  2021; sampled targets, the authors' same-trace normalisation), extra ``form``;
* ``mbf`` — ``classical.mbf``: ``classical.blocks.mini_block.MiniBlockFisherBlock`` (Bahamou,
  Goldfarb & Ren 2023) and the empirical estimator; dense layers cut into ``block_size`` rows,
  conv layers into kernel slices;
* ``hessian_free`` — ``classical.hessian_free.HessianFree`` (Martens 2010): CG on exact
  Gauss–Newton products, ``lr`` (1 = the Gauss–Newton step), ``damping``, ``cg_maxiter``, ``cg_tol``.

optax transformations (learning rate first): ``shampoo``, ``soap``, ``mfac``
(``classical.transforms``), ``sgd_momentum`` (heavy ball) and ``adam`` with its ε.

Unit note for TNT: the authors form their factors from the batch-*mean* gradient; ours
(``form="minibatch"``) from the summed one divided by N, so each normalised factor is √N times
theirs and their (lr, ε) at batch N is (N·lr, √N·ε) here (``tnt_units``).
"""

from __future__ import annotations

import math

import optax

import classical
from classical import models
from experiments.classical_methods import build_ours
from experiments.classical_problems import Problem

CURVATURE_EXTRA = {"ekfac": ("s_decay", "s_at_refresh"), "rs_kfac": ("rank", "oversample", "power_iters", "relative_damping"),
                   "tnt": ("form",), "mbf": ("block_size",)}
REFUSES_CONV = {"kfac-tridiag": "block-tridiagonal K-FAC needs dense layers (cross-layer statistics of "
                                "weight-shared conv layers are not defined)"}


def _has_conv(problem: Problem) -> bool:
    return any(isinstance(layer, models.Conv2D) for layer in problem.net.layers)


def ekfac(problem: Problem, seed: int = 0, **hp):
    """EKFAC: K-FAC's eigenbasis with the per-example re-fitted diagonal."""
    return build_ours(classical.ekfac, problem, seed, hp, extra=CURVATURE_EXTRA["ekfac"])


def kfac_tridiag(problem: Problem, seed: int = 0, **hp):
    """Block-tridiagonal K-FAC (dense layers only)."""
    if _has_conv(problem):
        raise ValueError(f"kfac-tridiag refuses {problem.name!r}: {REFUSES_CONV['kfac-tridiag']}")
    return build_ours(classical.kfac_tridiag, problem, seed, hp)


def rs_kfac(problem: Problem, seed: int = 0, **hp):
    """RS-KFAC: rank-``rank`` randomized factor eigendecompositions (paper: 220, 10, 3)."""
    return build_ours(classical.rs_kfac, problem, seed, hp, extra=CURVATURE_EXTRA["rs_kfac"])


def kld_wrm(problem: Problem, seed: int = 0, **hp):
    """SO-KLD-WRM: K-FAC on g_k − ρ g_{k−1}; needs ``lr``."""
    if "lr" not in hp:
        raise ValueError("kld-wrm needs a fixed learning rate 'lr' in its grid point")
    return build_ours(classical.kld_wrm, problem, seed, hp)


def tnt(problem: Problem, seed: int = 0, **hp):
    """TNT (``classical.tnt``): tensor-normal factors Ũ_1 ⊗ Ũ_2 per layer (needs ``lr``)."""
    return build_ours(classical.tnt, problem, seed, hp, extra=CURVATURE_EXTRA["tnt"])


def mbf(problem: Problem, seed: int = 0, **hp):
    """MBF (``classical.mbf``): mini-blocks of the empirical Fisher (needs ``lr``); conv layers use kernel slices."""
    return build_ours(classical.mbf, problem, seed, hp, extra=CURVATURE_EXTRA["mbf"])


def hessian_free(problem: Problem, seed: int = 0, lr=1.0, **hp):
    """Hessian-free (``HessianFree``; K-FAC-shaped ``init``/``step``), ℓ2 from the problem."""
    from classical.hessian_free import HessianFree

    return HessianFree(problem.net, l2_reg=problem.l2, learning_rate=lr, seed=seed, **hp)


def shampoo(lr, **kw):
    """``classical.shampoo`` (AdaGrad-grafted; ``epsilon`` relative to each factor's λ_max)."""
    return classical.shampoo(lr, **kw)


def soap(lr, **kw):
    """``classical.soap`` (the reference's defaults: β = (0.95, 0.95), wd 0.01, refresh every 10)."""
    return classical.soap(lr, **kw)


def mfac(lr, **kw):
    """``classical.mfac`` (window ``num_grads``, ``damping``, ``momentum``)."""
    return classical.mfac(lr, **kw)


def sgd_momentum(lr, momentum=0.9):
    """optax SGD with constant heavy-ball momentum (the Goldfarb group's SGD-m)."""
    return optax.sgd(lr, momentum=momentum)


def adam(lr, eps=1e-8):
    """optax Adam with its ε exposed."""
    return optax.adam(lr, eps=eps)


def tnt_units(lr, damping, batch_size):
    """The TNT authors' (lr, ε) at batch N in ``tnt``'s units: (N·lr, √N·ε) (module docstring)."""
    return lr * batch_size, damping * math.sqrt(batch_size)


BUILDERS = {"ekfac": ("EKFAC", ekfac), "kfac-tridiag": ("K-FAC, block-tridiagonal", kfac_tridiag),
            "rs-kfac": ("RS-KFAC", rs_kfac), "kld-wrm": ("SO-KLD-WRM", kld_wrm), "tnt": ("TNT", tnt),
            "mbf": ("MBF", mbf), "hessian-free": ("Hessian-free", hessian_free), "shampoo": ("Shampoo", shampoo),
            "soap": ("SOAP", soap), "mfac": ("M-FAC", mfac)}


def family_specs(grids: dict) -> list:
    """``MethodSpec``s of ``BUILDERS`` entries, one per ``{name: grid}`` (in that order)."""
    from experiments.harness import MethodSpec

    return [MethodSpec(name, BUILDERS[name][0], BUILDERS[name][1], tuple(grid)) for name, grid in grids.items()]
