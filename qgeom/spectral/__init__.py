"""Matrix-free spectra and solvers for any symmetric operator given by its mat-vec.

* ``lanczos``, ``extremal_eigenvalues``: Lanczos with full reorthogonalization, Ritz values
  with residual error bounds;
* ``slq``, ``spectral_density``, ``trace_estimate``: stochastic Lanczos quadrature;
* ``nystrom_pcg``, ``pcg``, ``nystrom_preconditioner``: conjugate gradients preconditioned by
  a randomized Nyström approximation (Frangella, Tropp & Udell 2023);
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
]
