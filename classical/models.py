"""Pure-JAX float32 networks whose layers expose their inputs and pre-activation gradients.

Layout (shared with ``qgeom.metrics.KroneckerFactored``): each dense or conv layer has ONE
parameter matrix ``W`` of shape (d_in + 1, d_out), input-major, bias as the last row, so the
pre-activation is s = Wᵀ[x; 1]. Parameters are a dict ``{"layer00": W0, "layer01": W1, ...}``
whose sorted key order is the layer order.

Curvature hooks (the *tapped* forward). ``apply_tapped(params, x, taps)`` adds ``taps[name]``
(zeros of shape (N, T, d_out)) to every pre-activation and returns the network output and
each layer's input ``x`` reshaped to (N, T, d_in) — without the homogeneous 1. Then
∂loss/∂taps[name] is the pre-activation gradient g, so one forward pass and its VJP give
both the loss gradient and the per-example g with targets sampled from the model.
T is the number of positions a layer's weights are shared over: 1 for dense layers, the
output pixels for convolutions. Convolutions follow KFC (Grosse & Martens 2016): their
input is the patch matrix of ``jax.lax.conv_general_dilated_patches`` (features ordered
channel-major, then kernel rows, then kernel columns) and s = patches·W.

Supported layers: ``Dense``, ``Conv2D`` (NHWC), ``Flatten``, ``AvgPool2D``; anything else
is a ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from classical.distributions import Distribution, get_distribution

DTYPE = jnp.float32

ACTIVATIONS = {
    "linear": lambda s: s,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
}


def _check_activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; choose one of {sorted(ACTIVATIONS)}")


@dataclasses.dataclass(frozen=True)
class Dense:
    """Fully connected layer: s = x W[:-1] + W[-1], output activation(s)."""

    features: int
    activation: str = "tanh"


@dataclasses.dataclass(frozen=True)
class Conv2D:
    """2D convolution on NHWC images as a patch matmul (KFC): s = patches(x) W[:-1] + W[-1]."""

    features: int
    kernel_size: tuple = (3, 3)
    strides: tuple = (1, 1)
    padding: str = "SAME"
    activation: str = "relu"


@dataclasses.dataclass(frozen=True)
class Flatten:
    """Reshape (N, ...) to (N, prod(...))."""


@dataclasses.dataclass(frozen=True)
class AvgPool2D:
    """Non-overlapping average pooling of NHWC images by ``window``."""

    window: tuple = (2, 2)


def _patches(x, layer: Conv2D):
    """The patch matrix of ``jax.lax.conv_general_dilated_patches`` (features channel-major, then
    kernel rows, then kernel columns), built from kh·kw strided slices: XLA:CPU runs the library
    call as a convolution with an identity kernel, 4–5× slower than the slices in a network's step."""
    (kh, kw), (sh, sw) = tuple(layer.kernel_size), tuple(layer.strides)
    if layer.padding not in ("SAME", "VALID"):
        raise ValueError(f"Conv2D padding must be 'SAME' or 'VALID', got {layer.padding!r}")
    n, h, w, c = x.shape
    if layer.padding == "SAME":
        ho, wo = -(-h // sh), -(-w // sw)
        ph, pw = max((ho - 1) * sh + kh - h, 0), max((wo - 1) * sw + kw - w, 0)
        x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    cols = [x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :] for i in range(kh) for j in range(kw)]
    return jnp.stack(cols, axis=-1).reshape(n, ho, wo, c * kh * kw)


