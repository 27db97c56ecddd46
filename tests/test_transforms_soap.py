"""SOAP (classical.transforms.soap) against a NumPy transcription of the reference algorithm, and
against optax's Adam when Shampoo's factors stay diagonal.

The NumPy reference rotates with ``np.tensordot(x, Q, ([0], [0]))`` cycling the axes (as the
authors' code does), uses ``numpy.linalg.eigh``/``qr``; the update is invariant to the sign of each
eigenvector, so bases are compared through updates only. Tolerance: eigenvectors move by
u·‖S‖/gap, so the test computes the smallest relative eigen-gap of every factor it meets and
scales float64's u by its inverse.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import qgeom  # noqa: F401  (enables x64)
from classical.transforms import soap

U = np.finfo(np.float64).eps


def _rel_gap(s):
    w = np.linalg.eigvalsh(s)
    return np.min(np.diff(w)) / w[-1]


class _NumpySOAP:
    def __init__(self, shape, lr, b1, b2, bs, eps, wd, f, maxdim):
        self.lr, self.b1, self.b2, self.bs, self.eps, self.wd, self.f = lr, b1, b2, bs, eps, wd, f
        self.full = [len(shape) >= 2 and n <= maxdim for n in shape]
        self.S = [np.zeros((n, n)) if fl else None for n, fl in zip(shape, self.full)]
        self.Q, self.m, self.v, self.t, self.gaps = None, np.zeros(shape), np.zeros(shape), 0, [1.0]

    def _project(self, x, back):
        for q in self.Q:
            x = np.moveaxis(x, 0, -1) if q is None else np.tensordot(x, q, ([0], [1 if back else 0]))
        return x

    def _precond_update(self, g):
        if self.Q is not None:
            self.m = self._project(self.m, back=True)
        for i, s in enumerate(self.S):
            if s is not None:
                others = [a for a in range(g.ndim) if a != i]
                self.S[i] = self.bs * s + (1 - self.bs) * np.tensordot(g, g, (others, others))
                self.gaps.append(_rel_gap(self.S[i]))
        if self.Q is None:
            self.Q = [None if s is None else np.linalg.eigh(s + 1e-30 * np.eye(len(s)))[1][:, ::-1] for s in self.S]
        elif self.t % self.f == 0:
            for i, (s, q) in enumerate(zip(self.S, self.Q)):
                if s is not None:
                    order = np.argsort(-np.diag(q.T @ s @ q))
                    self.v = np.take(self.v, order, axis=i)
                    self.Q[i] = np.linalg.qr(s @ q[:, order])[0]
        if self.t > 0:
            self.m = self._project(self.m, back=False)

    def step(self, g, p):
        if self.Q is None:
            self._precond_update(g)
            return np.zeros_like(g)
        gp = self._project(g, back=False)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * gp
        self.v = self.b2 * self.v + (1 - self.b2) * gp**2
        size = self.lr * np.sqrt(1 - self.b2**self.t) / (1 - self.b1**self.t)
        new_p = p - size * self._project(self.m / (np.sqrt(self.v) + self.eps), back=True)
        new_p = new_p - self.lr * self.wd * new_p
        self._precond_update(g)
        return new_p - p


SHAPES = {"w": (4, 3), "t": (2, 3, 5), "b": (3,), "wide": (3, 12)}  # "wide": axis 1 > max_precond_dim


def test_updates_equal_numpy_reference():
    kw = dict(b1=0.9, b2=0.8, shampoo_beta=0.7, eps=1e-8, weight_decay=0.1, precondition_frequency=2,
              max_precond_dim=10)
    tx = soap(0.05, **kw)
    update = jax.jit(tx.update)
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    refs = {k: _NumpySOAP(s, 0.05, 0.9, 0.8, 0.7, 1e-8, 0.1, 2, 10) for k, s in SHAPES.items()}
    state = tx.init(params)
    for _ in range(6):  # 1 initialising call, 5 Adam steps, refreshes at t = 2, 4
        grads = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
        out, state = update(grads, state, params)
        for k in SHAPES:
            want = refs[k].step(grads[k], params[k])
            tol = 1e3 * U / min(refs[k].gaps)
            np.testing.assert_allclose(out[k], want, rtol=tol, atol=tol * max(np.abs(want).max(), 1e-300), err_msg=k)
            params[k] = params[k] + want
    assert 1e3 * U / min(min(r.gaps) for r in refs.values()) < 1e-8  # the instance is well separated


def test_reduces_to_adam_when_factors_are_diagonal():
    """Gradients supported on the diagonal of a 3×4 matrix, magnitudes ordered 3 > 2 > 1 at every step:
    L and R stay diagonal with distinct eigenvalues, Q is a signed permutation, and SOAP's steps 2… equal
    Adam's (optax, no decay) on gradients 2… (SOAP's ε sits outside the bias correction; ε = 1e-12 makes
    that difference ≤ 1e-12 relative)."""
    rng = np.random.default_rng(1)
    gs = []
    for _ in range(7):
        g = np.zeros((3, 4))
        g[np.arange(3), np.arange(3)] = np.array([3.0, 2.0, 1.0]) * rng.uniform(0.9, 1.1, 3) * rng.choice([-1, 1], 3)
        gs.append(g)
    tx, ref = soap(0.01, eps=1e-12, weight_decay=0.0, precondition_frequency=2), optax.adam(0.01, 0.95, 0.95, eps=1e-12)
    s, r = tx.init(jnp.zeros((3, 4))), ref.init(jnp.zeros((3, 4)))
    tx_update, ref_update = jax.jit(tx.update), jax.jit(ref.update)
    out, s = tx_update(jnp.asarray(gs[0]), s)
    assert np.all(np.asarray(out) == 0)
    for g in gs[1:]:
        out, s = tx_update(jnp.asarray(g), s)
        want, r = ref_update(jnp.asarray(g), r)
        np.testing.assert_allclose(out, want, rtol=1e-9, atol=1e-15)


def test_vectors_run_adam_and_nonfinite_is_skipped():
    """Also: float32 parameters get float32 updates although x64 is on."""
    tx = soap(0.01, weight_decay=0.0)
    s = tx.init({"b": jnp.zeros(3, jnp.float32), "w": jnp.zeros((2, 2), jnp.float32)})
    assert s.inner_state.bases[0] == (None,)
    update = jax.jit(tx.update)
    _, s = update({"b": jnp.ones(3, jnp.float32), "w": jnp.eye(2, dtype=jnp.float32)}, s)
    out, _ = update({"b": jnp.ones(3, jnp.float32), "w": jnp.eye(2, dtype=jnp.float32)}, s)
    assert out["b"].dtype == out["w"].dtype == jnp.float32
    out, s2 = update({"b": jnp.array([1.0, jnp.inf, 0.0], jnp.float32), "w": jnp.eye(2, dtype=jnp.float32)}, s)
    assert np.all(np.asarray(out["b"]) == 0) and int(s2.total_notfinite) == 1


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": 0.0}, "eps"), ({"eps": -1.0}, "eps"), ({"b1": 1.0}, "b1"), ({"shampoo_beta": -0.1}, "shampoo_beta"),
    ({"precondition_frequency": 0}, "precondition_frequency"), ({"weight_decay": -1.0}, "weight_decay"),
    ({"learning_rate": 0.0}, "learning_rate"),
])
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        soap(**kwargs)


def test_mismatched_gradients_and_missing_params_raise():
    tx = soap(0.01)
    state = tx.init({"w": jnp.zeros((3, 2))})
    with pytest.raises(ValueError, match="shape"):
        tx.update({"w": jnp.zeros((2, 3))}, state, {"w": jnp.zeros((3, 2))})
    with pytest.raises(ValueError, match="needs params"):
        tx.update({"w": jnp.zeros((3, 2))}, state)
