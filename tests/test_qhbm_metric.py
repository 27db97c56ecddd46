"""Structured QHBM metrics against independent references.

* ``qhbm_bkm`` vs the generic Petz–BKM metric of the density matrix (eigendecomposition of
  ρ, jacfwd of ρ) and vs the Hessian of θ' ↦ D(ρ_θ‖ρ_θ') (autodiff of the relative entropy);
* the generic metric's (θ, φ) cross block vanishes (the structured one is block-diagonal
  by construction);
* the shot-based estimator: exact expectations reproduce the metric (parameter-shift rule),
  and finite shots agree within a stated statistical tolerance;
* the Fubini–Study comparison metric vs the generic pure-state FS metric averaged over p_θ,
  and vs PennyLane's ``qml.metric_tensor(approx=None)``.
"""

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pennylane as qml
import pytest
from jax.flatten_util import ravel_pytree

import qgeom  # noqa: F401  (float64)
from qgeom.metrics import bkm, fubini_study, qhbm_bkm, qhbm_bkm_sampled, qhbm_fubini_study
from qgeom.metrics.qhbm import circuit_generators
from qgeom.quantum import QHBM, Circuit, Parity, hardware_efficient, tfim_qaoa


@pytest.fixture(scope="module")
def model_params():
    model = QHBM(Parity(3, 2), hardware_efficient(3, 2))
    return model, model.init(jax.random.PRNGKey(3))


def test_structured_bkm_equals_generic_and_relative_entropy_hessian(model_params):
    model, params = model_params
    g = np.asarray(jax.jit(lambda p: qhbm_bkm(model, p).dense())(params))
    generic = _generic_bkm(model, params)
    np.testing.assert_allclose(g, generic, atol=1e-10 * np.abs(g).max())

    flat, unravel = ravel_pytree(params)

    def rel_ent(a, b):  # D(ρ_a‖ρ_b) = Tr ρ_a log ρ_a − Tr ρ_a log ρ_b, logs from the model's spectra
        ra = model.density_matrix(unravel(a))
        la, lb = model.log_density_matrix(unravel(a)), model.log_density_matrix(unravel(b))
        return jnp.real(jnp.trace(ra @ (la - lb)))

    hess = np.asarray(jax.jit(jax.hessian(lambda b: rel_ent(flat, b)))(flat))
    np.testing.assert_allclose(g, hess, atol=1e-9 * np.abs(g).max())


def _generic_bkm(model, params):
    """Reference: the generic Petz-BKM metric of model.density_matrix, compiled (eager is slow)."""
    return np.asarray(jax.jit(lambda p: bkm(model.density_matrix, p).dense())(params))


def _rot_circuit(phi):
    qml.Rot(*phi[0], wires=0)  # three parameters in one gate: generators by jacfwd
    qml.CNOT([0, 1])
    qml.RY(phi[1, 0], wires=1)


@pytest.mark.parametrize(
    "circuit",
    [tfim_qaoa(nx.path_graph(2), 2), Circuit(_rot_circuit, [0, 1], (2, 3))],
    ids=["tied-angles", "multi-parameter-gate"],
)
def test_generator_paths_match_generic_bkm(circuit):
    """Per-gate generators with the chain rule (tfim_qaoa: RX(2δ), IsingZZ(2γ)) and the jacfwd fallback."""
    model = QHBM(Parity(2, 2), circuit)
    params = model.init(jax.random.PRNGKey(7))
    g = np.asarray(jax.jit(lambda p: qhbm_bkm(model, p).dense())(params))
    np.testing.assert_allclose(g, _generic_bkm(model, params), atol=1e-10 * np.abs(g).max())


def _mixed_circuit(phi):
    """Single-qubit runs cut by multi-qubit gates on other wires, tied angles, a phase gate
    (generator |1⟩⟨1|, with an identity part) and two-qubit parameterized gates."""
    qml.RX(phi[0], wires="a")
    qml.RY(phi[1], wires="b")
    qml.CNOT(wires=["a", "b"])
    qml.RZ(2.0 * phi[0], wires="a")
    qml.PhaseShift(phi[2], wires="b")
    qml.RY(phi[3], wires="a")
    qml.CRY(phi[4], wires=["a", "c"])
    qml.RX(phi[5], wires="c")
    qml.IsingZZ(phi[1], wires=["b", "c"])
    qml.RY(phi[5], wires="b")


