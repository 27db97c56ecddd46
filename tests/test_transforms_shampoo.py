"""Shampoo (classical.transforms.shampoo) against a dense NumPy computation from the same gradient stream.

The reference forms each factor from the mode-i unfolding, its inverse root by ``numpy.linalg.eigh``
and applies the roots through one Kronecker product on the C-order vectorization (not mode
products). Float64 throughout; the spectra are checked in the test so that the tolerance follows
from the conditioning: roots of (S + ε λ_max I) have condition ≤ (1 + ε)/ε, and the relative
error of an eigh-based root is O(u·cond) with u = 2.2e-16.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import qgeom  # noqa: F401  (enables x64)
from classical.transforms import shampoo

EPS = 1e-2  # relative ε: factor roots have condition ≤ (1 + ε)/ε = 101
TOL = 1e4 * np.finfo(np.float64).eps * (1 + EPS) / EPS  # ≈ 2e-10: 1e4 u·cond covers a few steps


def _root(s, p, eps, old):
    w, v = np.linalg.eigh(s)
    if w[-1] <= 0:
        return old
    w = np.maximum(w, 0) + eps * w[-1]
    return (v * w ** (-1.0 / p)) @ v.T


def _unfold(x, i):
    return np.moveaxis(x, i, 0).reshape(x.shape[i], -1)


class _NumpyShampoo:
    """One parameter tensor; ``blocks`` splits every full axis into chunks of ``bs``; ``diag`` axes."""

    def __init__(self, shape, b1, b2, eps, T, start, bs, maxdim, graft, geps, nesterov, stats_every=1):
        self.stats_every = stats_every
        self.shape, self.b1, self.b2, self.eps, self.T, self.start = shape, b1, b2, eps, T, start
        self.graft, self.geps, self.nesterov = graft, geps, nesterov
        k = max(len(shape), 1)
        self.k = k
        shp = shape or (1,)
        self.full = [len(shp) >= 2 and n <= maxdim for n in shp]
        chunks = [[(a, min(a + bs, n)) for a in range(0, n, bs)] if f else [(0, n)] for n, f in zip(shp, self.full)]
        self.blocks = list(itertools.product(*chunks))
        self.S = {b: [np.zeros((e - s, e - s)) if f else np.zeros(e - s) for (s, e), f in zip(b, self.full)]
                  for b in self.blocks}
        self.R = {b: [np.eye(e - s) if f else np.ones(e - s) for (s, e), f in zip(b, self.full)] for b in self.blocks}
        self.acc, self.m, self.t = np.zeros(shape), np.zeros(shape), 0

    def step(self, g):
        w2 = 1.0 if self.b2 == 1 else 1 - self.b2
        x = g.reshape(self.shape or (1,))
        direction = np.zeros_like(x)
        refresh = self.t >= self.start and (self.t - self.start) % self.T == 0
        for b in self.blocks:
            sl = tuple(slice(s, e) for s, e in b)
            xb = x[sl]
            for i, f in enumerate(self.full):
                u = _unfold(xb, i)
                if self.t % self.stats_every == 0:
                    self.S[b][i] = self.b2 * self.S[b][i] + w2 * (u @ u.T if f else np.sum(u * u, axis=1))
                if refresh:
                    s = self.S[b][i]
                    if f:
                        self.R[b][i] = _root(s, 2 * self.k, self.eps, self.R[b][i])
                    elif s.max() > 0:
                        self.R[b][i] = (s + self.eps * s.max()) ** (-1.0 / (2 * self.k))
            kron = functools.reduce(np.kron, [r if f else np.diag(r) for r, f in zip(self.R[b], self.full)])
            direction[sl] = (kron @ xb.reshape(-1)).reshape(xb.shape)
        direction = direction.reshape(self.shape)
        if self.graft == "sgd":
            base = g
        elif self.graft == "adagrad":
            self.acc = self.acc + g * g
            base = g / (np.sqrt(self.acc) + self.geps)
        else:
            self.acc = self.b2 * self.acc + (1 - self.b2) * g * g
            base = g / (np.sqrt(self.acc / (1 - self.b2 ** (self.t + 1))) + self.geps)
        u = direction * np.linalg.norm(base) / np.linalg.norm(direction) if self.t >= self.start else base
        self.m = self.b1 * self.m + u
        self.t += 1
        return self.b1 * self.m + u if self.nesterov else self.m


def _stream(shapes, n, seed=0):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(n)]


SETTINGS = dict(b1=0.9, b2=0.95, epsilon=EPS, precondition_every=2, start_preconditioning_step=1,
                block_size=4, max_precond_dim=6, graft_epsilon=1e-8, nesterov=True)
# "mat": one block; "big": rows 2 blocks (4 + 2), cols 7 > max_precond_dim → diagonal axis;
# "t3": order 3 (exponent −1/6), axis 1 split in blocks 4 + 1; "vec": a diagonal (Adagrad-like) factor.
SHAPES = {"mat": (3, 4), "big": (6, 7), "t3": (2, 5, 3), "vec": (5,)}


@pytest.mark.parametrize("graft,b2,names,every", [("adagrad", 0.95, tuple(SHAPES), 1), ("adam", 0.95, ("mat", "vec"), 1),
                                                 ("sgd", 1.0, ("big",), 2)])
def test_updates_equal_dense_numpy(graft, b2, names, every):
    """``every``: statistics every k steps (the sgd case: k = 2)."""
    shapes = {k: SHAPES[k] for k in names}
    tx = shampoo(0.1, **{**SETTINGS, "b2": b2}, graft=graft, statistics_every=every)
    update = jax.jit(tx.update)
    grads = _stream(shapes, 6)
    params = {k: jnp.zeros(s) for k, s in shapes.items()}
    state = tx.init(params)
    refs = {k: _NumpyShampoo(s, SETTINGS["b1"], b2, EPS, 2, 1, 4, 6, graft, 1e-8, True, every)
            for k, s in shapes.items()}
    for g in grads:
        out, state = update(jax.tree_util.tree_map(jnp.asarray, g), state)
        for k in shapes:
            want = -0.1 * refs[k].step(g[k])
            np.testing.assert_allclose(out[k], want, rtol=TOL, atol=TOL * np.abs(want).max(), err_msg=k)
    assert int(state.inner_state.root_failures) == 0


def test_preconditioned_direction_is_inverse_fourth_roots_of_the_sum():
    """β₂ = 1, no momentum, SGD graft, one gradient per step: the direction is L^{-1/4} G R^{-1/4} of the
    running sums (the 2018 paper's update) rescaled to ‖G‖."""
    rng = np.random.default_rng(3)
    gs = [rng.standard_normal((4, 3)) for _ in range(3)]
    tx = shampoo(1.0, b1=0.0, b2=1.0, epsilon=EPS, precondition_every=1, start_preconditioning_step=0, graft="sgd")
    state, update = tx.init(jnp.zeros((4, 3))), jax.jit(tx.update)
    L, R = np.zeros((4, 4)), np.zeros((3, 3))
    for g in gs:
        out, state = update(jnp.asarray(g), state)
        L, R = L + g @ g.T, R + g.T @ g
        d = _root(L, 4, EPS, None) @ g @ _root(R, 4, EPS, None)
        np.testing.assert_allclose(-np.asarray(out), d * np.linalg.norm(g) / np.linalg.norm(d), rtol=TOL)


def test_failed_root_keeps_previous_and_nonfinite_gradient_is_skipped():
    """Float32 parameters (x64 on) keep float32 updates."""
    tx = shampoo(1.0, precondition_every=1, start_preconditioning_step=0)
    params = {"w": jnp.zeros((3, 2), jnp.float32)}
    state, update = tx.init(params), jax.jit(tx.update)
    out, state = update({"w": jnp.zeros((3, 2), jnp.float32)}, state)  # λ_max = 0: every root fails
    assert out["w"].dtype == jnp.float32
    inner = state.inner_state
    assert int(inner.root_failures) == 2
    np.testing.assert_array_equal(inner.roots[0][0][0], np.eye(3))
    out, state2 = update({"w": jnp.full((3, 2), jnp.nan, jnp.float32)}, state)
    assert np.all(np.asarray(out["w"]) == 0) and int(state2.total_notfinite) == 1
    np.testing.assert_array_equal(state2.inner_state.stats[0][0][0], inner.stats[0][0][0])


@pytest.mark.parametrize("kwargs,match", [
    ({"epsilon": 0.0}, "epsilon"), ({"epsilon": -1e-3}, "epsilon"), ({"b2": 1.5}, "b2"),
    ({"precondition_every": 0}, "precondition_every"), ({"graft": "rmsprop"}, "graft"),
    ({"graft": "adam", "b2": 1.0}, "b2 < 1"), ({"block_size": 2.5}, "block_size"),
    ({"statistics_every": 0}, "statistics_every"),
])
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        shampoo(0.1, **kwargs)


def test_bad_learning_rate_and_mismatched_gradients_raise():
    with pytest.raises(ValueError, match="learning_rate"):
        shampoo(-0.1)
    tx = shampoo(0.1)
    state = tx.init({"w": jnp.zeros((3, 2))})
    with pytest.raises(ValueError, match="shape"):
        tx.update({"w": jnp.zeros((2, 3))}, state)
    with pytest.raises(ValueError, match="structure"):
        tx.update({"v": jnp.zeros((3, 2))}, state)


def test_trains_with_optax_chain():
    """A least-squares fit in an ordinary optax loop (chained with weight decay) closes 90 % of the gap
    to the ``numpy.linalg.lstsq`` optimum."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((20, 5)), rng.standard_normal((20, 3))
    loss = lambda w: jnp.mean((a @ w["w"] - b) ** 2)
    best = float(loss({"w": np.linalg.lstsq(a, b, rcond=None)[0]}))
    tx = optax.chain(optax.add_decayed_weights(1e-6), shampoo(0.05, precondition_every=5))

    @jax.jit
    def step(w, state):
        u, state = tx.update(jax.grad(loss)(w), state, w)
        return optax.apply_updates(w, u), state

    w = {"w": jnp.zeros((5, 3))}
    state, l0 = tx.init(w), float(loss(w))
    for _ in range(100):
        w, state = step(w, state)
    assert float(loss(w)) - best < 0.1 * (l0 - best)
