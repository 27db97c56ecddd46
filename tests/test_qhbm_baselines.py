"""The authors' sweep (experiments.qhbm_baselines): logged quantities vs independent formulas."""

import numpy as np
import pytest

import qgeom  # noqa: F401
from experiments import qhbm_baselines as qb

CONFIG = dict(qb.DEFAULT, n=3, init_steps=3, num_steps=2, time_steps=1, betas=[0.5, 1.0], log_every=1)


def test_vqt_chain_logs_match_exact_relative_entropy():
    from experiments.quantum_problems import ring
    from qgeom.quantum import log_partition, tfim

    run = qb.run_chain(CONFIG, "vqt", "natural", "Adam", "prev", seed=0)
    assert [p["label"] for p in run["points"]] == [0.5, 1.0]
    for p in run["points"]:
        log_z = float(log_partition(tfim(ring(3)), p["label"]))
        assert p["target_loss"] == pytest.approx(-log_z)
        # D(ρ‖σ_β) by eigendecompositions = VQT loss + log Z (the variational identity)
        np.testing.assert_allclose(np.asarray(p["rel_entropy"][:-1]), p["loss"] + log_z, atol=1e-9)
        assert np.all(np.asarray(p["eig_min"]) >= -1e-10) and np.all(np.isfinite(p["natgrad_norm"]))
    # warm start: the second point starts where the first ended
    assert run["points"][1]["rel_entropy"][0] != pytest.approx(run["points"][0]["rel_entropy"][0])


@pytest.mark.slow
def test_qvartz_qmhl_point_targets_the_evolved_model():
    from experiments.quantum_problems import ring
    from qgeom.quantum import tfim, thermal_entropy

    run = qb.run_chain(CONFIG, "qvartz", "vanilla", "SGD", "random", seed=1)
    vqt, qmhl = run["points"]
    assert qmhl["family"] == "qmhl" and qmhl["label"] == 1.0
    # V unitary: S(exact target) = S(σ_β) at β = 1, and S(V ρ V†) = H(p_θ) of the trained model
    assert qmhl["target_loss"] == pytest.approx(float(thermal_entropy(tfim(ring(3)), 1.0)), abs=1e-9)
    m = qb.model(3, "qhea7")
    assert qmhl["loss_floor"] == pytest.approx(float(m.entropy(vqt["params_end"])), abs=1e-9)
    assert np.all(qmhl["loss"] >= qmhl["loss_floor"] - 1e-12)  # −Tr σ log ρ ≥ S(σ)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="methods"):
        qb.check_config(dict(qb.DEFAULT, methods=["sgd"]))
    with pytest.raises(ValueError, match="setting"):
        qb.check_config(dict(qb.DEFAULT, setting="mine"))
