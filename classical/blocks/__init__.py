"""Curvature blocks for the K-FAC family: one block kind per module (see ``base`` for the protocol).

* ``base``: ``CurvatureBlock`` (protocol), ``LayerBatch``, ``Layerwise`` (block-diagonal curvature);
* ``kronecker``: ``KroneckerBlock`` (K-FAC's A ⊗ G); ``input_only``: ``InputOnlyBlock`` (FOOF);
* ``ekfac``: ``EKFACBlock`` (K-FAC's eigenbasis, per-example re-fitted diagonal);
* ``randomized``: ``RandomizedKroneckerBlock`` (RS-KFAC: rank-r randomized factor eigendecompositions);
* ``tridiagonal``: ``TridiagonalKronecker`` (block-tridiagonal K-FAC, a curvature over all layers);
* ``tnt``: ``TNTBlock`` (TNT's tensor-normal factors of the sampled-target gradient);
* ``mini_block``: ``MiniBlockFisherBlock`` (mini-block empirical Fisher, batched inverses).
"""

from classical.blocks.base import CurvatureBlock, LayerBatch, Layerwise, input_factor, output_factor
from classical.blocks.ekfac import EKFACBlock
from classical.blocks.input_only import InputOnlyBlock
from classical.blocks.kronecker import KroneckerBlock
from classical.blocks.mini_block import MiniBlockFisherBlock, MiniBlockMetric
from classical.blocks.randomized import RandomizedKroneckerBlock
from classical.blocks.tnt import TNTBlock
from classical.blocks.tridiagonal import GaussianChainMetric, TridiagonalKronecker

__all__ = ["CurvatureBlock", "LayerBatch", "Layerwise", "input_factor", "output_factor", "KroneckerBlock",
           "InputOnlyBlock", "EKFACBlock", "RandomizedKroneckerBlock",
           "TridiagonalKronecker", "GaussianChainMetric", "TNTBlock", "MiniBlockFisherBlock",
           "MiniBlockMetric"]
