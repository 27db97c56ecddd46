"""The block protocol and engine stages: per-example gradients, mixed blocks, damping rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qgeom  # noqa: F401
from classical.blocks import InputOnlyBlock, KroneckerBlock, LayerBatch
from classical.kfac import KFAC
from classical.models import mlp
from qgeom.optimize.damping import (
    all_finite,
    levenberg_marquardt,
    reduction_ratio,
    rejected_damping,
)


@pytest.fixture(scope="module")
def problem():
    net = mlp([4, 5, 3], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 4), jnp.float32)
    return net, params, x, jnp.arange(8) % 3


def test_layer_batch_per_example_grads_are_jax_per_example_gradients(problem):
    """The engine's stage 2 with the empirical estimator: ∇W_n = ā_n g_nᵀ equals jax.grad of the
    n-th example's NLL (float32 network: rtol 1e-5)."""
    net, params, x, y = problem
    opt = KFAC(net, estimator="empirical")

    @jax.jit
    def stage_2(p):
        batches = opt._layer_batches(opt._linearize_batch(p, x, y), jax.random.PRNGKey(0))
        return {k: b.per_example_grads() for k, b in batches.items()}, batches["layer00"].inputs

    got, inputs = stage_2(params)
    want = jax.vmap(lambda xi, yi: jax.grad(lambda p: net.loss(p, xi[None], yi[None]))(params))(x, y)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="preact_grads"):
        LayerBatch(inputs, None).per_example_grads()


def test_mixed_blocks_per_layer(problem):
    """Kronecker (exact eigen inverse) on one layer, FOOF's input-only block on the other; each
    layer's preconditioned gradient is its own block's dense solve."""
    net, params, x, y = problem
    opt = KFAC(net, learning_rate=0.1, momentum=0.0, damping=0.4, adapt_damping=False,
               blocks={"layer00": lambda s: KroneckerBlock(s, inverse="eigen"), "layer01": InputOnlyBlock})
    _, state, _ = opt.step(params, opt.init(params), (x, y))
    g = jax.grad(net.loss)(params, x, y)
    pre = opt.precondition(state, g)
    a0, g0 = np.asarray(state.stats["layer00"]["A"], np.float64), np.asarray(state.stats["layer00"]["G"], np.float64)
    want0 = np.linalg.solve(np.kron(a0, g0) + 0.4 * np.eye(25),
                            np.asarray(g["layer00"], np.float64).ravel())
    np.testing.assert_allclose(pre["layer00"].ravel(), want0, rtol=1e-3, atol=1e-6)
    a1 = np.asarray(state.stats["layer01"]["A"], np.float64)
    want1 = np.linalg.solve(a1 + 0.4 * np.eye(6), np.asarray(g["layer01"], np.float64))
    np.testing.assert_allclose(pre["layer01"], want1, rtol=1e-4, atol=1e-6)
    assert set(state.G) == {"layer00"}
    dense = np.asarray(opt.metric(state).dense())  # ⊕: A⊗G, then A⊗I
    np.testing.assert_allclose(dense[25:, 25:], np.kron(a1, np.eye(3)), rtol=1e-6)
    with pytest.raises(ValueError, match="every layer"):
        KFAC(net, blocks={"layer00": InputOnlyBlock})


def test_damping_rules_closed_form():
    """LM: ρ > 3/4 → ωλ, ρ < 1/4 → λ/ω, between or non-finite → λ; rejection min(f·max(λ, floor), cap)."""
    lam = jnp.asarray(2.0)
    for rho, want in [(0.9, 1.0), (0.1, 4.0), (0.5, 2.0), (jnp.nan, 2.0), (-jnp.inf, 2.0)]:
        np.testing.assert_allclose(levenberg_marquardt(lam, rho, 0.5), want)
    np.testing.assert_allclose(reduction_ratio(-1.0, -2.0), 0.5)
    assert float(reduction_ratio(1.0, 0.0)) < -1e299
    np.testing.assert_allclose(rejected_damping(0.0, 10.0, floor=1e-3, ceiling=1.0), 1e-2)
    np.testing.assert_allclose(rejected_damping(0.5, 10.0, floor=1e-3, ceiling=1.0), 1.0)
    assert bool(all_finite({"a": jnp.ones(2)}, [])) and not bool(all_finite({"a": jnp.array([1.0, jnp.inf])}))
