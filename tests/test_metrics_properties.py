"""Contract properties of every metric object, checked with hypothesis over random instances and sizes.

For each metric: ``dense()`` is symmetric PSD and its columns equal ``mv`` on basis vectors;
``solve`` inverts ``mv`` (exactly at damping 0 where G is invertible, and (G + λI)·solve(v, λ) = v);
the object crosses ``jit``; mismatched pytrees and negative damping raise ``ValueError``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import qgeom  # noqa: F401  (float64)
from qgeom.metrics import (
    GradientWindow,
    KroneckerFactored,
    LowRankPlusDiagonal,
    fisher,
    fisher_categorical,
    fubini_study,
    petz,
)

SETTINGS = settings(max_examples=10, deadline=None)


def _herm(rng, n, d):
    a = rng.standard_normal((n, d, d)) + 1j * rng.standard_normal((n, d, d))
    return (a + np.conj(np.swapaxes(a, 1, 2))) / 2


def _params(rng, n_par):
    return {"x": jnp.asarray(rng.standard_normal(n_par)), "y": jnp.asarray(rng.standard_normal((1,)))}


def build(kind, seed, d, n_par):
    """A random metric of ``kind`` and whether G is expected to be invertible."""
    rng = np.random.default_rng(seed)
    params = _params(rng, n_par)
    if kind in ("sld", "bkm", "wy", "fs"):
        gens = _herm(rng, n_par + 1, d)
        re, im = jnp.asarray(gens.real), jnp.asarray(gens.imag)

        def h_of(p):
            t = jnp.concatenate([p["x"], p["y"]])
            return jnp.tensordot(t, re, 1) + 1j * jnp.tensordot(t, im, 1)

        if kind == "fs":

            def psi(p):
                w, v = jnp.linalg.eigh(h_of(p))
                return v @ (jnp.exp(-1j * w) * v[0].conj())  # e^{-iH}|0⟩

            return fubini_study(psi, params), n_par + 1 <= 2 * (d - 1)

        def rho(p):
            w, v = jnp.linalg.eigh(h_of(p))
            return (v * jax.nn.softmax(-w)) @ v.conj().T

        return petz(rho, params, kind), n_par + 1 <= d * d - 1
    if kind == "fisher":
        a = jnp.asarray(rng.standard_normal((d + 1, n_par + 1)))
        probs = lambda p: jax.nn.softmax(a @ jnp.tanh(jnp.concatenate([p["x"], p["y"]])))  # noqa: E731
        return fisher(probs, params), n_par + 1 <= d
    if kind == "categorical":
        x = jnp.asarray(rng.standard_normal((d + 2, 2)))
        w = jnp.asarray(rng.standard_normal((2, 3)))
        def logits(p, x):
            return jnp.tanh(x @ w + p["y"]) + jnp.outer(x[:, 0], jnp.resize(p["x"], 3))

        return fisher_categorical(logits, params, x), False
    if kind.startswith("kron"):
        a = rng.standard_normal((d + 3, d))
        g = rng.standard_normal((n_par + 3, n_par + 1))
        return KroneckerFactored(jnp.asarray(a.T @ a), jnp.asarray(g.T @ g), mode=kind[5:]), True
    if kind == "lowrank":
        u, _ = np.linalg.qr(rng.standard_normal((n_par + 1, n_par + 1)))
        r = max(1, n_par)
        return LowRankPlusDiagonal(jnp.asarray(u[:, :r]), jnp.asarray(rng.uniform(0.5, 2, r)), params), r == n_par + 1
    if kind == "window":
        return GradientWindow(jnp.asarray(rng.standard_normal((d, n_par + 1))), params), False
    raise AssertionError(kind)


KINDS = ["sld", "bkm", "wy", "fs", "fisher", "categorical", "kron_tikhonov", "kron_eigen", "lowrank", "window"]
# a few (dimension, parameter-count) shapes: each new shape costs XLA compilations
sizes = dict(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from([(2, 1), (4, 3)]))


def _like(metric):
    return metric._like()


def _unravel_and_size(like):
    flat, unravel = ravel_pytree(like)
    return unravel, flat.size


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(**sizes)
def test_dense_symmetric_psd_and_matches_mv(kind, seed, shape):
    metric, _ = build(kind, seed, *shape)
    g = np.asarray(metric.dense())
    scale = max(np.abs(g).max(), 1e-300)
    np.testing.assert_allclose(g, g.T, atol=1e-12 * scale)
    assert np.linalg.eigvalsh(g).min() >= -1e-10 * scale
    unravel, size = _unravel_and_size(_like(metric))
    cols = np.stack([ravel_pytree(metric.mv(unravel(e)))[0] for e in jnp.eye(size)], axis=1)
    np.testing.assert_allclose(cols, g, atol=1e-11 * scale)


@pytest.mark.parametrize("kind", KINDS)
def test_metric_objects_cross_jit(kind):
    metric, _ = build(kind, 1, 3, 2)
    unravel, size = _unravel_and_size(_like(metric))
    v = unravel(jnp.linspace(-1.0, 1.0, size))
    got = jax.jit(lambda m, v: (m.mv(v), m.solve(v, 0.1), m.dense()))(metric, v)
    want = (metric.mv(v), metric.solve(v, 0.1), metric.dense())
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(**sizes, damping=st.sampled_from([0.0, 1e-2, 1.0]))
def test_solve_inverts_mv(kind, seed, shape, damping):
    metric, invertible = build(kind, seed, *shape)
    unravel, size = _unravel_and_size(_like(metric))
    v = unravel(jnp.asarray(np.random.default_rng(seed).standard_normal(size)))
    g = np.asarray(metric.dense())
    if damping == 0.0:
        if kind == "window" or not invertible or np.linalg.cond(g) > 1e8:
            return
        back = metric.solve(metric.mv(v), 0.0)
        np.testing.assert_allclose(ravel_pytree(back)[0], ravel_pytree(v)[0], atol=1e-7 * np.abs(ravel_pytree(v)[0]).max())
        return
    if kind == "kron_tikhonov":
        return  # factored damping is not (G + λI)⁻¹; checked against its own dense form in test_kronecker.py
    x = ravel_pytree(metric.solve(v, damping))[0]
    np.testing.assert_allclose(g @ x + damping * x, ravel_pytree(v)[0], atol=1e-8 * (1 + np.abs(g).max()))


@pytest.mark.parametrize("kind", KINDS)
def test_mismatched_pytrees_and_negative_damping_raise(kind):
    metric, _ = build(kind, 0, 3, 2)
    like = _like(metric)
    if isinstance(like, dict):
        wrong = {**like, "x": jnp.zeros(like["x"].shape[0] + 1)}
        missing = {"x": like["x"]}
    else:
        wrong = jnp.zeros((like.shape[0] + 1,) + like.shape[1:])
        missing = {"x": like}
    for bad in (wrong, missing):
        with pytest.raises(ValueError):
            metric.mv(bad)
        with pytest.raises(ValueError):
            metric.solve(bad, 0.1)
    with pytest.raises(ValueError, match="damping"):
        metric.solve(like, -0.5)
