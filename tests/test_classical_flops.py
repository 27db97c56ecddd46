"""The multiply–add model of experiments.kfac_flops against XLA's cost analysis of the real code."""

import jax
import jax.numpy as jnp
import pytest

from classical.kfac import KFAC, _linearize, input_factor, output_factor
from classical.models import mlp
from experiments import kfac_flops as kf
from experiments.classical_methods import float32_mode

SIZES = [200, 300, 250, 120]
N = 128


def _xla_flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost["flops"]


@pytest.fixture(scope="module")
def setup():
    with float32_mode():
        net = mlp(SIZES, "tanh", "categorical")
        params = net.init(jax.random.PRNGKey(0))
        x = jax.random.normal(jax.random.PRNGKey(1), (N, SIZES[0]), jnp.float32)
        y = jax.random.randint(jax.random.PRNGKey(2), (N,), 0, SIZES[-1])
        shapes = [(a, b) for a, b in zip(SIZES[:-1], SIZES[1:])]
        yield net, params, x, y, shapes


def _close(model_macs, xla_flops):
    # XLA counts 2 flops per multiply–add plus the (lower-order) elementwise work.
    assert 2 * model_macs <= xla_flops <= 2 * model_macs * 1.03, (2 * model_macs, xla_flops)


def test_sgd_step_forward_backward(setup):
    net, params, x, y, shapes = setup
    with float32_mode():
        flops = _xla_flops(jax.value_and_grad(net.loss), params, x, y)
    _close(kf.forward_macs(shapes, N) + kf.backward_macs(shapes, N), flops)


def test_statistics_and_preconditioning(setup):
    net, params, x, y, shapes = setup
    with float32_mode():
        _, _, _, inputs = _linearize(net, params, x)
        taps = net.zero_taps(x)
        flops = _xla_flops(lambda i, g: ({k: input_factor(v) for k, v in i.items()},
                                         {k: output_factor(v) for k, v in g.items()}), inputs, taps)
        _close(kf.statistics_macs(shapes, N), flops)
        opt = KFAC(net, learning_rate=0.1, momentum=0.0)
        state = opt.init(params)
        flops = _xla_flops(opt.precondition, state, params)
        _close(kf.precondition_macs(shapes), flops)


def test_jvp(setup):
    net, params, x, y, shapes = setup

    def jvp(p, t):  # the primal output too, or XLA drops the last layer's forward product
        out, lin, _, _ = _linearize(net, p, x)
        return out, lin(t)

    with float32_mode():
        flops = _xla_flops(jvp, params, params) - _xla_flops(lambda p: net.apply(p, x), params)
    _close(kf.jvp_macs(shapes, N), flops)


def test_step_cost_composition():
    shapes = [(784, 1000), (1000, 500)]
    sgd = kf.step_cost("sgd", shapes, 100)
    ada = kf.step_cost("kfac-adaptive", shapes, 100, inverse_period=10, damping_interval=5)
    assert sgd.total == kf.forward_macs(shapes, 100) + kf.backward_macs(shapes, 100)
    assert ada.jvps == 2 * kf.jvp_macs(shapes, 100)
    assert ada.inverse == pytest.approx(kf.inverse_macs(shapes) / 10)
    assert ada.rho_forward == kf.forward_macs(shapes, 100) / 5
    sub = kf.step_cost("kfac-fixed", shapes, 100, curvature_batch=25)
    assert sub.statistics == kf.statistics_macs(shapes, 25) and sub.jvps == 0 and sub.rho_forward == 0
    foof = kf.step_cost("foof", shapes, 100)
    assert foof.precondition == kf.precondition_macs(shapes, g_factor=False) and foof.sampled_backward == 0
    with pytest.raises(ValueError, match="unknown method"):
        kf.step_cost("lbfgs", shapes, 100)
    with pytest.raises(ValueError, match="at least one"):
        kf.step_cost("sgd", [], 100)
