"""Quantum side of qgeom: TFIM Hamiltonians, exact thermodynamics, QHBMs, VQT/QMHL losses."""

from qgeom.quantum.circuits import Circuit, hardware_efficient, tfim_qaoa
from qgeom.quantum.ebm import Bernoulli, Ising, Parity, ZProductEBM, basis_bits, bits_to_index
from qgeom.quantum.free_fermion import FreeFermionThermo, tfim_free_fermion
from qgeom.quantum.hamiltonians import hamiltonian_matrix, pauli_tables, sparse_matrix, tfim
from qgeom.quantum.limits import check_dense, max_dense_bytes
from qgeom.quantum.losses import qmhl_loss, vqt_loss
from qgeom.quantum.qhbm import QHBM, PreparedObservable
from qgeom.quantum.shadows import ShadowData, measure_shadows, nearest_density_matrix
from qgeom.quantum.thermo import (
    check_beta,
    check_density_matrix,
    entropy,
    fidelity,
    free_energy,
    gibbs_state,
    log_partition,
    relative_entropy,
    thermal_energy,
    thermal_entropy,
    trace_distance,
)

__all__ = [
    "Bernoulli", "Circuit", "FreeFermionThermo", "tfim_free_fermion", "Ising", "max_dense_bytes", "Parity", "PreparedObservable", "QHBM",
    "ShadowData", "ZProductEBM", "basis_bits", "bits_to_index", "check_beta", "check_dense",
    "check_density_matrix", "entropy", "fidelity", "free_energy", "gibbs_state",
    "hamiltonian_matrix", "hardware_efficient", "log_partition", "measure_shadows", "nearest_density_matrix",
    "pauli_tables", "qmhl_loss", "relative_entropy", "sparse_matrix", "tfim", "tfim_qaoa",
    "thermal_energy", "thermal_entropy", "trace_distance", "vqt_loss",
]
