"""KroneckerFactored against dense linear algebra and an exact per-example Fisher block."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qgeom  # noqa: F401  (float64)
from qgeom.metrics import KroneckerFactored


def _spd(rng, d, cond=10.0):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1.0, 1.0 / cond, d)) @ q.T


@pytest.fixture
def factors():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 4))
    a[:, -1] = 1.0
    return jnp.asarray(a.T @ a / 50), jnp.asarray(_spd(rng, 3, cond=100.0))


def test_dense_is_kron_and_mv_matches(factors):
    A, G = factors
    k = KroneckerFactored(A, G)
    np.testing.assert_allclose(k.dense(), np.kron(A, G), rtol=1e-13)
    v = jax.random.normal(jax.random.PRNGKey(1), k.shape)
    np.testing.assert_allclose(k.mv(v).ravel(), np.kron(A, G) @ np.asarray(v).ravel(), rtol=1e-12)


@pytest.mark.parametrize("damping", [0.0, 1e-3, 0.5])
def test_tikhonov_solve_is_dense_solve_of_damped_factors(factors, damping):
    A, G = factors
    k = KroneckerFactored(A, G, mode="tikhonov")
    v = jax.random.normal(jax.random.PRNGKey(2), k.shape)
    pi = np.sqrt((np.trace(A) / 4) / (np.trace(G) / 3))
    da = A + pi * np.sqrt(damping) * np.eye(4)
    dg = G + np.sqrt(damping) / pi * np.eye(3)
    want = np.linalg.solve(np.kron(da, dg), np.asarray(v).ravel())
    np.testing.assert_allclose(k.solve(v, damping).ravel(), want, rtol=1e-10)
    np.testing.assert_allclose(k.inverse(damping).apply(v).ravel(), want, rtol=1e-10)


def test_tikhonov_explicit_pi(factors):
    A, G = factors
    k = KroneckerFactored(A, G, pi=3.0)
    v = jnp.ones(k.shape)
    want = np.linalg.solve(np.kron(A + 3.0 * 0.1 * np.eye(4), G + 0.1 / 3.0 * np.eye(3)), np.ones(12))
    np.testing.assert_allclose(k.solve(v, 0.01).ravel(), want, rtol=1e-10)


@pytest.mark.parametrize("damping", [0.0, 1e-3, 0.5])
def test_eigen_solve_is_exact_damped_inverse(factors, damping):
    A, G = factors
    k = KroneckerFactored(A, G, mode="eigen")
    v = jax.random.normal(jax.random.PRNGKey(3), k.shape)
    want = np.linalg.solve(np.kron(A, G) + damping * np.eye(12), np.asarray(v).ravel())
    np.testing.assert_allclose(k.solve(v, damping).ravel(), want, rtol=1e-9)
    alpha, qa, gamma, qg = k.eigh()
    np.testing.assert_allclose((qa * alpha) @ qa.T, A, atol=1e-12)
    np.testing.assert_allclose((qg * gamma) @ qg.T, G, atol=1e-12)


def test_jit_and_pytree_roundtrip(factors):
    A, G = factors
    k = KroneckerFactored(A, G, mode="eigen")
    v = jnp.ones(k.shape)
    out = jax.jit(lambda m, x: m.solve(x, 0.1))(k, v)
    np.testing.assert_allclose(out, k.solve(v, 0.1), rtol=1e-12)
    leaves, tree = jax.tree_util.tree_flatten(k)
    assert jax.tree_util.tree_unflatten(tree, leaves).mode == "eigen"


def test_exact_fisher_block_of_one_linear_layer():
    """One softmax layer, one input: the exact Fisher of p(y|x, W) is (a aᵀ) ⊗ E_y[g gᵀ]."""
    rng = np.random.default_rng(4)
    d_in, d_out = 3, 4
    x = jnp.asarray(rng.standard_normal(d_in))
    a = jnp.append(x, 1.0)
    w = jnp.asarray(rng.standard_normal((d_in + 1, d_out)))

    def logp(w, y):
        return jax.nn.log_softmax(w.T @ a)[y]

    probs = jax.nn.softmax(w.T @ a)
    fisher = jnp.zeros((w.size, w.size))
    gg = jnp.zeros((d_out, d_out))
    for y in range(d_out):
        grad = jax.jacobian(logp)(w, y).ravel()  # row-major, ravel_pytree order
        g = jax.grad(lambda s: jax.nn.log_softmax(s)[y])(w.T @ a)
        # single outcome: the gradient outer product factorizes exactly
        np.testing.assert_allclose(jnp.outer(grad, grad), jnp.kron(jnp.outer(a, a), jnp.outer(g, g)), atol=1e-12)
        fisher += probs[y] * jnp.outer(grad, grad)
        gg += probs[y] * jnp.outer(g, g)
    k = KroneckerFactored.from_batch(a[None], jnp.zeros((1, d_out)))  # A from the batch API
    k = KroneckerFactored(k.A, gg)
    np.testing.assert_allclose(k.dense(), fisher, atol=1e-12)
    # and G = diag(p) − p pᵀ in closed form
    np.testing.assert_allclose(gg, jnp.diag(probs) - jnp.outer(probs, probs), atol=1e-12)


def test_bad_inputs(factors):
    A, G = factors
    with pytest.raises(ValueError, match="square"):
        KroneckerFactored(jnp.ones((3, 2)), G)
    with pytest.raises(ValueError, match="mode"):
        KroneckerFactored(A, G, mode="exact")
    with pytest.raises(ValueError, match="pi"):
        KroneckerFactored(A, G, pi=-1.0)
    k = KroneckerFactored(A, G)
    with pytest.raises(ValueError, match="shape"):
        k.mv(jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="shape"):
        k.solve(jnp.ones((12,)), 0.1)
    with pytest.raises(ValueError, match="damping"):
        k.solve(jnp.ones(k.shape), -1.0)
    with pytest.raises(ValueError, match="damping"):
        k.inverse(-1.0)
    with pytest.raises(ValueError, match="same N"):
        KroneckerFactored.from_batch(jnp.ones((5, 3)), jnp.ones((4, 2)))


def test_psd_inverse_cholesky_and_lu_fallback():
    from qgeom.metrics.kronecker import psd_inverse

    rng = np.random.default_rng(3)
    m = _spd(rng, 6, cond=1e3)
    np.testing.assert_allclose(jax.jit(psd_inverse)(jnp.asarray(m)), np.linalg.inv(m), rtol=1e-9, atol=1e-9)
    # Indefinite (Cholesky fails): the LU fallback still inverts it.
    s = np.diag([2.0, -1.0, 0.5])
    np.testing.assert_allclose(psd_inverse(jnp.asarray(s)), np.linalg.inv(s), rtol=1e-12)


def test_factorizations_solve_any_damping_and_report_extremal_eigenvalues(factors):
    """Metric.factorize(): KroneckerFactored → KroneckerEigenbasis, DenseMetric → EighFactorization,
    BlockDiagonal → blockwise; solve at several λ against numpy's dense solve, extremal eigenvalues
    against eigvalsh (κ ≤ 1e2·1e2 here: rtol 1e-9)."""
    from qgeom.metrics import BlockDiagonal, DenseMetric, EighFactorization, KroneckerEigenbasis

    A, G = factors
    kron = KroneckerFactored(A, G)
    dense = DenseMetric(jnp.asarray(np.kron(np.asarray(G), np.asarray(G))), jnp.zeros(9))
    metric = BlockDiagonal({"k": kron, "d": dense})
    f = metric.factorize()
    assert isinstance(f.blocks["k"], KroneckerEigenbasis) and isinstance(f.blocks["d"], EighFactorization)
    big = np.asarray(metric.dense())
    v = {"k": jnp.ones(kron.shape), "d": jnp.arange(9.0)}
    flat = np.concatenate([np.asarray(v["d"]), np.ones(12)])  # ravel order: sorted keys "d", "k"
    for lam in (0.0, 1e-2, 3.0):
        want = np.linalg.solve(big + lam * np.eye(21), flat)
        got = f.solve(v, lam)
        np.testing.assert_allclose(np.concatenate([got["d"], np.ravel(got["k"])]), want, rtol=1e-9)
    eig = np.linalg.eigvalsh(big)
    np.testing.assert_allclose([f.min_eigenvalue(), f.max_eigenvalue()], [eig[0], eig[-1]], rtol=1e-9)
    np.testing.assert_allclose(f.blocks["k"].dense(), kron.dense(), atol=1e-12)
    with pytest.raises(ValueError, match="factorize"):
        KroneckerFactored(A, G, mode="eigen").inverse(0.1)
