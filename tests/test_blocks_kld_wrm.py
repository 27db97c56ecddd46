"""SO-KLD-WRM (classical.kld_wrm) against K-FAC's preconditioner applied to g_k − ρ g_{k−1}."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qgeom  # noqa: F401
from classical.kld_wrm import kld_wrm
from classical.models import mlp


def test_modified_gradient_steps_and_smoke():
    """Step k is −η P_k(∇h(θ_k) − ρ ∇L(θ_{k−1})) with P_k the engine's K-FAC preconditioner at step k
    (``precondition`` of the returned state: its statistics and cache do not depend on the
    gradient) and ∇ from jax.grad; step 0 (g_{−1} = 0) is K-FAC's. Then 30 steps lower the loss."""
    net = mlp([4, 6, 3], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 4), jnp.float32)
    y = jnp.argmax(x[:, :3], axis=1)
    eta, rho, lr = 1e-3, 0.8, 0.2
    opt = kld_wrm(net, learning_rate=lr, momentum=0.0, damping=0.5, adapt_damping=False, ema_decay=rho,
                  l2_reg=eta, inverse_period=1)
    s = opt.init(params)
    p, prev = params, None
    for _ in range(3):
        p_new, s, _ = opt.step(p, s, (x, y))
        data_grad = jax.grad(net.loss)(p, x, y)
        g = jax.tree_util.tree_map(lambda d, w: d + eta * w, data_grad, p)
        if prev is not None:
            g = jax.tree_util.tree_map(lambda a, b: a - rho * b, g, prev)
        want = opt.precondition(s, g)
        for name in params:
            np.testing.assert_allclose(p_new[name] - p[name], -lr * want[name], rtol=2e-4, atol=1e-6)
        p, prev = p_new, data_grad
    loss0 = float(net.loss(params, x, y))
    for _ in range(30):
        p, s, _ = opt.step(p, s, (x, y))
    assert float(net.loss(p, x, y)) < 0.7 * loss0  # g̃ ≈ (1 − ρ) g near a fixed point: slower than K-FAC
    with pytest.raises(ValueError, match="fixed learning_rate"):
        kld_wrm(net, learning_rate=None)
