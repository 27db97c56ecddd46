"""The interface shared by the curvature optimizers that own their forward pass (K-FAC and its
family, Hessian-free): a fused jitted ``step`` and an optax ``update`` over one ``_core``.

A subclass sets ``self.model`` (``check_params``, ``check_batch``), ``self._step_jit``
(normally ``jax.jit(self._fused)``) and defines ``_core(params, state, x, y, grads)`` →
``(delta, state)`` with ``state.info`` the step's diagnostics; ``grads=None`` means "compute
the gradient from the same forward pass".
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from optax import tree_utils as otu


class FusedStepOptimizer:
    """``step(params, state, (x, y))`` and ``update(grads, state, params, batch=(x, y))``."""

    def step(self, params, state, batch):
        """One fused step on ``batch = (x, y)``: returns (new_params, new_state, info).

        Where the state is donated (``donate_state=True``) the ``state`` argument's buffers
        are reused: continue with the returned state only.
        """
        x, y = self._check(params, batch)
        return self._step_jit(params, state, x, y)

    def update(self, updates, state, params=None, *, batch, **extra_args):
        """optax update: ``updates`` is the gradient of the mean NLL; returns (updates, state)."""
        del extra_args
        if params is None:
            raise ValueError(f"{type(self).__name__}'s update needs params (call tx.update(grads, state, "
                             "params, batch=...))")
        x, y = self._check(params, batch)
        self.model.check_params(updates)
        return self._update_core(params, state, x, y, updates)

    def _update_core(self, params, state, x, y, grads):
        """The optax path's core; a subclass may replace it by a jitted ``_core``."""
        return self._core(params, state, x, y, grads)

    def gradient_transformation(self) -> optax.GradientTransformationExtraArgs:
        """This optimizer as an optax transformation: ``update(grads, state, params, batch=(x, y))``."""
        return optax.GradientTransformationExtraArgs(self.init, self.update)

    def _check(self, params, batch):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError("batch must be a pair (x, y)")
        x, y = jnp.asarray(batch[0]), jnp.asarray(batch[1])
        self.model.check_params(params)
        self.model.check_batch(x, y)
        return x, y

    def _fused(self, params, state, x, y):
        delta, state = self._core(params, state, x, y, None)
        return otu.tree_add(params, delta), state, state.info
