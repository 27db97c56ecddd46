"""FOOF and the optax baselines against their closed-form definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import qgeom  # noqa: F401
from classical.baselines import adam, sgd_sutskever, sutskever_momentum
from classical.foof import FOOF, foof
from classical.models import mlp


def test_sutskever_schedule_closed_form():
    sched = sutskever_momentum(0.99)
    for t, mu in [(0, 0.5), (249, 0.5), (250, 0.75), (500, 1 - 1 / 6), (750, 0.875), (10**6, 0.99)]:
        np.testing.assert_allclose(sched(t), mu, rtol=1e-6)
    tx = sgd_sutskever(0.1, mu_max=0.9)
    state = tx.init({"w": jnp.zeros(2, jnp.float32)})
    for _ in range(3):
        _, state = tx.update({"w": jnp.ones(2, jnp.float32)}, state)
    np.testing.assert_allclose(state.hyperparams["momentum"], 0.5)


def test_adam_is_optax_adam():
    params = {"w": jnp.array([1.0, -2.0], jnp.float32)}
    g = {"w": jnp.array([0.3, 0.1], jnp.float32)}
    a, ref = adam(1e-2), optax.adam(1e-2)
    np.testing.assert_allclose(a.update(g, a.init(params))[0]["w"], ref.update(g, ref.init(params))[0]["w"])


def test_foof_step_is_A_only_preconditioned_gradient():
    """ΔW = −η (A + λI)⁻¹ ∇W with A = mean ā āᵀ computed here from the layer inputs."""
    net = mlp([4, 6, 3], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (10, 4), jnp.float32)
    y = jnp.arange(10) % 3
    opt = FOOF(net, learning_rate=0.2, momentum=0.0, damping=0.3)
    new, state, info = opt.step(params, opt.init(params), (x, y))
    grads = jax.grad(net.loss)(params, x, y)
    h = np.asarray(x, np.float64)
    for name in sorted(params):
        a = np.concatenate([h, np.ones((10, 1))], axis=1)
        A = a.T @ a / 10
        expected = -0.2 * np.linalg.solve(A + 0.3 * np.eye(A.shape[0]), np.asarray(grads[name], np.float64))
        np.testing.assert_allclose(new[name] - params[name], expected, rtol=1e-4, atol=1e-6)
        h = np.tanh(h @ np.asarray(params[name][:-1]) + np.asarray(params[name][-1])) if name == "layer00" else h
    assert state.G == {}
    # optax form, in a chain
    tx = optax.chain(foof(net, learning_rate=0.2, momentum=0.0, damping=0.3))
    upd, _ = tx.update(grads, tx.init(params), params, batch=(x, y))
    for k in params:
        np.testing.assert_allclose(upd[k], new[k] - params[k], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="learning_rate"):
        FOOF(net, learning_rate=0.0)
    with pytest.raises(ValueError, match="damping"):
        FOOF(net, learning_rate=0.1, damping=-1.0)
