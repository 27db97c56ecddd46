"""Use a Flax (Linen or NNX) or Equinox MLP with K-FAC without registering layers by hand.

``trace_model(fn, params, x, output)`` traces ``fn(params, x)`` (any JAX function of a parameter
pytree and a batch) to a jaxpr and finds its dense layers as the pattern

    s = dot_general(h, K) [→ transpose] + broadcast/reshape(b)

with K a 2-D parameter leaf (flax layout (d_in, d_out) or equinox layout (d_out, d_in)) and b a
1-D parameter leaf. Everything else (activations, reshapes, …) is replayed as traced. The
returned ``TracedModel`` has the interface of ``classical.models.Network``: parameters in our
layout {"layer00": W, …} with W = [K; b] of shape (d_in + 1, d_out), ``apply_tapped`` for the
curvature hooks, and ``to_ours`` / ``to_theirs`` converting parameters both ways. Any parameter
leaf used in another way (layer norms, embeddings, convs, bias-free dense layers) is a
``ValueError``: the optimizer would not know its curvature block.

Helpers for the common frameworks (imported lazily — the library does not depend on them):

* Flax Linen:  ``trace_model(lambda p, x: module.apply({"params": p}, x), variables["params"], x)``
* Flax NNX:    ``from_nnx(model, x)`` (``nnx.split`` → state pytree; ``to_theirs`` + ``nnx.update``)
* Equinox:     ``from_equinox(model, x)`` (``eqx.partition(model, eqx.is_array)``; per-example
  modules are vmapped over the batch)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from classical.distributions import get_distribution
from classical.models import DTYPE, check_layer_params, check_network_batch

_BIAS_CHAIN = ("broadcast_in_dim", "reshape", "convert_element_type", "expand_dims")


class _Layer:
    def __init__(self, kernel, transposed_kernel, dot_index, act_var, out_var, out_transposed):
        self.kernel, self.transposed_kernel = kernel, transposed_kernel
        self.dot_index, self.act_var = dot_index, act_var
        self.tap_var, self.tap_transposed = out_var, out_transposed
        self.bias = None


def _analyse(jaxpr, n_leaves):
    """Find dense layers in a jaxpr whose first ``n_leaves`` invars are parameter leaves."""
    leaf_of = {v: i for i, v in enumerate(jaxpr.invars[:n_leaves])}
    bias_of, head, layers, used = {}, {}, [], set()  # var -> leaf; var -> layer; uses of leaves
    for idx, eqn in enumerate(jaxpr.eqns):
        prim, ins = eqn.primitive.name, list(eqn.invars)
        leaf_ins = [v for v in ins if isinstance(v, jcore.Var) and v in leaf_of]
        if prim == "dot_general" and len(leaf_ins) == 1 and not isinstance(ins[1 - ins.index(leaf_ins[0])], jcore.Var):
            raise ValueError("unsupported layer type: dot_general of a parameter with a constant")
        if prim == "dot_general" and len(leaf_ins) == 1 and leaf_ins[0].aval.ndim == 2:
            kpos = ins.index(leaf_ins[0])
            act = ins[1 - kpos]
            (contract, batch) = eqn.params["dimension_numbers"]
            kc, ac = contract[kpos], contract[1 - kpos]
            if act.aval.ndim != 2 or batch != ((), ()) or tuple(ac) != (1,) or len(kc) != 1:
                raise ValueError(f"unsupported layer type: dot_general with dimension numbers "
                                 f"{eqn.params['dimension_numbers']} on a parameter (only h·K on (N, d_in) batches)")
            layer = _Layer(leaf_of[leaf_ins[0]], kc[0] == 1, idx, act, eqn.outvars[0], kpos == 0)
            layers.append(layer)
            head[eqn.outvars[0]] = layer
            used.add(leaf_ins[0])
            continue
        is_t = prim == "transpose" and tuple(eqn.params["permutation"]) == (1, 0)
        if is_t and isinstance(ins[0], jcore.Var) and ins[0] in head:
            layer = head[ins[0]]
            layer.tap_var, layer.tap_transposed = eqn.outvars[0], not layer.tap_transposed
            head[eqn.outvars[0]] = layer
            continue
        if prim in _BIAS_CHAIN and len(ins) >= 1 and isinstance(ins[0], jcore.Var):
            src = ins[0]
            if src in leaf_of and src.aval.ndim == 1:
                bias_of[eqn.outvars[0]] = leaf_of[src]
                used.add(src)
                continue
            if src in bias_of:
                bias_of[eqn.outvars[0]] = bias_of[src]
                continue
        if prim == "add" and len(ins) == 2 and all(isinstance(v, jcore.Var) for v in ins):
            a, b = ins
            pair = (a, b) if a in head else (b, a)
            if pair[0] in head and (pair[1] in bias_of or pair[1] in leaf_of):
                layer = head[pair[0]]
                bias = bias_of.get(pair[1], leaf_of.get(pair[1]))
                if layer.bias is None and layer.tap_var is pair[0]:
                    layer.bias = bias
                    layer.tap_var = eqn.outvars[0]
                    if pair[1] in leaf_of:
                        used.add(pair[1])
                    continue
        for v in ins:
            if isinstance(v, jcore.Var) and (v in leaf_of or v in bias_of):
                leaf = leaf_of.get(v, bias_of.get(v))
                raise ValueError(f"unsupported layer type: parameter leaf {leaf} (shape "
                                 f"{jaxpr.invars[leaf].aval.shape}) is used by '{prim}', not as a dense kernel or bias")
    unused = [i for v, i in leaf_of.items() if v not in used]
    if unused:
        raise ValueError(f"parameter leaves {unused} are not used as dense kernels or biases")
    for k, layer in enumerate(layers):
        if layer.bias is None:
            raise ValueError(f"dense layer {k} has no bias; the tracer needs kernel + bias layers")
    if not layers:
        raise ValueError("no dense layers (dot_general with a parameter kernel) found in the model")
    return layers


class TracedModel:
    """A model traced from ``fn(params, x)``; see the module docstring. ``output`` is the
    predictive distribution at ``fn``'s output."""

    def __init__(self, fn, params, x, output="categorical"):
        self.fn, self.output = fn, get_distribution(output)
        leaves, self._treedef = jax.tree_util.tree_flatten(params)
        # our nets are float32 (qgeom enables x64, so frameworks may have created float64 leaves)
        self._leaves = [jnp.asarray(v, DTYPE) for v in leaves]
        x = jnp.asarray(x)
        self.input_shape = tuple(x.shape[1:])
        self._cache = {}
        jaxpr, layers = self._trace(x.shape[0])
        self.names = tuple(f"layer{i:02d}" for i in range(len(layers)))
        self._shapes = {}
        for name, layer in zip(self.names, layers):
            k = self._leaves[layer.kernel].shape
            d_in, d_out = (k[1], k[0]) if layer.transposed_kernel else k
            if self._leaves[layer.bias].shape != (d_out,):
                raise ValueError(f"{name}: bias shape {self._leaves[layer.bias].shape} does not match kernel {k}")
            self._shapes[name] = (d_in + 1, d_out)
        self.output_shape = tuple(jaxpr.jaxpr.outvars[0].aval.shape[1:])

    def _trace(self, n):
        if n not in self._cache:
            params = jax.tree_util.tree_unflatten(self._treedef, self._leaves)
            xs = jax.ShapeDtypeStruct((n, *self.input_shape), DTYPE)
            closed = jax.make_jaxpr(self.fn)(params, xs)
            if len(closed.jaxpr.outvars) != 1:
                raise ValueError("the traced function must return a single output array")
            self._cache[n] = (closed, _analyse(closed.jaxpr, len(self._leaves)))
        return self._cache[n]

    # --- parameter conversion -------------------------------------------------------------
    @property
    def layer_shapes(self):
        return dict(self._shapes)

    def to_ours(self, params):
        """{name: W = [K; b]} (float32) from parameters in the traced framework's structure."""
        leaves = jax.tree_util.tree_leaves(params)
        _, layers = self._cache[next(iter(self._cache))]
        out = {}
        for name, layer in zip(self.names, layers):
            k = jnp.asarray(leaves[layer.kernel], DTYPE)
            k = k.T if layer.transposed_kernel else k
            out[name] = jnp.concatenate([k, jnp.asarray(leaves[layer.bias], DTYPE)[None]])
        return out

    def to_theirs(self, params):
        """Parameters in the traced framework's structure from our {name: W} dict."""
        leaves = list(self._leaves)
        _, layers = self._cache[next(iter(self._cache))]
        for name, layer in zip(self.names, layers):
            w = params[name]
            leaves[layer.kernel] = w[:-1].T if layer.transposed_kernel else w[:-1]
            leaves[layer.bias] = w[-1]
        return jax.tree_util.tree_unflatten(self._treedef, leaves)

    # --- Network interface ----------------------------------------------------------------
    def check_params(self, params):
        check_layer_params(self, params, hint=" (use to_ours)")

    def check_batch(self, x, y=None):
        check_network_batch(self, x, y)

    def zero_taps(self, x):
        return {name: jnp.zeros((x.shape[0], 1, s[1]), DTYPE) for name, s in self._shapes.items()}

    def apply_tapped(self, params, x, taps):
        """Replay the traced jaxpr with our parameters, adding ``taps`` after each bias add."""
        closed, layers = self._trace(x.shape[0])
        jaxpr = closed.jaxpr
        leaves = jax.tree_util.tree_leaves(self.to_theirs(params))
        env = dict(zip(jaxpr.constvars, closed.consts))
        env.update(zip(jaxpr.invars, leaves + [x.astype(DTYPE)]))
        by_dot = {layer.dot_index: (name, layer) for name, layer in zip(self.names, layers)}
        by_tap = {layer.tap_var: (name, layer) for name, layer in zip(self.names, layers)}
        inputs = {}

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        for idx, eqn in enumerate(jaxpr.eqns):
            invals = [read(v) for v in eqn.invars]
            if idx in by_dot:
                name, layer = by_dot[idx]
                h = read(layer.act_var)
                inputs[name] = h.reshape(h.shape[0], 1, h.shape[1])
            subfuns, bind_params = eqn.primitive.get_bind_params(eqn.params)
            outs = eqn.primitive.bind(*subfuns, *invals, **bind_params)
            outs = outs if eqn.primitive.multiple_results else [outs]
            for v, val in zip(eqn.outvars, outs):
                if v in by_tap and taps is not None:
                    name, layer = by_tap[v]
                    t = taps[name][:, 0, :]
                    val = val + (t.T if layer.tap_transposed else t)
                env[v] = val
        return read(jaxpr.outvars[0]), inputs

    def apply(self, params, x):
        return self.apply_tapped(params, x, None)[0]

    def loss(self, params, x, y):
        return self.output.mean_nll(self.apply(params, x), y)


def trace_model(fn, params, x, output="categorical") -> TracedModel:
    """Trace ``fn(params, x)`` (see module docstring); ``x`` is an example batch (N, ...)."""
    return TracedModel(fn, params, x, output)


def from_equinox(model, x, output="categorical"):
    """(TracedModel, our params) for an Equinox module applied per example (vmapped over the batch)."""
    import equinox as eqx

    arrays, static = eqx.partition(model, eqx.is_array)
    traced = TracedModel(lambda p, xb: jax.vmap(eqx.combine(p, static))(xb), arrays, x, output)
    return traced, traced.to_ours(arrays)


def from_nnx(model, x, output="categorical"):
    """(TracedModel, our params) for a Flax NNX module; write back with
    ``nnx.update(model, traced.to_theirs(params))``."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    traced = TracedModel(lambda s, xb: nnx.merge(graphdef, s)(xb), state, x, output)
    return traced, traced.to_ours(state)
