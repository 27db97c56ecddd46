"""The metric-tensor core: one protocol (``mv``, ``solve``, ``dense``), many metrics."""

from qgeom.metrics.base import BlockDiagonal, DenseMetric, Metric, check_damping, check_like

__all__ = ["Metric", "DenseMetric", "BlockDiagonal", "check_damping", "check_like"]
