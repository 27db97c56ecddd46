"""Hessian-free (classical.hessian_free) against dense Gauss–Newton matrices, closed forms and optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import qgeom  # noqa: F401  (enables x64; the nets stay float32)
from classical.hessian_free import HessianFree, hessian_free
from classical.models import mlp

EPS32 = float(np.finfo(np.float32).eps)


def _dense_ggn(net, params, x):
    """G = (1/N) Σ_n J_nᵀ H_n J_n in float64 numpy from the explicit Jacobian (jax.jacrev) and the
    NLL's output Hessian written out: diag(p) − ppᵀ (softmax) or diag(σ(1 − σ)) (sigmoid)."""
    flat, unravel = ravel_pytree(params)
    jac = np.asarray(jax.jacrev(lambda f: net.apply(unravel(f), x))(flat), np.float64)  # (N, K, P)
    z = np.asarray(net.apply(params, x), np.float64)
    if net.output.name == "categorical":
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        h = np.einsum("nk,kl->nkl", p, np.eye(z.shape[1])) - np.einsum("nk,nl->nkl", p, p)
    else:
        s = 1 / (1 + np.exp(-z))
        h = np.einsum("nk,kl->nkl", s * (1 - s), np.eye(z.shape[1]))
    return np.einsum("nkp,nkl,nlq->pq", jac, h, jac) / x.shape[0]


def _data(net, n, seed=1):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(kx, (n, *net.input_shape), jnp.float32)
    if net.output.name == "categorical":
        y = jax.random.randint(ky, (n,), 0, net.output_shape[-1])
    elif net.output.name == "bernoulli":
        y = jax.random.bernoulli(ky, 0.5, (n, *net.output_shape)).astype(jnp.float32)
    else:
        y = jax.random.normal(ky, (n, *net.output_shape), jnp.float32)
    return x, y


@pytest.fixture(scope="module")
def classifier():
    net = mlp([6, 8, 4], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(0))
    x, y = _data(net, 16)
    ggn = _dense_ggn(net, params, x)
    return net, params, x, y, ggn


@pytest.mark.parametrize("output", ["categorical", pytest.param("bernoulli", marks=pytest.mark.slow)])
def test_ggn_products_equal_dense_fisher(output, classifier):
    """(G + ηI)v from one JVP + one VJP equals the dense Jᵀ H J (+ηI): float32
    sums of ~P·N terms, so the error is ≲ 1e3·eps32·‖G‖."""
    if output == "categorical":
        net, params, x, _, dense = classifier
    else:
        net = mlp([5, 7, 3], "tanh", "bernoulli")
        params = net.init(jax.random.PRNGKey(2))
        x, _ = _data(net, 10)
        dense = _dense_ggn(net, params, x)
    eta = 0.01
    opt = HessianFree(net, l2_reg=eta)
    dim = dense.shape[0]
    cols = np.asarray(jax.jit(jax.vmap(opt.ggn_mv(params, x)))(jnp.eye(dim, dtype=jnp.float32))).T
    scale = np.linalg.norm(dense, 2)
    np.testing.assert_allclose(cols, dense + eta * np.eye(dim), atol=1e3 * EPS32 * scale)


def _dense_step(opt, params, x, y, ggn, lam):
    flat = np.asarray(ravel_pytree(params)[0], np.float64)
    g = np.asarray(ravel_pytree(jax.grad(opt.model.loss)(params, x, y))[0], np.float64) + opt.l2_reg * flat
    a = ggn + (opt.l2_reg + lam) * np.eye(len(flat))
    return -np.linalg.solve(a, g), np.linalg.cond(a), g


@pytest.fixture(scope="module")
def one_step(classifier):
    net, params, x, y, ggn = classifier
    opt = HessianFree(net, damping=0.05, l2_reg=1e-3, cg_tol=1e-5, cg_maxiter=500, reject_uphill=False)
    new, state, info = opt.step(params, opt.init(params), (x, y))
    return opt, new, state, info


def test_step_is_damped_gauss_newton_solve(classifier, one_step):
    """δ = −(G + ηI + λI)⁻¹∇h with CG to relative residual 1e-5: ‖δ − δ*‖/‖δ*‖ ≤ κ·(1e-5 + the
    float32 residual floor ~ 10·eps32·κ); κ of the damped matrix is computed here."""
    net, params, x, y, ggn = classifier
    opt, new, state, info = one_step
    ref, kappa, _ = _dense_step(opt, params, x, y, ggn, 0.05)
    delta = np.asarray(ravel_pytree(new)[0], np.float64) - np.asarray(ravel_pytree(params)[0], np.float64)
    assert float(info["cg_residual"]) <= 1e-5
    np.testing.assert_allclose(delta, ref, atol=kappa * (1e-5 + 10 * EPS32 * kappa) * np.linalg.norm(ref))


def test_levenberg_marquardt_rule(classifier, one_step):
    """ρ = (h(θ + δ) − h(θ)) / (½δᵀ(G + ηI)δ + ∇hᵀδ) from the dense G; λ follows Martens' rule."""
    net, params, x, y, ggn = classifier
    opt, new, state, info = one_step
    delta = np.asarray(ravel_pytree(new)[0], np.float64) - np.asarray(ravel_pytree(params)[0], np.float64)
    _, _, g = _dense_step(opt, params, x, y, ggn, 0.05)
    q = 0.5 * delta @ (ggn + opt.l2_reg * np.eye(len(delta))) @ delta + g @ delta
    h0 = float(opt._objective(params, x, y))
    h1 = float(opt._objective(new, x, y))
    rho = (h1 - h0) / q
    # float32 objectives: |h1 − h0| carries ~2·eps32·|h| rounding, relative to |q|
    assert abs(float(info["rho"]) - rho) <= 10 * EPS32 * abs(h0) / abs(q) + 1e-4 * abs(rho)
    expect = 0.05 * (1.5 if rho < 0.25 else (2 / 3 if rho > 0.75 else 1.0))
    np.testing.assert_allclose(float(state.damping), expect, rtol=1e-6)


