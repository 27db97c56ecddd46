"""qgeom.linalg.cmatmul against numpy's complex products."""

import jax
import numpy as np
import pytest

import qgeom  # noqa: F401  (float64)
from qgeom.linalg import cmatmul

rng = np.random.default_rng(0)
C = rng.normal(size=(3, 4, 5)) + 1j * rng.normal(size=(3, 4, 5))
D = rng.normal(size=(3, 5, 2)) + 1j * rng.normal(size=(3, 5, 2))


@pytest.mark.parametrize("a, b", [(C, D), (C.real, D), (C, D.real), (C.real, D.real)])
def test_cmatmul_equals_complex_product(a, b):
    np.testing.assert_allclose(cmatmul(a, b), a @ b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cmatmul(a, b, "gij,gjk->gik"), np.einsum("gij,gjk->gik", a, b), rtol=1e-12, atol=1e-12)
    assert np.iscomplexobj(cmatmul(a, b)) == (np.iscomplexobj(a) or np.iscomplexobj(b))
    # Gauss's three products: each entry's rounding is a few ε times Σ_j |a_ij||b_jk|, |z| = |Re z| + |Im z|
    bound = 8 * np.finfo(float).eps * ((abs(a.real) + abs(a.imag)) @ (abs(b.real) + abs(b.imag)))
    assert np.all(np.abs(cmatmul(a, b, gauss=True) - a @ b) <= bound)


def test_cmatmul_gradient_matches_complex_product():
    loss = lambda fn: (lambda x: jax.numpy.sum(jax.numpy.abs(fn(x * C, D)) ** 2))  # noqa: E731
    ours = jax.grad(loss(cmatmul))(1.3)
    ref = jax.grad(loss(lambda a, b: a @ b))(1.3)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
