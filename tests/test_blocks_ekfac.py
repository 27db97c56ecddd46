"""EKFAC block (classical.blocks.ekfac) against brute force and the exact Fisher block."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qgeom  # noqa: F401  (float64)
from classical.blocks import EKFACBlock, KroneckerBlock, LayerBatch
from classical.blocks.ekfac import kfe_second_moment
from classical.family import ekfac
from classical.models import mlp
from qgeom.metrics import fisher_categorical


@pytest.mark.parametrize("positions", [1, 3])
def test_kfe_second_moment_is_its_definition(positions):
    """S = mean_n (Q_Aᵀ ∇W_n Q_G)², ∇W_n = Σ_t ā gᵀ built explicitly example by example (float64)."""
    rng = np.random.default_rng(0)
    n, d_in, d_out = 5, 3, 4
    a, g = rng.standard_normal((n, positions, d_in)), rng.standard_normal((n, positions, d_out))
    q_a = np.linalg.qr(rng.standard_normal((d_in + 1, d_in + 1)))[0]
    q_g = np.linalg.qr(rng.standard_normal((d_out, d_out)))[0]
    want = np.zeros((d_in + 1, d_out))
    for i in range(n):
        grad = sum(np.outer(np.append(a[i, t], 1.0), g[i, t]) for t in range(positions))
        want += (q_a.T @ grad @ q_g) ** 2 / n
    got = kfe_second_moment(LayerBatch(jnp.asarray(a), jnp.asarray(g)), jnp.asarray(q_a), jnp.asarray(q_g))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def _exact_fisher_batches(net, params, x):
    """Per layer: a LayerBatch whose rows are (example n, class y) with g scaled by √(K p(y|x_n)),
    so that every mean over rows is the exact expectation E_x Σ_y p(y|x) (·) (float64)."""
    p = np.asarray(jax.nn.softmax(net.apply(params, x)), np.float64)
    n, k = p.shape
    _, inputs = net.apply_tapped(params, x, None)
    rows = {name: [] for name in params}
    grad = jax.jit(jax.grad(lambda t, yy: jnp.sum(net.output.nll(net.apply_tapped(params, x, t)[0], yy))))
    for y in range(k):
        g = grad(net.zero_taps(x), jnp.full((n,), y))
        for name in params:
            rows[name].append(np.asarray(g[name], np.float64) * np.sqrt(k * p[:, y])[:, None, None])
    return {name: LayerBatch(jnp.asarray(np.tile(np.asarray(inputs[name], np.float64), (k, 1, 1))),
                             jnp.asarray(np.concatenate(rows[name]))) for name in params}


def test_ekfac_is_frobenius_projection_of_exact_fisher_block():
    """George et al.'s theorem: in the KFE, S = E[(Q_Aᵀ∇W Q_G)²] is the Frobenius projection of the
    exact block F onto matrices diagonal in the KFE, a set holding K-FAC's A ⊗ G. Hence
    ‖K − F‖² = ‖E − F‖² + ‖K − E‖² (Pythagoras) and ‖E − F‖ ≤ ‖K − F‖. F from
    qgeom.metrics.fisher_categorical (float32 network: agreement with our float64 sum to 1e-5)."""
    net = mlp([3, 4, 3], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 3), jnp.float32)
    f_exact = np.asarray(fisher_categorical(net.apply, params, x).dense(), np.float64)
    batches = _exact_fisher_batches(net, params, x)
    offset = 0
    for name in sorted(params):
        shape = params[name].shape
        size = shape[0] * shape[1]
        grads = np.asarray(batches[name].per_example_grads()).reshape(-1, size)
        f = grads.T @ grads / x.shape[0] / 3  # rows = N·K
        np.testing.assert_allclose(f, f_exact[offset:offset + size, offset:offset + size], rtol=1e-4,
                                   atol=1e-5 * np.abs(f).max())
        offset += size
        ek, kf = EKFACBlock(shape), KroneckerBlock(shape, inverse="eigen")

        @jax.jit
        def dense_blocks(batch, ek=ek, kf=kf):
            s = ek.update(ek.init(), batch, 0.0)
            s = ek.update(ek.refresh(s, 0.0)[0], batch, 0.0)  # S in the new eigenbasis, exact (decay 0)
            return ek.metric(s).dense(), kf.metric(kf.update(kf.init(), batch, 0.0)).dense()

        e_mat, k_mat = (np.asarray(m) for m in dense_blocks(batches[name]))
        d_e, d_k, d_ke = (np.linalg.norm(m) ** 2 for m in (e_mat - f, k_mat - f, k_mat - e_mat))
        assert d_e <= d_k * (1 + 1e-10)
        np.testing.assert_allclose(d_k, d_e + d_ke, rtol=1e-9)
        assert d_ke > 1e-3 * d_k  # the projection is a real change here, not K-FAC itself


@pytest.mark.slow
def test_ekfac_step_and_smoke():
    """One step: ΔW = −lr Q_A[(Q_Aᵀ∇W Q_G)/(S + λ)]Q_Gᵀ with the block's own statistics; then
    30 steps on a small MLP lower the loss."""
    net = mlp([4, 6, 3], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(2))
    x = jax.random.normal(jax.random.PRNGKey(3), (64, 4), jnp.float32)
    y = jnp.argmax(x[:, :3], axis=1)
    opt = ekfac(net, learning_rate=0.3, momentum=0.0, damping=0.1, adapt_damping=False, inverse_period=2)
    state = opt.init(params)
    p1, s1, _ = opt.step(params, state, (x, y))
    grads = jax.grad(net.loss)(params, x, y)
    for k in params:
        st = s1.stats[k]
        rot = st["Q_A"].T @ grads[k] @ st["Q_G"]
        want = -0.3 * st["Q_A"] @ (rot / (st["S"] + 0.1)) @ st["Q_G"].T
        np.testing.assert_allclose(p1[k] - params[k], want, rtol=1e-4, atol=1e-6)
    loss0 = float(net.loss(params, x, y))
    p, s = p1, s1
    for _ in range(30):
        p, s, info = opt.step(p, s, (x, y))
    assert float(net.loss(p, x, y)) < 0.5 * loss0
    with pytest.raises(ValueError, match="s_decay"):
        ekfac(net, s_decay=1.5)


@pytest.mark.parametrize("mode", ["batch", "kfac", "project"])
def test_scaling_at_basis_refresh(mode):
    """Step 0 refreshes the basis after the statistics update (ε₁ = 0: A, G and S are the batch's,
    S in the identity basis). Then Q_A, Q_G diagonalise A, G and S is, per ``s_at_refresh``,
    "batch": mean_n (Q_Aᵀ ∇W_n Q_G)² with ∇W_n from jax.grad of the n-th example's NLL (the
    empirical Fisher, George et al. Algorithm 1); "kfac": the K-FAC eigenvalues diag(Q_AᵀAQ_A)
    diag(Q_GᵀGQ_G)ᵀ (Thrandis/EKFAC-pytorch); "project": the diagonal of Kᵀ diag(vec S₀) K,
    K = Q_A ⊗ Q_G, formed densely with np.kron."""
    net = mlp([3, 4, 3], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(4))
    x = jax.random.normal(jax.random.PRNGKey(5), (8, 3), jnp.float32)
    y = jnp.arange(8) % 3
    opt = ekfac(net, s_at_refresh=mode, learning_rate=0.1, momentum=0.0, damping=0.1, adapt_damping=False,
                estimator="empirical", inverse_period=1)
    _, state, _ = opt.step(params, opt.init(params), (x, y))
    per_example = jax.vmap(lambda xi, yi: jax.grad(lambda p: net.loss(p, xi[None], yi[None]))(params))(x, y)
    for k in params:
        st = {n: np.asarray(v, np.float64) for n, v in state.stats[k].items()}
        q_a, q_g = st["Q_A"], st["Q_G"]
        ev_a, ev_g = np.diag(q_a.T @ st["A"] @ q_a), np.diag(q_g.T @ st["G"] @ q_g)
        np.testing.assert_allclose(st["A"] @ q_a, q_a * ev_a, atol=1e-5 * np.abs(st["A"]).max())
        np.testing.assert_allclose(st["G"] @ q_g, q_g * ev_g, atol=1e-5 * np.abs(st["G"]).max())
        grads = np.asarray(per_example[k], np.float64)
        if mode == "batch":
            want = np.mean(np.einsum("ia,nij,jg->nag", q_a, grads, q_g) ** 2, axis=0)
        elif mode == "kfac":
            want = np.maximum(np.outer(ev_a, ev_g), 0.0)
        else:
            s0 = np.mean(grads ** 2, axis=0)  # S after the first update, identity basis
            kron = np.kron(q_a, q_g)
            want = np.diag(kron.T @ np.diag(s0.ravel()) @ kron).reshape(s0.shape)
        np.testing.assert_allclose(st["S"], want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    with pytest.raises(ValueError, match="s_at_refresh"):
        EKFACBlock((3, 2), s_at_refresh="paper")
