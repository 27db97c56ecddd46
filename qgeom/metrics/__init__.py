"""The metric-tensor core: one protocol (``mv``, ``solve``, ``dense``), many metrics."""

from qgeom.metrics.base import BlockDiagonal, DenseMetric, Metric, check_damping, check_like
from qgeom.metrics.kronecker import KroneckerEigenInverse, KroneckerFactored, KroneckerInverse, factored_damping

__all__ = [
    "Metric",
    "DenseMetric",
    "BlockDiagonal",
    "check_damping",
    "check_like",
    "KroneckerFactored",
    "KroneckerInverse",
    "KroneckerEigenInverse",
    "factored_damping",
]
