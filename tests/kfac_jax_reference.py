"""kfac-jax's view of a ``classical.models.mlp`` tanh classifier, for tests against kfac-jax 0.0.8."""

import jax.numpy as jnp


def tanh_mlp_loss(net):
    """The mean categorical NLL of ``net`` on kfac-jax's {layer: {"w", "b"}} parameters, with the
    softmax loss registered (a tanh hidden layer, linear output — the nets these tests build)."""
    import kfac_jax

    def loss(kp, batch):
        h = batch[0]
        for i, k in enumerate(sorted(kp)):
            h = h @ kp[k]["w"] + kp[k]["b"]
            h = jnp.tanh(h) if i == 0 else h
        kfac_jax.register_softmax_cross_entropy_loss(h, batch[1])
        return jnp.mean(net.output.nll(h, batch[1]))

    return loss