def test_generators_match_jacobian_of_unitary():
    """T_j from one sweep with shared per-(wire, run) products vs i U†∂_jU from jax.jacfwd of U."""
    circuit = Circuit(_mixed_circuit, ["a", "b", "c"], (6,))
    phi = circuit.init(jax.random.PRNGKey(4), scale=1.0)
    u = circuit.unitary(phi)
    ref = 1j * jnp.einsum("ki,klp->pil", u.conj(), jax.jacfwd(circuit.unitary)(phi))
    gens = jax.jit(lambda p: circuit_generators(circuit, p))(phi)
    # entries are O(1) (‖T_j‖ ≤ Σ_g |J_gj| ‖H_g‖ ≤ 2); ten gates of rounding on 8×8 unitaries
    np.testing.assert_allclose(gens, ref, atol=100 * 8 * np.finfo(float).eps)


def test_cross_block_vanishes(model_params):
    model, params = model_params
    generic = _generic_bkm(model, params)
    n_phi = params["phi"].size  # ravel order of the dict: "phi" before "theta"
    assert np.abs(generic[:n_phi, n_phi:]).max() < 1e-12 * np.abs(generic).max()
    assert np.abs(generic[:n_phi, :n_phi]).max() > 1e-2  # the blocks themselves are not trivial


def test_sampled_estimator_exact_limit_and_shots():
    model = QHBM(Parity(2, 2), hardware_efficient(2, 2))
    params = model.init(jax.random.PRNGKey(5))
    exact = np.asarray(jax.jit(lambda p: qhbm_bkm(model, p).dense())(params))
    est = jax.jit(lambda p, key, shots: qhbm_bkm_sampled(model, p, key, shots).dense(), static_argnums=2)
    shift_exact = np.asarray(est(params, jax.random.PRNGKey(0), None))
    np.testing.assert_allclose(shift_exact, exact, atol=1e-12)

    n_phi = params["phi"].size
    e_max = float(jnp.abs(model.ebm.energies(params["theta"])).max())
    errs = []
    for shots in (1_000, 100_000):
        g = np.asarray(est(params, jax.random.PRNGKey(1), shots))
        err = np.abs(g - exact)
        errs.append(err.max())
        # Statistical tolerance (6 standard errors): each circuit entry combines 4 shot means of
        # E (|E| <= e_max) divided by 4, std <= e_max / (2 sqrt(shots)); EBM entries are sample
        # covariances of ±1 features, std <= 1/sqrt(shots) (ddof-1 bias 1/shots is smaller).
        assert err[:n_phi, :n_phi].max() < 6 * e_max / (2 * np.sqrt(shots))
        assert err[n_phi:, n_phi:].max() < 6 / np.sqrt(shots)
    assert errs[1] < errs[0]


def test_fubini_study_comparison_metric():
    model = QHBM(Parity(2, 2), hardware_efficient(2, 2))
    params = model.init(jax.random.PRNGKey(8))
    g_theta, g_phi = jax.jit(lambda q: [qhbm_fubini_study(model, q).blocks[k].dense() for k in ("theta", "phi")])(params)
    circ = model.circuit

    @jax.jit
    def reference(q):
        p = model.probabilities(q)
        mats = [fubini_study(lambda phi, x=x: circ.unitary(phi)[:, x], q["phi"]).dense() for x in range(2**model.n)]
        return sum(p[x] * m for x, m in enumerate(mats))

    np.testing.assert_allclose(g_phi, np.asarray(reference(params)), atol=1e-10)
    np.testing.assert_allclose(g_theta, np.eye(params["theta"].size))


def test_fubini_study_single_input_matches_pennylane():
    """With p concentrated on |00⟩ (large positive fields) the FS block is PennyLane's full metric tensor."""
    n = 2
    model = QHBM(Parity(n, 1), hardware_efficient(n, 1))
    phi = jnp.array([[[0.3, -0.7], [1.1, 0.4]]])
    params = {"theta": jnp.full((n,), -40.0), "phi": phi}  # E = θ·s, s = +1 for bit 0: p(00) ≈ 1
    g = np.asarray(jax.jit(lambda q: qhbm_fubini_study(model, q).blocks["phi"].dense())(params))

    dev = qml.device("default.qubit", wires=n + 1)

    @qml.qnode(dev, interface="jax")
    def circuit(phi):
        model.circuit.qfunc(phi)
        return qml.expval(qml.Z(0))

    mt = np.asarray(qml.metric_tensor(circuit, approx=None, aux_wire=n)(phi)).reshape(phi.size, phi.size)
    np.testing.assert_allclose(g, mt, atol=1e-10)


def test_bad_params_rejected(model_params):
    model, params = model_params
    with pytest.raises(ValueError, match="keys"):
        qhbm_bkm(model, {"theta": params["theta"]})
    with pytest.raises(ValueError, match="shots"):
        qhbm_bkm_sampled(model, params, jax.random.PRNGKey(0), 1)
