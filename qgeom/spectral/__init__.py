"""Matrix-free spectra and solvers for any symmetric operator given by its mat-vec.

* ``lanczos``, ``extremal_eigenvalues``: Lanczos with full reorthogonalization, Ritz values
  with residual error bounds;
* ``slq``, ``spectral_density``, ``trace_estimate``: stochastic Lanczos quadrature;
* ``nystrom_pcg``, ``pcg``, ``nystrom_preconditioner``: conjugate gradients preconditioned by
  a randomized Nyström approximation (Frangella, Tropp & Udell 2023);
* ``slq_hyperparameters``, ``heavy_ball_from_spectrum``: heavy-ball learning rate and momentum
  from an SLQ spectrum (Granziol, Zohren & Roberts 2022's SLQ learner);
* ``flat_operator``: a 1-D mat-vec from a ``qgeom.metrics`` metric or a pytree mat-vec
  (Hessian-, GGN- or Fisher-vector products, K-FAC's approximation, the BKM metric of a QHBM).
"""

from qgeom.spectral.lanczos import (
    Extremal,
    extremal_eigenvalues,
    flat_operator,
    lanczos,
    slq,
    spectral_density,
    trace_estimate,
    tridiagonal,
)
from qgeom.spectral.learner import heavy_ball_from_spectrum, slq_hyperparameters
from qgeom.spectral.pcg import (
    NystromPreconditioner,
    nystrom_pcg,
    nystrom_preconditioner,
    nystrom_sketch,
    pcg,
)

__all__ = [
    "lanczos",
    "extremal_eigenvalues",
    "Extremal",
    "slq",
    "spectral_density",
    "trace_estimate",
    "tridiagonal",
    "flat_operator",
    "nystrom_pcg",
    "nystrom_preconditioner",
    "nystrom_sketch",
    "NystromPreconditioner",
    "pcg",
    "heavy_ball_from_spectrum",
    "slq_hyperparameters",
]
