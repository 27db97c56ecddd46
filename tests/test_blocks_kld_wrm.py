"""SO-KLD-WRM (classical.kld_wrm) against K-FAC's preconditioner applied to g_k − ρ g_{k−1}."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qgeom  # noqa: F401
from classical.kfac import KFAC
from classical.kld_wrm import kld_wrm
from classical.models import mlp


def test_modified_gradient_steps_and_smoke():
    """Same statistics (same sampling key, momentum 0, fixed damping) as a plain K-FAC run, so
    step k of KLD-WRM is −η F̃_k⁻¹(∇h(θ_k) − ρ ∇L(θ_{k−1})) with F̃_k⁻¹ from K-FAC's state at
    step k (the preconditioner alone does not depend on the gradient); step 0 is K-FAC's."""
    net = mlp([4, 6, 3], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 4), jnp.float32)
    y = jnp.argmax(x[:, :3], axis=1)
    eta, rho, lr = 1e-3, 0.8, 0.2
    kw = dict(learning_rate=lr, momentum=0.0, damping=0.5, adapt_damping=False, ema_decay=rho, l2_reg=eta,
              inverse="eigen", inverse_period=1)
    opt, ref = kld_wrm(net, **kw), KFAC(net, **kw)
    s, r = opt.init(params), ref.init(params)
    p, prev = params, None
    for _ in range(3):
        p_new, s, _ = opt.step(p, s, (x, y))
        _, r, _ = ref.step(p, r, (x, y))  # K-FAC's statistics at θ_k (its own parameters are unused)
        data_grad = jax.grad(net.loss)(p, x, y)
        g = jax.tree_util.tree_map(lambda d, w: d + eta * w, data_grad, p)
        if prev is not None:
            g = jax.tree_util.tree_map(lambda a, b: a - rho * b, g, prev)
        want = ref.precondition(r, g)
        for name in params:
            np.testing.assert_allclose(p_new[name] - p[name], -lr * want[name], rtol=2e-4, atol=1e-6)
        p, prev = p_new, data_grad
    loss0 = float(net.loss(params, x, y))
    for _ in range(30):
        p, s, _ = opt.step(p, s, (x, y))
    assert float(net.loss(p, x, y)) < 0.7 * loss0  # g̃ ≈ (1 − ρ) g near a fixed point: slower than K-FAC
    with pytest.raises(ValueError, match="fixed learning_rate"):
        kld_wrm(net, learning_rate=None)
