"""``qgeom.optimize.sequence`` compiles one step per (model, optimizer, loss family) and feeds
the target as data: same numbers as ``fit`` on the closed-over loss, one compiled executable
for every point and chain, non-finite steps reported."""

import jax
import networkx as nx
import numpy as np
import optax
import pytest

import qgeom  # noqa: F401
from qgeom.optimize import adam, fit, qpngd, sequence
from qgeom.quantum import QHBM, Parity, gibbs_state, hardware_efficient, qmhl_loss, tfim, vqt_loss


@pytest.fixture(scope="module")
def setup():
    H = tfim(nx.path_graph(2))
    return H, QHBM(Parity(2, 2), hardware_efficient(2, 1))


def test_traced_target_fits_equal_closed_over_fits(setup):
    H, model = setup
    start = model.init(jax.random.PRNGKey(3))
    opt = qpngd(model, 0.3)
    ours = sequence.fit_vqt(model, H, 0.5, opt, 8, start)
    ref = fit(vqt_loss(model, H, 0.5), start, opt, 8)
    np.testing.assert_allclose(ours.loss, ref.loss, rtol=1e-10, atol=1e-12)
    assert ours.final_loss == pytest.approx(ref.final_loss, rel=1e-10, abs=1e-12)
    assert ours.grad_evals == ref.grad_evals and ours.status == ref.status == "completed"
    sigma, opt = gibbs_state(H, 0.7), adam(0.05)
    ours = sequence.fit_qmhl(model, sigma, opt, 8, start)
    ref = fit(qmhl_loss(model, sigma), start, opt, 8)
    np.testing.assert_allclose(ours.loss, ref.loss, rtol=1e-10, atol=1e-12)
    assert ours.final_loss == pytest.approx(ref.final_loss, rel=1e-10, abs=1e-12)


def test_one_compile_serves_every_point_and_chain(setup):
    H, model = setup
    opt = adam(0.05)
    for warm in (True, False):
        sequence.imaginary_time(model, H, [0.5, 1.5], opt, 5, warm=warm)
    sigma0 = gibbs_state(H, 1.0)
    H_zz, H_x = tfim(nx.path_graph(2), J=1.0, h=0.0), tfim(nx.path_graph(2), J=0.0, h=1.0)
    for warm in (True, False):
        sequence.real_time(model, H_zz, H_x, 0.1, 2, opt, 5, sigma0, warm=warm)
    mine = [v for k, v in sequence._COMPILED.items() if k[0] is model and k[1] is opt]
    assert sorted(k[2] for k in sequence._COMPILED if k[0] is model and k[1] is opt) == ["qmhl", "vqt"]
    for _, step in mine:  # 4 + 4 fits, one executable each
        assert step._cache_size() == 1


def test_non_finite_step_is_reported_not_propagated(setup):
    H, model = setup
    start = model.init(jax.random.PRNGKey(0))
    broken = optax.chain(optax.scale(0.1), optax.scale(float("nan")))  # every update is NaN
    res = sequence.fit_vqt(model, H, 1.0, broken, 5, start)
    assert res.status.startswith("stopped at step 0") and res.loss == []
    for a, b in zip(jax.tree_util.tree_leaves(res.params), jax.tree_util.tree_leaves(start)):
        np.testing.assert_array_equal(a, b)  # left at the last finite point
    (pt,) = sequence.imaginary_time(model, H, [1.0], broken, 5)
    assert pt.status.startswith("stopped at step 0") and np.isfinite(pt.final_divergence)


def test_bad_targets_raise(setup):
    H, model = setup
    with pytest.raises(ValueError, match="beta"):
        sequence.fit_vqt(model, H, -1.0, adam(0.1), 3, model.init(jax.random.PRNGKey(0)))
    with pytest.raises(ValueError, match="trace"):
        sequence.fit_qmhl(model, np.eye(4) / 2, adam(0.1), 3, model.init(jax.random.PRNGKey(0)))
    with pytest.raises(ValueError, match="steps"):
        sequence.fit_qmhl(model, np.eye(4) / 4, adam(0.1), 0, model.init(jax.random.PRNGKey(0)))
