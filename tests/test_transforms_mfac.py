"""M-FAC (classical.transforms.mfac) against ``numpy.linalg.solve`` with the window's dense matrix.

Float64 parameters; after every insertion (m = 4, seven gradients: the ring wraps) the step must
equal solve(λI + GᵀG/m, g) with G the last m gradients (the buffer starts at zeros, which add
nothing). The test computes cond(λI + GᵀG/m) and sets the tolerance to 1e3·u·cond.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qgeom  # noqa: F401  (enables x64)
from classical.transforms import mfac
from classical.transforms.mfac import window_metric

U = np.finfo(np.float64).eps
SHAPES = {"w": (3, 2), "b": (2,)}  # d = 8, ravel order: b then w


def _flat(tree):
    return np.concatenate([np.asarray(tree[k]).ravel() for k in sorted(tree)])


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.7, 0.05)])
def test_steps_equal_dense_solve_after_the_ring_wraps(momentum, weight_decay):
    m, lam, lr = 4, 0.1, 0.5
    tx = mfac(lr, num_grads=m, damping=lam, momentum=momentum, weight_decay=weight_decay)
    update = jax.jit(tx.update)
    rng = np.random.default_rng(0)
    params = {k: jnp.asarray(rng.standard_normal(s)) for k, s in SHAPES.items()}
    state = tx.init(params)
    window, v = [], np.zeros(8)
    for _ in range(7):
        grads = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
        out, state = update(grads, state, params)
        g = _flat(grads) + weight_decay * _flat(params)
        window = (window + [g])[-m:]
        G = np.array(window)
        F = lam * np.eye(8) + G.T @ G / m
        step = np.linalg.solve(F, g)
        v = momentum * v + (1 - momentum) * step
        tol = 1e3 * U * np.linalg.cond(F)
        np.testing.assert_allclose(_flat(out), -lr * v, rtol=tol, atol=tol * np.abs(v).max())
        params = jax.tree_util.tree_map(lambda p, u: p + u, params, out)
    assert int(state.count) == 7
    # the state's window is qgeom's M-FAC metric: its Woodbury solve agrees with the dense one
    metric = window_metric(state, params)
    np.testing.assert_allclose(metric.dense(), G.T @ G / m, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(_flat(metric.solve(grads, lam)), np.linalg.solve(F, _flat(grads)),
                               rtol=tol, atol=tol * np.abs(step).max())


def test_lone_gradient_is_a_normalised_step():
    """One gradient in a window of m: F̂⁻¹g = g/(λ + ‖g‖²/m) (closed form)."""
    g = jnp.arange(1.0, 4.0)
    tx = mfac(1.0, num_grads=3, damping=1e-3)
    out, _ = tx.update(g, tx.init(g))
    np.testing.assert_allclose(-np.asarray(out), np.asarray(g) / (1e-3 + 14.0 / 3), rtol=1e-12)


def test_float32_gradients_with_authors_damping():
    """Authors' λ = 1e-5 with float32 gradients of norm 30: cond(F̂) ≈ 1e7, beyond float32's 1/u.
    The step is formed as Gᵀy (no cancellation), y from the float64 m×m system, so its error is the
    float32 rounding of Σ_j y_j g_j, ≤ m·u32·‖|G|ᵀ|y|‖, plus the float64 solve's u64·cond(F̂)."""
    rng = np.random.default_rng(2)
    m, lam, D = 8, 1e-5, 200
    tx = mfac(1.0, num_grads=m, damping=lam)
    update = jax.jit(tx.update)
    state = tx.init(jnp.zeros(D, jnp.float32))
    gs = [(30 * rng.standard_normal(D) / np.sqrt(D)).astype(np.float32) for _ in range(m)]
    for g in gs:
        out, state = update(jnp.asarray(g), state)
    G = np.array(gs, np.float64)
    F = lam * np.eye(D) + G.T @ G / m
    want = np.linalg.solve(F, G[-1])
    y = m * np.linalg.solve(m * lam * np.eye(m) + G @ G.T, np.eye(m)[-1])
    assert np.linalg.cond(F) > 1e7 and out.dtype == jnp.float32
    bound = 2 * m * np.finfo(np.float32).eps * np.linalg.norm(np.abs(G).T @ np.abs(y)) / np.linalg.norm(want)
    err = np.linalg.norm(-np.asarray(out, np.float64) - want) / np.linalg.norm(want)
    assert err <= bound + 1e3 * U * np.linalg.cond(F), (err, bound)


def test_nonfinite_gradient_leaves_the_window_unchanged():
    tx = mfac(0.1, num_grads=2, damping=0.1)
    state = tx.init(jnp.zeros(3))
    _, state = tx.update(jnp.ones(3), state)
    out, state2 = tx.update(jnp.array([1.0, jnp.nan, 0.0]), state)
    assert np.all(np.asarray(out) == 0) and int(state2.total_notfinite) == 1
    for a, b in zip(state2[:4], state[:4]):  # count, window, Gram matrix, velocity
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs,match", [
    ({"num_grads": 0}, "window m"), ({"num_grads": 2.0}, "window m"), ({"damping": 0.0}, "damping"),
    ({"damping": -1.0}, "damping"), ({"momentum": 1.0}, "momentum"), ({"weight_decay": -0.1}, "weight_decay"),
    ({"learning_rate": -1.0}, "learning_rate"),
])
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mfac(**kwargs)


def test_mismatched_gradients_raise():
    tx = mfac(0.1, num_grads=2, weight_decay=0.1)
    state = tx.init({"w": jnp.zeros((3, 2))})
    with pytest.raises(ValueError, match="shape"):
        tx.update({"w": jnp.zeros((2, 3))}, state, {"w": jnp.zeros((3, 2))})
    with pytest.raises(ValueError, match="needs params"):
        tx.update({"w": jnp.zeros((3, 2))}, state)


_IN_PLACE = """
import functools, jax, jax.numpy as jnp, optax
from classical.transforms import mfac
from experiments.classical_methods import float32_mode
with float32_mode():
    params = {"a": jnp.zeros((300, 200)), "b": jnp.zeros((200, 100))}  # small ones compile differently
    tx = mfac(1.0, num_grads=4, momentum=0.5)
    loss = lambda p: jnp.sum(jnp.tanh(p["a"]) ** 2) + jnp.sum(p["b"] ** 3)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state):
        p, s = state
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    lines = step.lower((params, tx.init(params))).compile().as_text().splitlines()
print(sum("f32[4,80000]" in l for l in lines), sum("f32[4,80000]" in l and " copy(" in l for l in lines))
"""


@pytest.mark.slow
def test_donated_step_updates_the_window_in_place():
    """Jitted with the state donated and XLA's default pipeline (a fresh process: the suite's
    conftest turns backend optimisation off), the compiled step holds no copy of the m × d
    window. With dot(y, G) for Gᵀy it held two, and M-FAC's step was 2.6× SGD's on the ReLU
    autoencoder (``qgeom bench-shape``)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", _IN_PLACE], env=env, capture_output=True, text=True, check=True)
    uses, copies = map(int, out.stdout.split()[-2:])
    assert uses > 0 and copies == 0
