"""The torus study's problem: its loss is the VQT identity D(ρ‖σ_β) − log Z on the 2×3 torus."""

import jax
import numpy as np
import pytest

import qgeom  # noqa: F401
from experiments import torus
from qgeom.quantum import gibbs_state, relative_entropy


def test_torus_problem_loss_plus_log_z_is_exact_relative_entropy():
    prob = torus.problem("2x3", 0.3, "cx1")  # β small: σ_β has no eigenvalue below relative_entropy's floor
    params = prob.model.init(jax.random.PRNGKey(0))
    H, dense, model = torus._family("2x3", "cx1", 1.0, 2.5)
    d = float(relative_entropy(model.density_matrix(params), gibbs_state(dense, 0.3)))
    assert float(prob.loss(params)) + prob.offset == pytest.approx(d, abs=1e-9)
    assert np.allclose(dense, dense.conj().T)


@pytest.mark.parametrize("text", ["2x1", "3", "axb"])
def test_bad_lattice_is_refused(text):
    with pytest.raises(ValueError, match="torus|lattice"):
        torus.parse_lattice(text)