def test_one_step_solves_ridge_regression():
    """A linear Gaussian-output model is quadratic and its GGN is its Hessian: one step with
    λ = 1e-7 lands on the ridge solution (XᵀX/N + ηI)⁻¹XᵀY/N (numpy lstsq on the augmented
    system), up to κ·(cg_tol + eps32·κ) with κ = cond(XᵀX/N + ηI) ≈ 10 computed here."""
    net = mlp([4, 3], "linear", "gaussian")
    params = net.init(jax.random.PRNGKey(3))
    x, y = _data(net, 64, seed=4)
    eta = 0.1
    opt = HessianFree(net, damping=1e-7, l2_reg=eta, cg_tol=1e-6, min_damping=1e-9)
    new, _, _ = opt.step(params, opt.init(params), (x, y))
    xa = np.concatenate([np.asarray(x, np.float64), np.ones((64, 1))], axis=1)  # bias row last
    gram = xa.T @ xa / 64 + eta * np.eye(5)
    ref = np.linalg.lstsq(np.concatenate([xa / 8, np.sqrt(eta) * np.eye(5)]),
                          np.concatenate([np.asarray(y, np.float64) / 8, np.zeros((5, 3))]), rcond=None)[0]
    kappa = np.linalg.cond(gram)
    w = np.asarray(new[sorted(new)[0]], np.float64)
    np.testing.assert_allclose(w, ref, atol=kappa * (1e-6 + 100 * EPS32 * kappa) * np.abs(ref).max() + 1e-6 * 1e-7)


def test_nystrom_preconditioned_step_matches_and_saves_iterations(classifier, one_step):
    """The Nyström-preconditioned solve reaches the same δ (both to residual 1e-5 of the same
    system: within 2κ·1e-5) in fewer CG iterations (G has rank ≤ N·(K−1) = 48 of 72 directions)."""
    net, params, x, y, ggn = classifier
    opt, new, _, info = one_step
    pre = HessianFree(net, damping=0.05, l2_reg=1e-3, cg_tol=1e-5, cg_maxiter=500, reject_uphill=False,
                      preconditioner="nystrom", nystrom_rank=40)
    new_p, _, info_p = pre.step(params, pre.init(params), (x, y))
    _, kappa, _ = _dense_step(opt, params, x, y, ggn, 0.05)
    a, b = (np.asarray(ravel_pytree(t)[0], np.float64) for t in (new, new_p))
    d = a - np.asarray(ravel_pytree(params)[0], np.float64)
    np.testing.assert_allclose(b, a, atol=2 * kappa * (1e-5 + 10 * EPS32 * kappa) * np.linalg.norm(d))
    assert int(info_p["cg_iterations"]) < int(info["cg_iterations"])


@pytest.mark.slow
def test_optax_update_equals_fused_step(classifier, one_step):
    """``update`` with the caller's gradient gives the fused step's update. The two gradients
    differ by float32 rounding (different fusion), which the solve amplifies by κ: 100·eps32·κ."""
    net, params, x, y, ggn = classifier
    opt, new, state, info = one_step
    tx = hessian_free(net, damping=0.05, l2_reg=1e-3, cg_tol=1e-5, cg_maxiter=500, reject_uphill=False)
    st = tx.init(params)
    upd, st = tx.update(jax.grad(net.loss)(params, x, y), st, params, batch=(x, y))
    got = optax.apply_updates(params, upd)
    ref, kappa, _ = _dense_step(opt, params, x, y, ggn, 0.05)
    for k in params:
        np.testing.assert_allclose(got[k], new[k], atol=100 * EPS32 * kappa * np.linalg.norm(ref))
    np.testing.assert_allclose(float(st.damping), float(state.damping), rtol=1e-6)


def test_non_finite_batch_is_rejected(classifier, one_step):
    """A NaN input: zero update, λ × reject_damping_factor, the warm start cleared."""
    net, params, x, y, _ = classifier
    opt = one_step[0]
    new, state, info = opt.step(params, opt.init(params), (x.at[0, 0].set(jnp.nan), y))
    for k in params:
        np.testing.assert_array_equal(new[k], params[k])
    assert bool(info["rejected"]) and float(state.damping) == pytest.approx(0.5)
    assert not np.any(np.asarray(state.direction))


def test_bad_settings_raise(classifier):
    net, params, x, y, _ = classifier
    for kw in ({"damping": 0.0}, {"cg_tol": -1.0}, {"cg_maxiter": 0}, {"warm_start_decay": 1.5},
               {"preconditioner": "diag"}, {"curvature_batch_size": 1.5}, {"damping_increase": 0.5}):
        with pytest.raises(ValueError):
            HessianFree(net, **kw)
    with pytest.raises(ValueError, match="lacks"):
        HessianFree(object())
    with pytest.raises(ValueError, match="nystrom_rank"):
        HessianFree(net, preconditioner="nystrom", nystrom_rank=10_000).init(params)
    with pytest.raises(ValueError, match="pair"):
        HessianFree(net).step(params, HessianFree(net).init(params), x)
