"""The metric-tensor core: one protocol (``mv``, ``solve``, ``dense``, ``factorize``), many metrics."""

from qgeom.metrics.base import BlockDiagonal, DenseMetric, Metric, check_damping, check_like
from qgeom.metrics.factorization import EighFactorization, KroneckerEigenbasis
from qgeom.metrics.fisher import (
    OutputFisher,
    empirical_fisher,
    fisher,
    fisher_bernoulli,
    fisher_categorical,
    fisher_monte_carlo,
    ggn_gaussian,
)
from qgeom.metrics.gaussian import GaussianFisher, GaussianFisherDiag, gaussian_fisher
from qgeom.metrics.kronecker import (
    KroneckerFactored,
    KroneckerInverse,
    factored_damping,
)
from qgeom.metrics.lowrank import (
    GradientWindow,
    GradientWindowInverse,
    LowRankPlusDiagonal,
    mfac,
    nystrom,
)
from qgeom.metrics.qhbm import qhbm_bkm, qhbm_bkm_sampled, qhbm_fubini_study
from qgeom.metrics.qhbm_lowrank import circuit_bkm_mv, qhbm_bkm_nystrom
from qgeom.metrics.quantum import (
    FubiniStudy,
    PetzMetric,
    bkm,
    check_density_matrix,
    fubini_study,
    petz,
    petz_kernel,
)

__all__ = [
    # protocol and composition
    "Metric",
    "DenseMetric",
    "BlockDiagonal",
    "check_damping",
    "check_like",
    # classical Fisher
    "fisher",
    "fisher_categorical",
    "fisher_bernoulli",
    "ggn_gaussian",
    "fisher_monte_carlo",
    "empirical_fisher",
    "OutputFisher",
    # quantum
    "fubini_study",
    "petz",
    "bkm",
    "petz_kernel",
    "check_density_matrix",
    "FubiniStudy",
    "PetzMetric",
    # structured metrics of quantum Hamiltonian-based models
    "qhbm_bkm",
    "qhbm_bkm_sampled",
    "qhbm_fubini_study",
    "circuit_bkm_mv",
    "qhbm_bkm_nystrom",
    # Gaussian family (closed-form Fisher in (mean, covariance) coordinates)
    "gaussian_fisher",
    "GaussianFisher",
    "GaussianFisherDiag",
    # Kronecker-factored
    "KroneckerFactored",
    "KroneckerInverse",
    # factorizations (Metric.factorize())
    "EighFactorization",
    "KroneckerEigenbasis",
    "factored_damping",
    # low rank
    "nystrom",
    "mfac",
    "LowRankPlusDiagonal",
    "GradientWindow",
    "GradientWindowInverse",
]
