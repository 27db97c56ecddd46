"""K-FAC (classical.kfac) against brute-force definitions, the exact Fisher, scipy and kfac-jax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from jax.flatten_util import ravel_pytree
from kfac_jax_reference import tanh_mlp_loss

import qgeom  # noqa: F401  (enables x64; the nets must stay float32 regardless)
from classical.kfac import KFAC, kfac
from classical.models import Conv2D, Dense, Flatten, Network, mlp
from qgeom.metrics import fisher_categorical, ggn_gaussian


def _data(net, n, seed=1):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(kx, (n, *net.input_shape), jnp.float32)
    if net.output.name == "categorical":
        y = jax.random.randint(ky, (n,), 0, net.output_shape[-1])
    else:
        y = jax.random.normal(ky, (n, *net.output_shape), jnp.float32)
    return x, y


def _sampled_targets(opt, net, params, x):
    """The targets K-FAC samples at its first step (same key schedule as KFAC._core)."""
    _, k_sample = jax.random.split(jax.random.PRNGKey(opt.seed))
    return net.output.sample(k_sample, net.apply(params, x))


def _per_example_dense_factors(net, params, x, y):
    """A = mean ā āᵀ, G = mean g gᵀ from per-example gradients of single-example NLLs: for a dense
    layer ∇W = ā gᵀ and ā's last entry is 1, so g_n is the bias row of the n-th gradient."""
    grads = jax.vmap(lambda xi, yi: jax.grad(
        lambda p: jnp.sum(net.output.nll(net.apply(p, xi[None]), yi[None])))(params))(x, y)
    A, G, h = {}, {}, x
    for name, layer in zip(sorted(params), net.layers):
        a = np.concatenate([np.asarray(h, np.float64), np.ones((x.shape[0], 1))], axis=1)
        g = np.asarray(grads[name][:, -1, :], np.float64)
        A[name], G[name] = a.T @ a / x.shape[0], g.T @ g / x.shape[0]
        h = {"tanh": jnp.tanh, "linear": lambda s: s}[layer.activation](h @ params[name][:-1] + params[name][-1])
    return A, G


