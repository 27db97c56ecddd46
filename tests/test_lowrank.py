"""Randomized Nyström (Halko–Martinsson–Tropp bound) and the M-FAC gradient window."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qgeom  # noqa: F401  (float64)
from qgeom.metrics import GradientWindow, LowRankPlusDiagonal, mfac, nystrom

P = 120


def psd_with_spectrum(lam, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(lam), len(lam))))
    return jnp.asarray((q * lam) @ q.T)


@pytest.mark.parametrize("decay", ["poly", "exp"])
@pytest.mark.parametrize("q", [0, 1, 3])
def test_nystrom_within_halko_bound(decay, q):
    """‖G − Ĝ_k‖₂ ≤ ([1 + 11√ℓ√P]^{2/(2q+3)} + 1) λ_{k+1}, failure probability ≤ 6·p⁻ᵖ (HMT 2011 §10 on G^{1/2})."""
    lam = 1.0 / np.arange(1, P + 1) ** 2 if decay == "poly" else 0.8 ** np.arange(P)
    g = psd_with_spectrum(lam)
    k, p = 8, 10
    approx = nystrom(lambda v: g @ v, jnp.zeros(P), k, jax.random.PRNGKey(q), power_iters=q, oversample=p)
    err = np.linalg.norm(np.asarray(g - approx.dense()), 2)
    bound = ((1 + 11 * np.sqrt(k + p) * np.sqrt(P)) ** (2 / (2 * q + 3)) + 1) * lam[k]
    assert lam[k] * (1 - 1e-9) <= err <= bound  # a rank-k matrix cannot beat λ_{k+1} (Eckart–Young)
    # Nyström approximants never exceed G: G − Ĝ ⪰ 0
    assert np.linalg.eigvalsh(np.asarray(g - approx.dense())).min() >= -1e-10


def test_nystrom_error_falls_with_power_iterations():
    lam = 1.0 / np.arange(1, P + 1)  # slow decay: power iterations matter
    g = psd_with_spectrum(lam, seed=1)
    errs = []
    for q in range(4):
        e = [
            np.linalg.norm(np.asarray(g - nystrom(lambda v: g @ v, jnp.zeros(P), 10, jax.random.PRNGKey(s), q, 0).dense()))
            for s in range(3)
        ]
        errs.append(np.mean(e))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    best = np.sqrt(np.sum(lam[10:] ** 2))  # Eckart–Young optimum in Frobenius norm
    assert errs[-1] < 1.05 * best


def test_nystrom_on_pytree_operator_and_woodbury_solve():
    lam = 0.5 ** np.arange(12)
    g = psd_with_spectrum(lam, seed=2)
    params = {"a": jnp.zeros((3, 2)), "b": jnp.zeros(6)}
    from jax.flatten_util import ravel_pytree

    _, unravel = ravel_pytree(params)

    def mv(v):
        return unravel(g @ ravel_pytree(v)[0])

    approx = nystrom(mv, params, 12, jax.random.PRNGKey(0), power_iters=1, oversample=0)
    np.testing.assert_allclose(approx.dense(), g, atol=1e-10)  # full rank: exact
    v = unravel(jnp.arange(12.0))
    for damping in (0.0, 1e-2):
        want = np.linalg.solve(np.asarray(g) + damping * np.eye(12), np.arange(12.0))
        np.testing.assert_allclose(ravel_pytree(approx.solve(v, damping))[0], want, rtol=1e-6)


def test_low_rank_plus_diagonal_solves():
    rng = np.random.default_rng(3)
    u, _ = np.linalg.qr(rng.standard_normal((10, 3)))
    s = jnp.asarray([3.0, 1.0, 0.5])
    d = jnp.asarray(rng.uniform(0.1, 1.0, 10))
    v = jnp.asarray(rng.standard_normal(10))
    lr = LowRankPlusDiagonal(jnp.asarray(u), s, jnp.zeros(10), d)
    dense = (u * s) @ u.T + np.diag(d)
    np.testing.assert_allclose(lr.dense(), dense, atol=1e-14)
    for damping in (0.0, 0.3):
        np.testing.assert_allclose(lr.solve(v, damping), np.linalg.solve(dense + damping * np.eye(10), v), rtol=1e-10)
    pure = LowRankPlusDiagonal(jnp.asarray(u), s, jnp.zeros(10))
    np.testing.assert_allclose(pure.solve(v, 0.0), np.linalg.pinv((u * s) @ u.T) @ v, atol=1e-10)


def test_mfac_solve_is_dense_solve():
    rng = np.random.default_rng(4)
    m = 7
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    grads = {"w": jnp.asarray(rng.standard_normal((m, 4, 3))), "b": jnp.asarray(rng.standard_normal((m, 3)))}
    win = mfac(grads, params)
    gmat = np.concatenate([np.asarray(grads["b"]), np.asarray(grads["w"]).reshape(m, -1)], axis=1)  # ravel order: b, w
    f = gmat.T @ gmat / m
    np.testing.assert_allclose(win.dense(), f, atol=1e-13)
    v = {"w": jnp.asarray(rng.standard_normal((4, 3))), "b": jnp.asarray(rng.standard_normal(3))}
    vflat = np.concatenate([v["b"], np.asarray(v["w"]).ravel()])
    for damping in (1e-3, 0.5):
        want = np.linalg.solve(f + damping * np.eye(15), vflat)
        got = win.solve(v, damping)
        np.testing.assert_allclose(np.concatenate([got["b"], np.asarray(got["w"]).ravel()]), want, rtol=1e-8)
    # sliding window: push drops the oldest gradient
    newg = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    pushed = win.push(newg)
    g2 = np.concatenate([gmat[1:], np.ones((1, 15))])
    np.testing.assert_allclose(pushed.dense(), g2.T @ g2 / m, atol=1e-13)


def test_lowrank_bad_inputs():
    g = jnp.eye(5)
    with pytest.raises(ValueError, match="rank"):
        nystrom(lambda v: g @ v, jnp.zeros(5), 6, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="power_iters"):
        nystrom(lambda v: g @ v, jnp.zeros(5), 2, jax.random.PRNGKey(0), power_iters=-1)
    win = GradientWindow(jnp.ones((2, 5)), jnp.zeros(5))
    with pytest.raises(ValueError, match="damping > 0"):
        win.solve(jnp.ones(5), 0.0)
    with pytest.raises(ValueError, match="damping"):
        win.solve(jnp.ones(5), -1.0)
    with pytest.raises(ValueError, match="shape"):
        win.mv(jnp.ones(4))
    with pytest.raises(ValueError, match="leading"):
        mfac({"a": jnp.ones((3, 2)), "b": jnp.ones((4, 2))}, {"a": jnp.ones(2), "b": jnp.ones(2)})


def test_lowrank_factorization_spectrum_ends():
    """LowRankPlusDiagonal.factorize() is itself (no or scalar diagonal): extremal eigenvalues
    against eigvalsh of dense(), including the complement's eigenvalue d (or 0)."""
    u, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((6, 2)))
    for d in (None, 0.3):
        m = LowRankPlusDiagonal(jnp.asarray(u), jnp.asarray([2.0, 0.5]), jnp.zeros(6), d)
        assert m.factorize() is m
        eig = np.linalg.eigvalsh(np.asarray(m.dense()))
        np.testing.assert_allclose([m.min_eigenvalue(), m.max_eigenvalue()], [eig[0], eig[-1]], atol=1e-12)
    full = LowRankPlusDiagonal(jnp.asarray(u), jnp.asarray([2.0, 0.5]), jnp.zeros(6), jnp.arange(6.0))
    np.testing.assert_allclose(full.factorize().dense(), full.dense(), atol=1e-12)
