"""TNT's block (classical.blocks.tnt) against kfac-jax 0.0.8's ``NaiveTNT`` / ``DenseTNT`` on the same batch,
and against closed forms.

Convention (kfac_jax/_src/curvature_blocks/tnt.py and the K-FAC comparison in
test_classical_kfac.py): kfac-jax scales each example's gradient by 1/√N, so its factors are
ours divided by N; its ``tnt_scale`` c = (tr U_1 tr U_2)^{-1/2} is scale-covariant, so
c·U_1 ⊗ U_2 is ours divided by N too. Float32 factors of O(1) entries summed over N = 16
examples: rtol 1e-5 (≈ 100 u32).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kfac_jax_reference import tanh_mlp_loss

import classical
import qgeom  # noqa: F401
from classical.blocks.base import LayerBatch
from classical.blocks.tnt import TNTBlock, normalized_factors, tnt_factors
from classical.kfac import KFAC
from classical.models import mlp

kfac_jax = pytest.importorskip("kfac_jax", reason="kfac-jax (the `ref` extra) is not installed")

N = 16


@pytest.fixture(scope="module")
def problem():
    net = mlp([5, 6, 4], "tanh", "categorical")
    params = net.init(jax.random.PRNGKey(0))
    kx, ky = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.normal(kx, (N, 5), jnp.float32)
    y = jax.random.randint(ky, (N,), 0, 4)

    def summed_nll(taps):
        out, inputs = net.apply_tapped(params, x, taps)
        return jnp.sum(net.output.nll(out, y)), inputs

    g, inputs = jax.jit(jax.grad(summed_nll, has_aux=True))(net.zero_taps(x))
    batches = {k: LayerBatch(inputs[k], g[k]) for k in net.names}
    return net, params, x, y, batches


def _kfac_jax_factors(net, params, x, y, ctor):
    """One ``update_curvature_matrix_estimate`` of kfac-jax's block-diagonal estimator (empirical Fisher)."""
    est = kfac_jax.BlockDiagonalCurvature(func=tanh_mlp_loss(net), default_estimation_mode="fisher_empirical",
                                          layer_tag_to_block_ctor={"dense": ctor})
    # float64 for kfac-jax: its ``tnt_scale`` mixes a float64 literal with float32 factors under x64
    kp = {k: {"w": w[:-1].astype(jnp.float64), "b": w[-1].astype(jnp.float64)} for k, w in params.items()}
    args = (kp, (x.astype(jnp.float64), y))
    state = est.init(jax.random.PRNGKey(3), args, exact_powers_to_cache=None, approx_powers_to_cache=None)
    state = est.update_curvature_matrix_estimate(state, ema_old=0.0, ema_new=1.0, identity_weight=0.0,
                                                 batch_size=N, rng=jax.random.PRNGKey(4), func_args=args)
    return [[np.asarray(f.value / f.weight) for f in b.factors] for b in state.blocks_states]


@pytest.mark.parametrize("form,ctor", [("minibatch", "NaiveTNT"), ("per_example", "DenseTNT")])
def test_factors_equal_kfac_jax(problem, form, ctor):
    net, params, x, y, batches = problem
    theirs = _kfac_jax_factors(net, params, x, y, getattr(kfac_jax, ctor))
    for k, (t1, t2) in zip(sorted(params), theirs):
        block = TNTBlock(net.layer_shapes[k], form=form)
        stats = jax.jit(block.update)(block.init(), batches[k], 0.0)
        np.testing.assert_allclose(stats["U1"], N * t1, rtol=1e-5, atol=1e-6 * np.abs(N * t1).max())
        np.testing.assert_allclose(stats["U2"], N * t2, rtol=1e-5, atol=1e-6 * np.abs(N * t2).max())
        scale = float(kfac_jax.utils.tnt_scale([jnp.asarray(t1), jnp.asarray(t2)]))
        np.testing.assert_allclose(block.metric(stats).dense(), N * scale * np.kron(t1, t2), rtol=2e-5,
                                   atol=1e-6 * N * scale * np.abs(np.kron(t1, t2)).max())