@pytest.mark.parametrize("estimator", ["fisher", "empirical"])
def test_dense_factors_equal_per_example_definitions(estimator):
    """Also with ``curvature_batch_size``: factors from the first m rows, the step from the full gradient."""
    net = mlp([5, 7, 4], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(0))
    x, y = _data(net, 12)
    m, arg = (12, 12) if estimator == "fisher" else (5, 0.4)  # a fraction: m = ⌈0.4 · 12⌉ = 5
    opt = KFAC(net, learning_rate=0.1, momentum=0.0, damping=1.0, estimator=estimator, adapt_damping=False,
               curvature_batch_size=arg)
    new, state, _ = opt.step(params, opt.init(params), (x, y))
    targets = y[:m] if estimator == "empirical" else _sampled_targets(opt, net, params, x)
    A, G = _per_example_dense_factors(net, params, x[:m], targets)
    grads = jax.grad(net.loss)(params, x, y)
    for k in params:  # learning rate 0.1, damping 1: the update is −0.1 (A+π I)⁻¹ ∇W (G+I/π)⁻¹
        pi = np.sqrt((np.trace(A[k]) / A[k].shape[0]) / (np.trace(G[k]) / G[k].shape[0]))
        expected = -0.1 * np.linalg.solve(A[k] + pi * np.eye(A[k].shape[0]), np.asarray(grads[k], np.float64))
        expected = np.linalg.solve(G[k] + np.eye(G[k].shape[0]) / pi, expected.T).T
        np.testing.assert_allclose(new[k] - params[k], expected, rtol=1e-3, atol=1e-6)
    for k in params:
        np.testing.assert_allclose(state.A[k], A[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.G[k], G[k], rtol=1e-4, atol=1e-7)
        assert state.A[k].dtype == jnp.float32 and state.G[k].dtype == jnp.float32


def test_conv_factors_follow_kfc_definition():
    """KFC: A = (1/N) Σ_{n,t} ā ā ᵀ over patches, G = (1/(N T)) Σ_{n,t} g gᵀ; g computed here with
    lax.conv_general_dilated (an independent forward) and an explicit per-example perturbation."""
    net = Network([Conv2D(3, (3, 3), (1, 1), "VALID", "tanh"), Flatten(), Dense(4, "linear")], (5, 5, 2))
    params = net.init(jax.random.PRNGKey(0))
    x, y = _data(net, 6)
    opt = KFAC(net, learning_rate=0.1, momentum=0.0, estimator="empirical", adapt_damping=False)
    _, state, _ = opt.step(params, opt.init(params), (x, y))

    w = params["layer00"]
    kernel = jnp.transpose(w[:-1].reshape(2, 3, 3, 3), (1, 2, 0, 3))  # (C, kh, kw, O) -> HWIO

    def loss_i(xi, yi, eps):
        s = jax.lax.conv_general_dilated(xi[None], kernel, (1, 1), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC")) + w[-1] + eps
        h = jnp.tanh(s).reshape(1, -1)
        return jnp.sum(net.output.nll(h @ params["layer02"][:-1] + params["layer02"][-1], yi[None]))

    A, G, T = 0.0, 0.0, 9
    for i in range(x.shape[0]):
        g = jax.grad(loss_i, argnums=2)(x[i], y[i], jnp.zeros((1, 3, 3, 3), jnp.float32)).reshape(T, 3)
        for t in range(T):
            r, c = divmod(t, 3)
            patch = np.append(np.transpose(np.asarray(x[i, r:r + 3, c:c + 3, :]), (2, 0, 1)).ravel(), 1.0)
            A = A + np.outer(patch, patch)
            G = G + np.outer(g[t], g[t])
    np.testing.assert_allclose(state.A["layer00"], A / x.shape[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state.G["layer00"], G / (x.shape[0] * T), rtol=1e-4, atol=1e-7)


def test_one_example_one_layer_block_is_exact_fisher():
    """One example, one layer: F = ā āᵀ ⊗ E_y[g gᵀ] exactly. With many copies of the example
    K-FAC's sampled G is a Monte-Carlo average of E_y[g gᵀ] = diag(p) − ppᵀ; the exact Fisher
    comes from qgeom.metrics.fisher_categorical; error within 5 standard errors."""
    net = mlp([3, 4], output="categorical")
    params = net.init(jax.random.PRNGKey(2))
    x1 = jnp.array([[0.3, -1.2, 0.7]], jnp.float32)
    n = 20000
    x = jnp.repeat(x1, n, axis=0)
    y = jnp.zeros((n,), jnp.int32)
    opt = KFAC(net, learning_rate=0.1, momentum=0.0, adapt_damping=False)
    _, state, _ = opt.step(params, opt.init(params), (x, y))
    exact = np.asarray(fisher_categorical(net.apply, params, x1).dense())
    kron = np.kron(state.A["layer00"], state.G["layer00"])
    a = np.append(np.asarray(x1[0]), 1.0)
    p = np.asarray(jax.nn.softmax(net.apply(params, x1)[0]))
    # standard error of the MC estimate of E[g_i g_j] (g = p − e_y) times |a_k a_l|
    gy = p[None, :] - np.eye(4)
    se_g = np.sqrt(np.einsum("y,yi,yj->ij", p, gy**2, gy**2) - (np.diag(p) - np.outer(p, p)) ** 2) / np.sqrt(n)
    se = np.kron(np.abs(np.outer(a, a)), se_g)
    assert np.all(np.abs(kron - exact) <= 5 * se + 1e-6)
    # the empirical variant is exact with a single target: block = (ā gᵀ)(ā gᵀ)ᵀ
    emp = KFAC(net, learning_rate=0.1, momentum=0.0, adapt_damping=False, estimator="empirical")
    _, s1, _ = emp.step(params, emp.init(params), (x1, jnp.array([2])))
    gw = ravel_pytree(jax.grad(lambda q: net.loss(q, x1, jnp.array([2])))(params))[0]
    np.testing.assert_allclose(np.kron(s1.A["layer00"], s1.G["layer00"]), np.outer(gw, gw), rtol=1e-4, atol=1e-7)


def test_last_layer_block_exact_when_a_and_g_independent():
    """Gaussian output: the last layer's g = f − y = −ε is independent of its input a, so the
    exact Fisher block is E[ā āᵀ] ⊗ I (theory: no Kronecker error); K-FAC's sampled G deviates
    from I only by Monte-Carlo error (sd 1/√N off-diagonal, √(2/N) diagonal)."""
    net = mlp([4, 6, 3], "tanh", "gaussian")
    params = net.init(jax.random.PRNGKey(3))
    n = 4000
    x, y = _data(net, n)
    opt = KFAC(net, learning_rate=0.1, momentum=0.0, adapt_damping=False)
    _, state, _ = opt.step(params, opt.init(params), (x, y))
    F = np.asarray(ggn_gaussian(net.apply, params, x[:300]).dense(), np.float64)
    # ravel order: layer00 (5*6) then layer01 (7*3)
    last = F[30:, 30:]
    A_sub = _per_example_dense_factors(net, params, x[:300], y[:300])[0]["layer01"]
    np.testing.assert_allclose(last, np.kron(A_sub, np.eye(3)), rtol=1e-4, atol=1e-5)
    sd = np.where(np.eye(3, dtype=bool), np.sqrt(2.0 / n), np.sqrt(1.0 / n))
    assert np.all(np.abs(np.asarray(state.G["layer01"]) - np.eye(3)) < 5 * sd)


def _dense_ggn(net, params, x):
    """Exact mean_n J_nᵀ H_n J_n with J from jax.jacobian and H from jax.hessian of the NLL."""
    flat, unravel = ravel_pytree(params)
    out = net.apply(params, x)
    J = jax.jacobian(lambda t: net.apply(unravel(t), x))(flat)  # (N, K, P)
    H = jax.vmap(jax.hessian(lambda o: net.output.nll(o[None], jnp.zeros((1,), jnp.int32))[0]))(out)
    return np.einsum("nkp,nkl,nlq->pq", J, H, J) / x.shape[0]


@pytest.mark.parametrize("m", [None, 6])
def test_quadratic_model_alpha_mu_match_bruteforce_minimisation(m):
    """Exact F (jax.jacobian/jax.hessian) on the curvature rows (all, or the first m), gradient on all rows."""
    net = mlp([4, 5, 3], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(4))
    x, y = _data(net, 10)
    eta = 1e-3
    opt = KFAC(net, damping=0.5, l2_reg=eta, adapt_damping=False, stats_period=100, inverse_period=100,
               curvature_batch_size=m)
    p1, s1, _ = opt.step(params, opt.init(params), (x, y))
    s1_kept = jax.tree_util.tree_map(jnp.copy, s1)  # step donates its state argument
    p2, s2, info = opt.step(p1, s1, (x, y))
    s1 = s1_kept

    flat1, unravel = ravel_pytree(p1)
    grad = ravel_pytree(jax.grad(lambda p: net.loss(p, x, y))(p1))[0] + eta * flat1
    nat = -ravel_pytree(opt.precondition(s1, unravel(grad)))[0]
    d0 = ravel_pytree(s1.velocity)[0]
    C = _dense_ggn(net, p1, x[:m]) + (0.5 + eta) * np.eye(flat1.size)
    g, nat, d0 = (np.asarray(v, np.float64) for v in (grad, nat, d0))

    def M(z):
        d = z[0] * nat + z[1] * d0
        return 0.5 * d @ C @ d + g @ d

    res = scipy.optimize.minimize(M, np.zeros(2), method="BFGS", options={"gtol": 1e-12})
    np.testing.assert_allclose([info["learning_rate"], info["momentum"]], res.x, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(ravel_pytree(p2)[0] - flat1, res.x[0] * nat + res.x[1] * d0, rtol=2e-3, atol=1e-6)


def test_damping_decreases_when_quadratic_model_is_exact():
    """Linear-Gaussian least squares: h is exactly quadratic with Hessian F, so ρ = 1 and λ ← ω₁λ."""
    net = mlp([4, 3], output="gaussian")
    params = net.init(jax.random.PRNGKey(5))
    x, y = _data(net, 32)
    opt = KFAC(net, damping=1.0, damping_interval=1)
    _, s1, info = opt.step(params, opt.init(params), (x, y))
    np.testing.assert_allclose(info["rho"], 1.0, atol=1e-3)
    np.testing.assert_allclose(s1.damping, 1.0 * (19 / 20), rtol=1e-6)


def test_damping_increases_when_step_overshoots():
    """A huge fixed learning rate makes the loss go up (ρ < 1/4), so λ ← λ/ω₁ with ω₁ = (19/20)^T₁."""
    net = mlp([4, 8, 3], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(6))
    x, y = _data(net, 32)
    opt = KFAC(net, learning_rate=50.0, momentum=0.0, damping=1e-3, damping_interval=2)
    p1, s1, info1 = opt.step(params, opt.init(params), (x, y))
    assert np.isnan(info1["rho"]) and float(s1.damping) == np.float32(1e-3)  # not an adaptation step
    p2, s2, info2 = opt.step(p1, s1, (x, y))
    h_new = net.loss(p2, x, y)
    np.testing.assert_allclose(info2["rho"], (h_new - info2["loss"]) / info2["qmodel_change"], rtol=1e-3)
    assert info2["rho"] < 0.25
    np.testing.assert_allclose(s2.damping, 1e-3 / (19 / 20) ** 2, rtol=1e-5)


def test_nan_loss_rejects_step_and_raises_damping():
    net = mlp([4, 5, 3], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(7))
    x, y = _data(net, 8)
    opt = KFAC(net, learning_rate=0.1, momentum=0.5, damping=2.0, reject_damping_factor=10.0)
    state = opt.init(params)
    bad = x.at[0, 0].set(jnp.nan)
    p1, s1, info = opt.step(params, state, (bad, y))
    assert bool(info["rejected"]) and np.isnan(info["loss"])
    for k in params:
        np.testing.assert_array_equal(p1[k], params[k])
    np.testing.assert_allclose(s1.damping, 20.0)
    # after a good step, a non-finite loss undoes that step (returns to the last good point)
    p2, s2, info2 = opt.step(p1, s1, (x, y))
    assert not bool(info2["rejected"])
    lam2 = float(s2.damping)  # step donates its state argument
    p3, s3, info3 = opt.step(p2, s2, (bad, y))
    assert bool(info3["rejected"])
    for k in params:
        np.testing.assert_allclose(p3[k], p1[k], atol=1e-6)
        assert np.all(np.isfinite(p3[k]))
    np.testing.assert_allclose(s3.damping, lam2 * 10, rtol=1e-6)


def test_optax_update_matches_fused_step_and_chains():
    net = mlp([4, 5, 3], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(8))
    x, y = _data(net, 16)
    opt = KFAC(net, damping=1.0)
    tx = optax.chain(kfac(net, damping=1.0), optax.scale(1.0))
    state, tstate = opt.init(params), tx.init(params)
    p_fused, p_tx = params, params

    @jax.jit
    def train_step(p, s):
        grads = jax.grad(net.loss)(p, x, y)
        updates, s = tx.update(grads, s, p, batch=(x, y))
        return optax.apply_updates(p, updates), s

    donating = KFAC(net, damping=1.0, donate_state=True)
    p_don, dstate = params, donating.init(params)
    for _ in range(3):
        p_fused, state, _ = opt.step(p_fused, state, (x, y))
        p_tx, tstate = train_step(p_tx, tstate)
        p_don, dstate, _ = donating.step(p_don, dstate, (x, y))
    for k in params:
        np.testing.assert_allclose(p_fused[k], p_tx[k], rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(p_don[k], p_fused[k], rtol=1e-6, atol=1e-7)
        assert p_tx[k].dtype == jnp.float32


def test_eigen_inverse_is_exact_damped_block_inverse():
    net = mlp([4, 5, 3], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(9))
    x, y = _data(net, 16)
    opt = KFAC(net, inverse="eigen", damping=0.7, learning_rate=0.1, momentum=0.0, adapt_damping=False)
    _, state, _ = opt.step(params, opt.init(params), (x, y))
    g = jax.grad(net.loss)(params, x, y)
    pre = opt.precondition(state, g)
    for k in params:
        dense = np.kron(state.A[k], state.G[k]) + 0.7 * np.eye(g[k].size)
        np.testing.assert_allclose(pre[k].ravel(), np.linalg.solve(dense, np.asarray(g[k]).ravel()), rtol=1e-3,
                                   atol=1e-6)


class _CountingCurvature:
    """The default K-FAC curvature with a refresh counter beside its statistics."""

    def __init__(self, inner):
        self.inner, self.needs_preact_grads = inner, inner.needs_preact_grads

    def init(self):
        return self.inner.init(), jnp.zeros((), jnp.int32)

    def update(self, stats, batches, decay):
        return self.inner.update(stats[0], batches, decay), stats[1]

    def refresh(self, stats, damping):
        inner, cache = self.inner.refresh(stats[0], damping)
        return (inner, stats[1] + 1), cache

    def apply_inverse(self, stats, cache, grads, damping):
        return self.inner.apply_inverse(stats[0], cache, grads, damping)


def test_inverse_warmup_refreshes_every_step_then_periodically():
    """inverse_warmup T₀ = 3, inverse_period T = 5: refreshes at steps {0, 1, 2} ∪ {0, 5, 10}
    (counted by the curvature itself); for t < T₀ the parameters equal inverse_period=1's, and
    they differ from the periodic schedule's from step 1 on (its inverses are step 0's)."""
    from classical.blocks import KroneckerBlock, Layerwise

    net = mlp([4, 5, 3], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(10))
    x, y = _data(net, 16)
    kw = dict(learning_rate=0.2, momentum=0.5, damping=0.5, adapt_damping=False)

    def run(steps, **settings):
        blocks = _CountingCurvature(Layerwise.build(net.layer_shapes, KroneckerBlock))
        opt = KFAC(net, blocks=blocks, **kw, **settings)
        p, s, refreshed, path = params, opt.init(params), [], []
        for t in range(steps):
            count = int(s.stats[1])
            p, s, _ = opt.step(p, s, (x, y))
            if int(s.stats[1]) > count:
                refreshed.append(t)
            path.append(p)
        return refreshed, path

    warm, warm_path = run(12, inverse_period=5, inverse_warmup=3)
    assert warm == [0, 1, 2, 5, 10]
    periodic, periodic_path = run(3, inverse_period=5)
    assert periodic == [0]
    every, every_path = run(3, inverse_period=1)
    assert every == [0, 1, 2]
    for t in range(3):
        for k in params:
            np.testing.assert_array_equal(warm_path[t][k], every_path[t][k])
    assert not np.allclose(warm_path[2]["layer00"], periodic_path[2]["layer00"])
    with pytest.raises(ValueError, match="inverse_warmup"):
        KFAC(net, inverse_warmup=-1)


kfac_jax = pytest.importorskip("kfac_jax", reason="kfac-jax (the `ref` extra) is not installed")


def test_preconditioned_gradient_matches_kfac_jax():
    """Same batch, damping and (empirical) factor statistics as kfac-jax 0.0.8.

    Convention difference (kfac_jax/_src/curvature_estimator/block_diagonal.py): its
    ``fisher_empirical`` G is ours divided by the batch size N (it normalises the per-example
    gradient outer products by N²). π-adjusted damping then gives
    P_kfacjax(λ) = N · P_ours(N λ), so kfac-jax at (lr 1, λ) equals ours at (lr N, damping N λ).
    """
    net = mlp([6, 5, 4], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(0))
    n, lam = 16, 0.3
    x, y = _data(net, n)

    kj_loss = tanh_mlp_loss(net)

    ref = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(kj_loss), l2_reg=0.0, use_adaptive_learning_rate=False,
        use_adaptive_momentum=False, use_adaptive_damping=False, estimation_mode="fisher_empirical",
        inverse_update_period=1, multi_device=False, num_burnin_steps=0)
    kp = {k: {"w": w[:-1], "b": w[-1]} for k, w in params.items()}
    kp0 = jax.tree_util.tree_map(np.asarray, kp)  # kfac-jax donates its inputs
    kstate = ref.init(kp, jax.random.PRNGKey(3), (x, y))
    new_kp, kstate, _ = ref.step(kp, kstate, jax.random.PRNGKey(4), batch=(x, y), learning_rate=1.0,
                                 momentum=0.0, damping=lam, global_step_int=0)

    ours = KFAC(net, learning_rate=float(n), momentum=0.0, damping=n * lam, adapt_damping=False,
                estimator="empirical", inverse_period=1)
    new_p, state, _ = ours.step(params, ours.init(params), (x, y))
    for k, block in zip(sorted(params), kstate.estimator_state.blocks_states):
        fa, fg = block.factors
        np.testing.assert_allclose(fa.value / fa.weight, state.A[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(n * fg.value / fg.weight, state.G[k], rtol=1e-5, atol=1e-7)
        theirs = np.concatenate([new_kp[k]["w"] - kp0[k]["w"], (new_kp[k]["b"] - kp0[k]["b"])[None]])
        np.testing.assert_allclose(new_p[k] - params[k], theirs, rtol=1e-4, atol=1e-6)
