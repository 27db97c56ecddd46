"""The classical studies' problems: a ``classical.models.Network`` + ℓ2 on float32 data.

Also kfac-jax's view of the same function (``split_params`` / ``split_apply`` /
``kfac_jax_loss``): plain ``dot``/``conv`` + bias, so its automatic layer registration
sees the layers our K-FAC sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from classical import models
from classical.models import Network


def l2_penalty(params):
    """½‖θ‖² over all parameters (kfac-jax's ``l2_reg/2 · Σθ²`` convention)."""
    return 0.5 * sum(jnp.sum(p**2) for p in jax.tree_util.tree_leaves(params))


@dataclass(frozen=True)
class Problem:
    """A ``classical.models.Network`` + ℓ2: training objective = batch-mean NLL + l2·½‖θ‖².

    Parameters are the network's ``{"layerNN": W}`` dict (bias as W's last row).
    ``metrics`` gives the NLL ("loss") and the error: squared reconstruction error per
    image (autoencoder) or the misclassification rate (classifiers).
    """

    name: str
    net: Network
    l2: float

    def loss(self, params, batch):
        x, y = batch
        return self.net.loss(params, x, y) + self.l2 * l2_penalty(params)

    def metrics(self, params, batch):
        x, y = batch
        out = self.net.apply(params, x)
        nll = self.net.output.mean_nll(out, y)
        if self.net.output.name == "categorical":
            return {"loss": nll, "error": 1.0 - jnp.mean(jnp.argmax(out, -1) == y)}
        pred = jax.nn.sigmoid(out) if self.net.output.name == "bernoulli" else out
        return {"loss": nll, "error": jnp.mean(jnp.sum((pred - y).reshape(len(y), -1) ** 2, axis=-1))}

    @property
    def config(self):
        return {"problem": self.name, "net": repr(self.net), "l2": self.l2}


def autoencoder_problem(l2=1e-5) -> Problem:
    """MNIST deep autoencoder 784-1000-500-250-30-250-500-1000-784 (Hinton & Salakhutdinov
    2006; K-FAC paper §13): tanh, linear code layer, sigmoid cross-entropy summed over pixels."""
    return Problem("autoencoder", models.autoencoder("bernoulli"), l2)


def mlp_classifier_problem(hidden=(1000, 500), l2=1e-5) -> Problem:
    """MNIST MLP classifier 784-hidden…-10, tanh, softmax cross-entropy."""
    return Problem("mlp", models.mlp((784, *hidden, 10), "tanh", "categorical"), l2)


def conv_classifier_problem(l2=1e-5) -> Problem:
    """Small conv net on 28×28×1: conv 3×3/2 (16) → conv 3×3/2 (32) → dense 128 → 10, relu."""
    layers = [
        models.Conv2D(16, (3, 3), (2, 2), "SAME", "relu"),
        models.Conv2D(32, (3, 3), (2, 2), "SAME", "relu"),
        models.Flatten(),
        models.Dense(128, "relu"),
        models.Dense(10, "linear"),
    ]
    return Problem("conv", models.Network(layers, (28, 28, 1), "categorical"), l2)


def split_params(net: Network, params) -> dict:
    """``{"layerNN": W}`` → kfac-jax-friendly ``{"layerNN": {"w": kernel, "b": bias}}``
    (dense kernels (d_in, d_out); conv kernels HWIO, un-doing the patch feature order
    channel-major → kernel rows → kernel columns). The same function, reparametrised,
    so kfac-jax's automatic layer registration sees plain ``dot``/``conv`` + bias."""
    out = {}
    for layer, name in _param_layers(net):
        w = params[name]
        kernel = w[:-1]
        if isinstance(layer, models.Conv2D):
            kh, kw = layer.kernel_size
            kernel = kernel.reshape(-1, kh, kw, w.shape[1]).transpose(1, 2, 0, 3)
        out[name] = {"w": kernel, "b": w[-1]}
    return out


def join_params(net: Network, split) -> dict:
    """Inverse of ``split_params``."""
    out = {}
    for layer, name in _param_layers(net):
        kernel = split[name]["w"]
        if isinstance(layer, models.Conv2D):
            kernel = kernel.transpose(2, 0, 1, 3).reshape(-1, kernel.shape[-1])
        out[name] = jnp.concatenate([kernel, split[name]["b"][None]])
    return out


def _param_layers(net):
    return [(layer, f"layer{i:02d}") for i, layer in enumerate(net.layers) if isinstance(layer, (models.Dense, models.Conv2D))]


def split_apply(net: Network, split, x):
    """``net.apply`` on split parameters with ``x @ w + b`` / ``conv(x, w) + b``."""
    h = x
    for i, layer in enumerate(net.layers):
        name = f"layer{i:02d}"
        if isinstance(layer, models.Dense):
            h = models.ACTIVATIONS[layer.activation](h @ split[name]["w"] + split[name]["b"])
        elif isinstance(layer, models.Conv2D):
            s = jax.lax.conv_general_dilated(h, split[name]["w"], tuple(layer.strides), layer.padding,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = models.ACTIVATIONS[layer.activation](s + split[name]["b"])
        elif isinstance(layer, models.Flatten):
            h = h.reshape(h.shape[0], -1)
        else:
            wh, ww = layer.window
            n, hh, hw, c = h.shape
            h = h.reshape(n, hh // wh, wh, hw // ww, ww, c).mean(axis=(2, 4))
    return h


def kfac_jax_loss(problem: Problem, split, batch):
    """The training objective on split parameters, with kfac-jax's loss registration."""
    import kfac_jax

    x, y = batch
    out = split_apply(problem.net, split, x)
    kind = problem.net.output.name
    if kind == "bernoulli":
        kfac_jax.register_sigmoid_cross_entropy_loss(out, y)
    elif kind == "categorical":
        kfac_jax.register_softmax_cross_entropy_loss(out, y)
    else:
        kfac_jax.register_squared_error_loss(out, y)
    return problem.net.output.mean_nll(out, y) + problem.l2 * l2_penalty(split)
