"""QPNGD / natural_gradient: one step against a dense solve, cached curvature, LM damping, rejection."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import qgeom  # noqa: F401
from qgeom.metrics import DenseMetric, bkm
from qgeom.optimize import EighMetric, natural_gradient, qng, qpngd
from qgeom.quantum import QHBM, Parity, hardware_efficient


@pytest.fixture(scope="module")
def setup():
    model = QHBM(Parity(2, 2), hardware_efficient(2, 1))
    params = model.init(jax.random.PRNGKey(0))
    h = jnp.diag(jnp.array([1.0, -0.5, 0.3, 0.2])) + 0.1
    loss = lambda p: jnp.real(jnp.trace(model.density_matrix(p) @ h)) - model.entropy(p)  # noqa: E731
    return model, params, loss


@pytest.mark.parametrize("shift,damping", [(1.0, 1e-2), (0.0, 0.3)])
def test_one_qpngd_step_equals_dense_solve(setup, shift, damping):
    model, params, loss = setup
    eta = 0.3
    opt = qpngd(model, eta, damping=damping, shift=shift)
    grads = jax.grad(loss)(params)
    updates = jax.jit(lambda g, p: opt.update(g, opt.init(p), p)[0])(grads, params)

    # Independent reference: the generic Petz-BKM metric of ρ, numpy eigvals and solve.
    g = np.asarray(jax.jit(lambda p: bkm(model.density_matrix, p).dense())(params))
    lam = damping + (shift if np.linalg.eigvalsh(g).min() <= 1.0 else 0.0)
    flat_g, unravel = ravel_pytree(grads)
    expected = -eta * np.linalg.solve(g + lam * np.eye(len(g)), np.asarray(flat_g))
    np.testing.assert_allclose(ravel_pytree(updates)[0], expected, rtol=1e-8, atol=1e-12)


def test_qng_step_uses_fubini_study_block(setup):
    model, params, loss = setup
    from qgeom.metrics import qhbm_fubini_study

    opt = qng(model, 0.2, damping=0.05)
    grads = jax.grad(loss)(params)
    updates = jax.jit(lambda g, p: opt.update(g, opt.init(p), p)[0])(grads, params)
    g = np.asarray(qhbm_fubini_study(model, params).dense())
    flat_g, _ = ravel_pytree(grads)
    expected = -0.2 * np.linalg.solve(g + 0.05 * np.eye(len(g)), np.asarray(flat_g))
    np.testing.assert_allclose(ravel_pytree(updates)[0], expected, rtol=1e-8, atol=1e-12)


def test_eigh_metric_matches_dense():
    a = jax.random.normal(jax.random.PRNGKey(1), (5, 5))
    g = a @ a.T
    m = EighMetric.of(DenseMetric(g, jnp.zeros(5)))
    v = jnp.arange(5.0)
    np.testing.assert_allclose(m.dense(), g, atol=1e-10)
    np.testing.assert_allclose(m.mv(v), g @ v, atol=1e-10)
    np.testing.assert_allclose(m.solve(v, 0.1), np.linalg.solve(g + 0.1 * np.eye(5), v), rtol=1e-9)


def _quadratic(a):
    """loss = ½ θᵀAθ with metric A: natural gradient at lr 1, λ → 0 is Newton."""
    metric_fn = lambda p: DenseMetric(a, p)  # noqa: E731
    loss = lambda p: 0.5 * p @ a @ p  # noqa: E731
    return metric_fn, loss


def test_refresh_every_k_reuses_the_factorization():
    a0 = jnp.diag(jnp.array([1.0, 4.0]))
    calls = []

    def metric_fn(p):
        calls.append(None)  # counts traces, not executions
        return DenseMetric(a0 * (1 + jnp.sum(p**2)), p)  # depends on p

    opt = natural_gradient(metric_fn, 0.5, damping=0.1, shift=0.0, refresh_every=3)
    step = jax.jit(lambda g, s, p: opt.update(g, s, p))
    p = jnp.array([1.0, -1.0])
    state = opt.init(p)
    g0 = np.asarray(metric_fn(p).matrix)
    for t in range(4):
        grad = jnp.array([0.3, 0.2]) * (t + 1)
        upd, state = step(grad, state, p)
        if t in (1, 2):  # metric frozen at the point of step 0
            expected = -0.5 * np.linalg.solve(g0 + 0.1 * np.eye(2), np.asarray(grad))
            np.testing.assert_allclose(upd, expected, rtol=1e-10)
        p = p + upd
    assert int(state.refreshes) == 2  # steps 0 and 3


def test_lm_damping_decreases_on_a_trusted_model_and_rejects_increases():
    a = jnp.diag(jnp.array([1.0, 10.0]))
    metric_fn, loss = _quadratic(a)
    opt = natural_gradient(metric_fn, 1.0, damping=1.0, shift=0.0, adapt_damping=True)
    p = jnp.array([1.0, 1.0])
    state = opt.init(p)
    for _ in range(6):  # the quadratic model is exact: ratio ≈ 1 > 3/4 every step
        v, g = jax.value_and_grad(loss)(p)
        upd, state = opt.update(g, state, p, value=v)
        p = optax.apply_updates(p, upd)
    assert float(state.damping) == pytest.approx(1.0 * (2 / 3) ** 5)
    assert int(state.rejected) == 0

    # Pretend the last step raised the loss: it is rejected, we go back and retry with more damping.
    last = state.prev_params
    v, g = jax.value_and_grad(loss)(p)
    upd, state2 = opt.update(g, state, p, value=float(state.prev_value) + 1.0)
    assert int(state2.rejected) == 1
    assert float(state2.damping) > float(state.damping)
    retry = -np.linalg.solve(np.asarray(a) + float(state2.damping) * np.eye(2), np.asarray(state.prev_grads))
    np.testing.assert_allclose(p + upd, np.asarray(last) + retry, rtol=1e-10)


def test_max_norm_bounds_the_metric_length():
    a = jnp.diag(jnp.array([1.0, 10.0]))
    metric_fn, loss = _quadratic(a)
    opt = natural_gradient(metric_fn, 1.0, damping=0.0, shift=0.0, max_norm=0.01)
    p = jnp.array([3.0, 2.0])
    upd, _ = opt.update(jax.grad(loss)(p), opt.init(p), p)
    assert float(upd @ a @ upd) == pytest.approx(0.01)
    np.testing.assert_allclose(upd / jnp.linalg.norm(upd), -p / jnp.linalg.norm(p), rtol=1e-10)  # Newton direction


def test_non_finite_gradient_is_rejected():
    metric_fn, _ = _quadratic(jnp.eye(2))
    opt = natural_gradient(metric_fn, 0.1, damping=0.01, shift=0.0)
    p = jnp.array([1.0, 1.0])
    upd, state = opt.update(jnp.array([jnp.nan, 1.0]), opt.init(p), p)
    np.testing.assert_array_equal(upd, 0.0)
    assert int(state.rejected) == 1 and float(state.damping) > 0.01


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(learning_rate=float("nan")), "learning_rate"),
        (dict(learning_rate=0.1, damping=-1.0), "damping"),
        (dict(learning_rate=0.1, refresh_every=0), "refresh_every"),
        (dict(learning_rate=0.1, lm_decay=1.5), "lm_decay"),
        (dict(learning_rate=0.1, max_norm=0.0), "max_norm"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        natural_gradient(lambda p: DenseMetric(jnp.eye(1), p), **kwargs)


@pytest.mark.parametrize("factory", ["qpngd", "qpmd"])
def test_step_size_injected_as_traced_hyperparameter(setup, factory):
    """optax.inject_hyperparams: one compile for every step size, same step as a fixed η."""
    from qgeom.optimize import qpmd

    model, params, loss = setup
    make = {"qpngd": lambda learning_rate: qpngd(model, learning_rate, damping=0.1, shift=0.0),
            "qpmd": lambda learning_rate: qpmd(model, learning_rate, inner_steps=5, inner_lr=0.05)}[factory]
    injected = optax.inject_hyperparams(make)(learning_rate=1.0)
    grads = jax.grad(loss)(params)

    @jax.jit
    def injected_step(lr):
        state = injected.init(params)
        state.hyperparams["learning_rate"] = lr
        return ravel_pytree(injected.update(grads, state, params)[0])[0]

    for lr in (0.05, 0.4):
        fixed = make(lr)
        expected = ravel_pytree(fixed.update(grads, fixed.init(params), params)[0])[0]
        np.testing.assert_allclose(injected_step(jnp.asarray(lr)), expected, rtol=1e-9, atol=1e-12)
    assert injected_step._cache_size() == 1


def test_momentum_is_heavy_ball_on_the_natural_step(setup):
    """Two steps with the same gradient and a cached metric: δ₂ = μ δ₁ + δ₁ (heavy ball)."""
    model, params, loss = setup
    grads = jax.grad(loss)(params)
    plain = qpngd(model, 0.3, damping=0.1, shift=0.0, refresh_every=100)
    heavy = qpngd(model, 0.3, damping=0.1, shift=0.0, refresh_every=100, momentum=0.7)

    @jax.jit
    def two_steps(g):
        s = heavy.init(params)
        u1, s = heavy.update(g, s, params)
        u2, _ = heavy.update(g, s, params)
        return ravel_pytree(u1)[0], ravel_pytree(u2)[0]

    first = ravel_pytree(plain.update(grads, plain.init(params), params)[0])[0]
    u1, u2 = two_steps(grads)
    np.testing.assert_allclose(u1, first, rtol=1e-10)
    np.testing.assert_allclose(u2, 1.7 * first, rtol=1e-10)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="momentum"):
            qpngd(model, 0.3, momentum=bad)
    with pytest.raises(ValueError, match="momentum"):
        qpngd(model, 0.3, momentum=0.9, adapt_damping=True)
