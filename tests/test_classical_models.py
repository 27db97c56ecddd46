"""classical.models / distributions / tracing against lax.conv, optax losses, autodiff and the frameworks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import qgeom  # noqa: F401
from classical.distributions import Bernoulli, Categorical, Gaussian
from classical.kfac import KFAC
from classical.models import AvgPool2D, Conv2D, Dense, Flatten, Network, autoencoder, mlp


def test_conv_layer_equals_lax_conv_and_taps_give_preactivation_gradients():
    net = Network([Conv2D(4, (3, 3), (2, 2), "SAME", "relu"), AvgPool2D((2, 2)), Flatten(), Dense(5, "linear")],
                  (8, 8, 3), "categorical")
    params = net.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 8, 8, 3), jnp.float32)
    y = jnp.arange(6) % 5
    w = params["layer00"]
    kernel = jnp.transpose(w[:-1].reshape(3, 3, 3, 4), (1, 2, 0, 3))
    s = jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + w[-1]
    h = jax.nn.relu(s).reshape(6, 2, 2, 2, 2, 4).mean(axis=(2, 4)).reshape(6, -1)
    ref = h @ params["layer03"][:-1] + params["layer03"][-1]
    np.testing.assert_allclose(net.apply(params, x), ref, rtol=1e-5, atol=1e-5)
    assert net.apply(params, x).dtype == jnp.float32 and net.locations == {"layer00": 16, "layer03": 1}

    # ∇W = Σ_{n,t} ā gᵀ with g = ∂loss/∂tap, compared with autodiff of the loss in W
    def loss_taps(taps):
        out, _ = net.apply_tapped(params, x, taps)
        return net.output.mean_nll(out, y)

    g = jax.grad(loss_taps)(net.zero_taps(x))
    _, inputs = net.apply_tapped(params, x, None)
    grads = jax.grad(net.loss)(params, x, y)
    for k in params:
        a = jnp.concatenate([inputs[k], jnp.ones(inputs[k].shape[:2] + (1,), jnp.float32)], -1)
        np.testing.assert_allclose(jnp.einsum("nti,nto->io", a, g[k]), grads[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dist,ref", [
    (Categorical(), lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y)),
    (Bernoulli(), lambda z, y: optax.sigmoid_binary_cross_entropy(z, y).sum(-1)),
    (Gaussian(), lambda z, y: 0.5 * optax.l2_loss(z, y).sum(-1) * 2),
])
def test_distribution_nll_and_output_hessian(dist, ref):
    z = jax.random.normal(jax.random.PRNGKey(0), (5, 4), jnp.float32)
    y = jnp.array([0, 3, 1, 2, 3]) if dist.name == "categorical" else jax.random.uniform(jax.random.PRNGKey(1), (5, 4))
    np.testing.assert_allclose(dist.nll(z, y), ref(z, y), rtol=1e-5)
    u, v = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 4), jnp.float32)
    H = jax.vmap(jax.hessian(lambda zi, yi: dist.nll(zi[None], yi[None])[0]))(z, y)
    np.testing.assert_allclose(dist.hessian_quad(z, u, v), jnp.einsum("ni,nij,nj->n", u, H, v), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dist", [Categorical(), Bernoulli(), Gaussian()])
def test_sampling_fisher_identity(dist):
    """E_{y~p}[∇_z nll ∇_z nllᵀ] = H(z) (the Fisher = output Hessian identity), by Monte Carlo."""
    z = jnp.array([[0.3, -1.0, 0.8]], jnp.float32)
    n = 40000
    zs = jnp.repeat(z, n, axis=0)
    ys = dist.sample(jax.random.PRNGKey(0), zs)
    g = jax.grad(lambda o: jnp.sum(dist.nll(o, ys)))(zs)
    emp = np.asarray(g.T @ g / n)
    H = np.asarray(jax.hessian(lambda zi: dist.nll(zi[None], ys[:1])[0])(z[0]))
    assert np.abs(emp - H).max() < 8 * np.sqrt(np.max(np.diag(H)) ** 2 * 3 / n) + 1e-3


def test_autoencoder_architecture():
    net = autoencoder()
    assert [s for s in net.layer_shapes.values()] == [
        (785, 1000), (1001, 500), (501, 250), (251, 30), (31, 250), (251, 500), (501, 1000), (1001, 784)]
    assert [l.activation for l in net.layers] == ["tanh"] * 3 + ["linear"] + ["tanh"] * 3 + ["linear"]
    assert net.output.name == "bernoulli"


def test_bad_input_errors():
    class Embedding:
        pass

    with pytest.raises(ValueError, match="unsupported layer type Embedding"):
        Network([Embedding()], (3,))
    with pytest.raises(ValueError, match="unsupported activation"):
        mlp([3, 4, 2], activation="swishy")
    with pytest.raises(ValueError, match="unsupported output distribution"):
        mlp([3, 2], output="poisson")
    net = mlp([3, 4, 2])
    params = net.init(jax.random.PRNGKey(0))
    x = jnp.ones((5, 3), jnp.float32)
    with pytest.raises(ValueError, match="batch size mismatch"):
        net.check_batch(x, jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="inputs must have shape"):
        net.check_batch(jnp.ones((5, 4)), jnp.zeros((5,), jnp.int32))
    with pytest.raises(ValueError, match="integer labels"):
        net.check_batch(x, jnp.zeros((5,), jnp.float32))
    opt = KFAC(net)
    with pytest.raises(ValueError, match="batch size mismatch"):
        opt.step(params, opt.init(params), (x, jnp.zeros((4,), jnp.int32)))
    with pytest.raises(ValueError, match="params must be a dict"):
        opt.init({"layer00": params["layer00"]})
    for kw, msg in [({"damping": 0.0}, "damping"), ({"damping": -1.0}, "damping"),
                    ({"learning_rate": 0.0, "momentum": 0.0}, "learning_rate"),
                    ({"learning_rate": -0.1, "momentum": 0.0}, "learning_rate"),
                    ({"learning_rate": 0.1}, "adaptive momentum"), ({"inverse": "qr"}, "inverse"),
                    ({"estimator": "hessian"}, "estimator"), ({"inverse_period": 0}, "inverse_period"),
                    ({"curvature_batch_size": 0}, "curvature_batch_size"),
                    ({"curvature_batch_size": 1.5}, "curvature_batch_size")]:
        with pytest.raises(ValueError, match=msg):
            KFAC(net, **kw)


def test_traced_flax_and_equinox_mlps_match_hand_written_network():
    """A Flax Linen, a Flax NNX and an Equinox MLP, traced without registration, give the same outputs
    as the frameworks and the same K-FAC step as our Network with the converted parameters."""
    eqx = pytest.importorskip("equinox")
    nn = pytest.importorskip("flax.linen")
    nnx = pytest.importorskip("flax.nnx")
    from classical.tracing import from_equinox, from_nnx, trace_model

    x = jax.random.normal(jax.random.PRNGKey(1), (8, 3), jnp.float32)
    y = jnp.arange(8) % 2
    ours = mlp([3, 4, 2], "tanh")

    class Linen(nn.Module):
        @nn.compact
        def __call__(self, h):
            return nn.Dense(2)(jnp.tanh(nn.Dense(4)(h)))

    class NNX(nnx.Module):
        def __init__(self, rngs):
            self.a, self.b = nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, h):
            return self.b(jnp.tanh(self.a(h)))

    lp = Linen().init(jax.random.PRNGKey(0), x)["params"]
    t_linen = trace_model(lambda p, h: Linen().apply({"params": p}, h), lp, x)
    nnx_model = NNX(nnx.Rngs(0))
    t_nnx, p_nnx = from_nnx(nnx_model, x)
    eqx_model = eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=jax.random.PRNGKey(0))
    t_eqx, p_eqx = from_equinox(eqx_model, x)
    cases = [(t_linen, t_linen.to_ours(lp), Linen().apply({"params": lp}, x)),
             (t_nnx, p_nnx, nnx_model(x)), (t_eqx, p_eqx, jax.vmap(eqx_model)(x))]
    for traced, params, framework_out in cases:
        np.testing.assert_allclose(traced.apply(params, x), framework_out, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours.apply(params, x), framework_out, rtol=1e-5, atol=1e-6)
        # the curvature hooks: layer inputs and pre-activation gradients agree with our Network's
        grads = [jax.grad(lambda t, m=m: m.output.mean_nll(m.apply_tapped(params, x, t)[0], y))(m.zero_taps(x))
                 for m in (traced, ours)]
        for k in params:
            np.testing.assert_allclose(traced.apply_tapped(params, x, None)[1][k],
                                       ours.apply_tapped(params, x, None)[1][k], rtol=1e-6)
            np.testing.assert_allclose(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-7)
    # one K-FAC step on the equinox model (transposed kernels) equals the step on our Network
    a, b = KFAC(t_eqx, damping=1.0, seed=3), KFAC(ours, damping=1.0, seed=3)
    pa, _, _ = a.step(p_eqx, a.init(p_eqx), (x, y))
    pb, _, _ = b.step(p_eqx, b.init(p_eqx), (x, y))
    for k in p_eqx:
        np.testing.assert_allclose(pa[k], pb[k], rtol=1e-4, atol=1e-6)
    # round trip of the parameter layouts
    back = t_eqx.to_ours(t_eqx.to_theirs(pa))
    for k in pa:
        np.testing.assert_array_equal(back[k], pa[k])

    class WithNorm(nn.Module):
        @nn.compact
        def __call__(self, h):
            return nn.Dense(2)(nn.LayerNorm()(nn.Dense(4)(h)))

    wp = WithNorm().init(jax.random.PRNGKey(0), x)["params"]
    with pytest.raises(ValueError, match="unsupported layer type"):
        trace_model(lambda p, h: WithNorm().apply({"params": p}, h), wp, x)


@pytest.mark.parametrize("kernel,strides,padding", [((3, 3), (1, 1), "SAME"), ((5, 5), (1, 1), "VALID"),
                                                    ((2, 3), (2, 2), "SAME"), ((3, 2), (2, 1), "VALID")])
def test_patches_from_slices_equal_lax_patches(kernel, strides, padding):
    """The slice-built patch matrix is exactly (a permutation-free copy of) the library's."""
    from classical.models import _patches

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 8, 3)), jnp.float32)
    ref = jax.lax.conv_general_dilated_patches(x, kernel, strides, padding, dimension_numbers=("NHWC", "OIHW", "NHWC"))
    np.testing.assert_array_equal(_patches(x, Conv2D(4, kernel, strides, padding)), ref)
    with pytest.raises(ValueError, match="padding"):
        _patches(x, Conv2D(4, kernel, strides, "CIRCULAR"))
