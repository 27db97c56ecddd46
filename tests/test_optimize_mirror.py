"""QPMD / mirror_descent: first-order limit, divergences against references, bad input."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import qgeom  # noqa: F401
from qgeom.metrics import bkm
from qgeom.optimize import (
    density_divergence,
    mirror_descent,
    qhbm_divergence,
    qpmd,
    trace_rho_log_rho,
)
from qgeom.quantum import QHBM, Parity, hardware_efficient, relative_entropy


@pytest.fixture(scope="module")
def setup():
    model = QHBM(Parity(2, 2), hardware_efficient(2, 1))
    params = model.init(jax.random.PRNGKey(2))
    return model, params


def test_qpmd_step_approaches_damped_natural_gradient(setup):
    """ξ* − ξ_t = −η[(1−α)G + αI]⁻¹g + O(η²): the absolute error falls ≈ 4× per halving of η.

    The inner problem is solved to machine precision by 400 plain gradient steps (its Hessian
    is (1−α)G + αI + O(η), eigenvalues in [0.5, ~1.5] here). Observed error ratios ≈ 0.25.
    Since the inner objective is η⟨g, ξ⟩ + ..., a step with rate η equals a step with rate 1 on ηg,
    so one compiled update serves every η.
    """
    model, params = setup
    alpha = 0.5
    g = {"theta": jnp.array([0.3, -0.2, 0.5]), "phi": jnp.full(params["phi"].shape, 0.1).at[0, 0, 0].set(-0.4)}
    opt = qpmd(model, learning_rate=1.0, alpha=alpha, inner_steps=400, inner_optimizer=optax.sgd(0.6))
    update = jax.jit(lambda grads: opt.update(grads, opt.init(params), params)[0])

    G = np.asarray(bkm(model.density_matrix, params).dense())
    A = (1 - alpha) * G + alpha * np.eye(len(G))
    flat_g = np.asarray(ravel_pytree(g)[0])
    errs = []
    for eta in (0.2, 0.1, 0.05):
        step = np.asarray(ravel_pytree(update(jax.tree_util.tree_map(lambda x: eta * x, g)))[0])
        first_order = -eta * np.linalg.solve(A, flat_g)
        errs.append(np.linalg.norm(step - first_order))
        rel = errs[-1] / np.linalg.norm(first_order)
    assert errs[1] / errs[0] < 0.35 and errs[2] / errs[1] < 0.35
    assert rel < 0.02


def test_divergences_agree_with_relative_entropy(setup):
    model, params = setup
    other = jax.tree_util.tree_map(lambda x: x + 0.3, params)
    ref = float(relative_entropy(model.density_matrix(other), model.density_matrix(params)))
    for div in (qhbm_divergence(model), density_divergence(model.density_matrix)):
        frozen = div.freeze(params)
        assert float(div.value(other, frozen)) == pytest.approx(ref, rel=1e-9)
        assert float(div.value(params, frozen)) == pytest.approx(0.0, abs=1e-10)
    q, d = qhbm_divergence(model), density_divergence(model.density_matrix)
    gq = jax.grad(q.value)(other, q.freeze(params))
    gd = jax.grad(d.value)(other, d.freeze(params))
    for a, b in zip(jax.tree_util.tree_leaves(gq), jax.tree_util.tree_leaves(gd)):
        np.testing.assert_allclose(a, b, atol=1e-9)


def test_trace_rho_log_rho_gradient_finite_at_pure_and_degenerate_states():
    def rho_of(t):  # pure at t = 0 (eigenvalues 1, 0, 0: degenerate zero pair)
        v = jnp.array([jnp.cos(t), jnp.sin(t), 0.0])
        return (1 - t**2) * jnp.outer(v, v) + t**2 * jnp.eye(3) / 3

    for t in (0.0, 0.2):
        grad = jax.grad(lambda s: trace_rho_log_rho(rho_of(s)))(t)
        assert np.isfinite(float(grad))
    h = 1e-6
    fd = (trace_rho_log_rho(rho_of(0.2 + h)) - trace_rho_log_rho(rho_of(0.2 - h))) / (2 * h)
    assert float(jax.grad(lambda s: trace_rho_log_rho(rho_of(s)))(0.2)) == pytest.approx(float(fd), rel=1e-6)


def test_alpha_one_is_plain_gradient_descent(setup):
    """α = 1: the inner problem is η⟨g, ξ⟩ + ½‖ξ − ξ_t‖², minimiser ξ_t − ηg."""
    model, params = setup
    g = jax.tree_util.tree_map(lambda x: 0.1 * jnp.ones_like(x), params)
    opt = qpmd(model, 0.5, alpha=1.0, inner_steps=60, inner_optimizer=optax.sgd(0.5))
    upd, state = opt.update(g, opt.init(params), params)
    for u in jax.tree_util.tree_leaves(upd):
        np.testing.assert_allclose(u, -0.05, rtol=1e-12)
    assert int(state.count) == 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(learning_rate=float("inf")), "learning_rate"),
        (dict(alpha=1.5), "alpha"),
        (dict(alpha=-0.1), "alpha"),
        (dict(inner_steps=0), "inner_steps"),
        (dict(inner_lr=-1e-3), "inner_lr"),
    ],
)
def test_bad_input(setup, kwargs, match):
    with pytest.raises(ValueError, match=match):
        qpmd(setup[0], **kwargs)


def test_alpha_zero_warns(setup):
    with pytest.warns(UserWarning, match="no minimiser"):
        qpmd(setup[0], alpha=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mirror_descent(density_divergence(setup[0].density_matrix), alpha=0.2)