def test_single_example_closed_form():
    """One example: ∇W = ā gᵀ, U_1 = ‖g‖² ā āᵀ, U_2 = ‖ā‖² g gᵀ in both forms; Ũ_1 ⊗ Ũ_2 = vec∇W vec∇Wᵀ, the
    one-example Fisher itself (the scale c is right)."""
    rng = np.random.default_rng(0)
    a, g = rng.standard_normal(3).astype(np.float32), rng.standard_normal(2).astype(np.float32)
    batch = LayerBatch(jnp.asarray(a[None, None]), jnp.asarray(g[None, None]))
    ab = np.append(a, 1.0)
    for form in ("minibatch", "per_example"):
        u1, u2 = tnt_factors(batch, form)
        np.testing.assert_allclose(u1, (g @ g) * np.outer(ab, ab), rtol=1e-5)
        np.testing.assert_allclose(u2, (ab @ ab) * np.outer(g, g), rtol=1e-5)
    w = np.outer(ab, g).ravel()
    n1, n2 = normalized_factors(*tnt_factors(batch, "per_example"))
    np.testing.assert_allclose(np.kron(n1, n2), np.outer(w, w), rtol=1e-5, atol=1e-6 * (w @ w))


def test_conv_per_example_form_contracts_whole_example_gradients():
    """T = 3 positions: U_1 = (1/N) Σ_n ∇W_n ∇W_nᵀ with ∇W_n = Σ_t ā_t g_tᵀ (dense NumPy)."""
    rng = np.random.default_rng(1)
    a, g = rng.standard_normal((4, 3, 2)).astype(np.float32), rng.standard_normal((4, 3, 5)).astype(np.float32)
    u1, u2 = tnt_factors(LayerBatch(jnp.asarray(a), jnp.asarray(g)), "per_example")
    ab = np.concatenate([a, np.ones((4, 3, 1), np.float32)], axis=-1).astype(np.float64)
    w = np.einsum("nti,nto->nio", ab, g)
    np.testing.assert_allclose(u1, sum(wn @ wn.T for wn in w) / 4, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(u2, sum(wn.T @ wn for wn in w) / 4, rtol=1e-5, atol=1e-5)


def test_apply_inverse_is_damped_kronecker_solve(problem):
    net, params, x, y, batches = problem
    k = net.names[0]
    block = TNTBlock(net.layer_shapes[k], form="per_example")
    stats = jax.jit(block.update)(block.init(), batches[k], 0.5)
    lam = 0.3
    _, cache = jax.jit(block.refresh)(stats, lam)
    grad = jax.random.normal(jax.random.PRNGKey(5), net.layer_shapes[k], jnp.float32)
    a, b = (np.asarray(m, np.float64) for m in normalized_factors(stats["U1"], stats["U2"]))
    dense = np.kron(a + lam * np.eye(len(a)), b + lam * np.eye(len(b)))
    want = np.linalg.solve(dense, np.asarray(grad, np.float64).ravel())
    tol = 100 * np.finfo(np.float32).eps * np.linalg.cond(dense)
    np.testing.assert_allclose(np.asarray(block.apply_inverse(stats, cache, grad, lam)).ravel(), want, rtol=tol,
                               atol=tol * np.abs(want).max())


def test_init_is_identity_and_bad_form_raises():
    block = TNTBlock((4, 3))
    np.testing.assert_allclose(block.metric(block.init()).dense(), np.eye(12))
    with pytest.raises(ValueError, match="form"):
        TNTBlock((4, 3), form="dense")


def test_factory_steps_like_the_hand_built_kfac():
    """``classical.tnt(net, form=...)`` equals ``KFAC(net, blocks=partial(TNTBlock, form=...))`` step
    for step (same seed, same sampled targets); it refuses the empirical estimator and ``blocks``."""
    net = mlp((5, 4, 3), "tanh", "categorical")
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 5), jnp.float32)
    y = jax.random.randint(jax.random.PRNGKey(1), (16,), 0, 3)
    settings = dict(learning_rate=0.1, momentum=0.5, damping=0.3, adapt_damping=False, seed=3)
    params = net.init(jax.random.PRNGKey(2))
    ours = classical.tnt(net, form="per_example", **settings)
    ref = KFAC(net, blocks=functools.partial(TNTBlock, form="per_example"), **settings)
    pa, sa, pb, sb = params, ours.init(params), params, ref.init(params)
    for _ in range(2):
        pa, sa, _ = ours.step(pa, sa, (x, y))
        pb, sb, _ = ref.step(pb, sb, (x, y))
    for k in params:
        np.testing.assert_array_equal(pa[k], pb[k])
    assert not np.allclose(pa["layer00"], params["layer00"])
    with pytest.raises(ValueError, match="estimator must be 'fisher'"):
        classical.tnt(net, estimator="empirical")
    with pytest.raises(ValueError, match="blocks"):
        classical.tnt(net, blocks=TNTBlock)