class Network:
    """A feed-forward stack of ``layers`` on inputs of shape ``input_shape`` (per example).

    ``output`` names the predictive distribution at the last layer's output (see
    ``classical.distributions``): ``"categorical"``, ``"bernoulli"`` or ``"gaussian"``.
    """

    def __init__(self, layers: Sequence, input_shape: Sequence[int], output="categorical"):
        self.layers = tuple(layers)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.output: Distribution = get_distribution(output)
        if not self.layers:
            raise ValueError("a Network needs at least one layer")
        self.names, self._specs = [], []  # per parametric layer: (name, d_in, d_out, T)
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            shape = self._infer(i, layer, shape)
        self.output_shape = shape
        if not self.names:
            raise ValueError("a Network needs at least one Dense or Conv2D layer")
        self.names = tuple(self.names)

    def _infer(self, i, layer, shape):
        name = f"layer{i:02d}"
        if isinstance(layer, Dense):
            _check_activation(layer.activation)
            if len(shape) != 1:
                raise ValueError(f"Dense layer {i} needs flat inputs, got per-example shape {shape}; add Flatten()")
            self.names.append(name)
            self._specs.append((name, shape[0], layer.features, 1))
            return (layer.features,)
        if isinstance(layer, Conv2D):
            _check_activation(layer.activation)
            if len(shape) != 3:
                raise ValueError(f"Conv2D layer {i} needs (H, W, C) inputs, got per-example shape {shape}")
            if layer.padding not in ("SAME", "VALID"):
                raise ValueError(f"Conv2D padding must be 'SAME' or 'VALID', got {layer.padding!r}")
            out = jax.eval_shape(lambda x: _patches(x, layer), jax.ShapeDtypeStruct((1, *shape), DTYPE)).shape
            self.names.append(name)
            self._specs.append((name, out[-1], layer.features, out[1] * out[2]))
            return (out[1], out[2], layer.features)
        if isinstance(layer, Flatten):
            return (math.prod(shape),)
        if isinstance(layer, AvgPool2D):
            if len(shape) != 3 or shape[0] % layer.window[0] or shape[1] % layer.window[1]:
                raise ValueError(f"AvgPool2D layer {i}: window {layer.window} does not tile input {shape}")
            return (shape[0] // layer.window[0], shape[1] // layer.window[1], shape[2])
        raise ValueError(f"unsupported layer type {type(layer).__name__} at position {i}; "
                         "use Dense, Conv2D, Flatten or AvgPool2D")

    def __repr__(self):
        return f"Network({list(self.layers)}, input_shape={self.input_shape}, output={self.output.name!r})"

    @property
    def layer_shapes(self):
        """{name: (d_in + 1, d_out)} — the parameter matrix shapes."""
        return {n: (din + 1, dout) for n, din, dout, _ in self._specs}

    @property
    def locations(self):
        """{name: T}, the number of positions each layer's weights are shared over."""
        return {n: t for n, _, _, t in self._specs}

    def init(self, key):
        """Float32 parameters: W[:-1] ~ N(0, c/fan_in) (c = 2 for relu/elu/gelu, else 1), bias 0."""
        params = {}
        keys = jax.random.split(key, len(self._specs))
        acts = [l.activation for l in self.layers if isinstance(l, (Dense, Conv2D))]
        for k, (name, din, dout, _), act in zip(keys, self._specs, acts):
            gain = 2.0 if act in ("relu", "elu", "gelu") else 1.0
            w = jax.random.normal(k, (din, dout), DTYPE) * np.float32(math.sqrt(gain / din))
            params[name] = jnp.concatenate([w, jnp.zeros((1, dout), DTYPE)])
        return params

    def check_params(self, params):
        """``ValueError`` unless ``params`` is a dict with exactly this network's layer matrices."""
        check_layer_params(self, params)

    def check_batch(self, x, y=None):
        """``ValueError`` unless x is (N, *input_shape) and y fits the output distribution."""
        check_network_batch(self, x, y)

    def zero_taps(self, x):
        """Zero perturbations {name: (N, T, d_out)} for ``apply_tapped``."""
        n = x.shape[0]
        return {name: jnp.zeros((n, t, dout), DTYPE) for name, _, dout, t in self._specs}

    def apply_tapped(self, params, x, taps):
        """(output, {name: layer input of shape (N, T, d_in)}) with ``taps`` added to pre-activations."""
        inputs = {}
        h = x.astype(DTYPE)
        for i, layer in enumerate(self.layers):
            name = f"layer{i:02d}"
            if isinstance(layer, (Dense, Conv2D)):
                w = params[name]
                z = _patches(h, layer) if isinstance(layer, Conv2D) else h
                inputs[name] = z.reshape(z.shape[0], -1, z.shape[-1])
                s = z @ w[:-1] + w[-1]
                if taps is not None:
                    s = s + taps[name].reshape(s.shape)
                h = ACTIVATIONS[layer.activation](s)
            elif isinstance(layer, Flatten):
                h = h.reshape(h.shape[0], -1)
            else:
                wh, ww = layer.window
                n, hh, hw, c = h.shape
                h = h.reshape(n, hh // wh, wh, hw // ww, ww, c).mean(axis=(2, 4))
        return h, inputs

    def apply(self, params, x):
        """The network output f(x) (logits or mean) for a batch x of shape (N, *input_shape)."""
        return self.apply_tapped(params, x, None)[0]

    def loss(self, params, x, y):
        """Batch-mean negative log-likelihood of targets y."""
        return self.output.mean_nll(self.apply(params, x), y)


def mlp(sizes: Sequence[int], activation="tanh", output="categorical", final_activation="linear"):
    """A ``Network`` of Dense layers sizes[0] → sizes[1] → … → sizes[-1].

    ``activation`` is a name for every hidden layer or a sequence (one per layer, the
    last entry overriding ``final_activation``, which is the output layer's — usually
    ``"linear"`` because the distribution takes logits).
    """
    n = len(sizes) - 1
    if n < 1:
        raise ValueError(f"mlp needs at least two sizes, got {list(sizes)}")
    acts = [activation] * (n - 1) + [final_activation] if isinstance(activation, str) else list(activation)
    if len(acts) != n:
        raise ValueError(f"{n} layers but {len(acts)} activations")
    return Network([Dense(d, a) for d, a in zip(sizes[1:], acts)], (sizes[0],), output)


def autoencoder(output="bernoulli"):
    """The K-FAC paper's MNIST deep autoencoder 784-1000-500-250-30-250-500-1000-784.

    tanh hidden units, linear 30-unit code layer, linear output logits (sigmoid
    cross-entropy with ``"bernoulli"``).
    """
    sizes = [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
    acts = ["tanh", "tanh", "tanh", "linear", "tanh", "tanh", "tanh", "linear"]
    return mlp(sizes, acts, output)


def check_layer_params(net, params, hint: str = "") -> None:
    """``ValueError`` unless ``params`` is a dict with exactly ``net.names`` and ``net.layer_shapes``."""
    if not isinstance(params, dict) or set(params) != set(net.names):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"params must be a dict with keys {list(net.names)}{hint}, got {got}")
    for name, shape in net.layer_shapes.items():
        if tuple(params[name].shape) != shape:
            raise ValueError(f"params[{name!r}] has shape {tuple(params[name].shape)}, expected {shape}")


def check_network_batch(net, x, y=None) -> None:
    """``ValueError`` unless x is (N, *net.input_shape) and y fits ``net.output``."""
    if tuple(x.shape[1:]) != net.input_shape:
        raise ValueError(f"inputs must have shape (N, {', '.join(map(str, net.input_shape))}), got {x.shape}")
    if y is not None:
        if y.shape[:1] != x.shape[:1]:
            raise ValueError(f"batch size mismatch: {x.shape[0]} inputs but {y.shape[0]} targets")
        net.output.check_targets((x.shape[0], *net.output_shape), y)
