"""The classical studies' method builders and how one (method, grid point, seed) becomes a ``Method``.

A study's registry holds ``MethodSpec``s whose ``build`` is one of these (or any optax
factory, learning rate first): ``sgd`` — optax SGD with Sutskever et al.'s (2013)
momentum schedule; ``adam`` — optax Adam; ``kfac`` / ``foof`` — ours (``classical.KFAC`` /
``classical.foof.FOOF``; ``kfac-sub`` is K-FAC with its curvature from the first quarter of
each batch); ``kfac_jax`` — DeepMind's kfac-jax (a reference, only if installed).
Grid points are dicts of hyper-parameters (``lr``, ``damping``, ...), stored as such.
The rest of the K-FAC family and the gradient-only preconditioners (EKFAC, RS-KFAC, TNT, MBF,
Shampoo, SOAP, M-FAC, ...) are built in ``experiments.classical_family`` on ``build_ours``.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp

from classical import baselines
from experiments.classical_problems import Problem, join_params, kfac_jax_loss, split_params
from experiments.harness import Method, MethodSpec, as_method

KFAC_SUB_FRACTION = 0.25  # kfac-sub: curvature from the first quarter of each batch


def sgd(lr, mu_max=0.99):
    """optax SGD, Nesterov momentum with Sutskever et al.'s schedule."""
    return baselines.sgd_sutskever(lr, mu_max)


def adam(lr):
    """optax Adam."""
    return baselines.adam(lr)


_OURS_ARGS = {"lr": "learning_rate", "momentum": "momentum", "damping": "damping", "adapt_damping": "adapt_damping",
              "inverse_period": "inverse_period", "inverse_warmup": "inverse_warmup",
              "damping_interval": "damping_interval", "ema": "ema_decay",
              "inverse": "inverse", "curvature_batch_size": "curvature_batch_size", "stats_period": "stats_period"}


def build_ours(cls, problem: Problem, seed: int, hp: dict, extra=()):
    """``cls(problem.net, ...)`` with ``hp`` renamed by ``_OURS_ARGS``; names in ``extra`` pass as is."""
    unknown = set(hp) - set(_OURS_ARGS) - set(extra)
    if unknown:
        raise ValueError(f"unknown hyper-parameters {sorted(unknown)}; known: {sorted(_OURS_ARGS) + list(extra)}")
    kwargs = {_OURS_ARGS.get(k, k): v for k, v in hp.items()}
    kwargs.setdefault("min_damping", 1e-5)
    kwargs.setdefault("max_damping", 1000.0)
    return cls(problem.net, l2_reg=problem.l2, seed=seed, donate_state=True, **kwargs)  # donated, as kfac-jax


def kfac(problem: Problem, seed: int = 0, **hp):
    """Our K-FAC (fused step). Unset ``lr`` / ``momentum``: the quadratic-model values;
    damping clipped to [1e-5, 1000] as in kfac-jax's example; ``seed`` seeds its target
    sampling. A step whose objective is not finite is undone by the optimizer (it raises λ)."""
    from classical.kfac import KFAC

    return build_ours(KFAC, problem, seed, hp)


def kfac_sub(problem: Problem, seed: int = 0, **hp):
    """``kfac`` with all curvature from the first ``KFAC_SUB_FRACTION`` of each batch."""
    return kfac(problem, seed, **{"curvature_batch_size": KFAC_SUB_FRACTION, **hp})


def foof(problem: Problem, seed: int = 0, **hp):
    """Our FOOF (the A factor only); needs ``lr`` (momentum 0.9 by default, fixed damping)."""
    from classical.foof import FOOF

    return build_ours(FOOF, problem, seed, hp)


def kfac_jax(problem: Problem, damping, adaptive=True, lr=None, momentum=None, damping_interval=5,
             inverse_period=5, burnin=5, ema=0.95, stats_period=1) -> Method:
    """kfac-jax's Optimizer with its MNIST-autoencoder example settings by default (adaptive
    lr/momentum/damping, curvature EMA 0.95, inverse period 5, damping interval 5, 5 burn-in
    steps, damping ∈ [1e-5, 1000], statistics every ``stats_period`` steps); ``adaptive=False``
    uses fixed ``lr`` / ``momentum`` / ``damping``. The burn-in (curvature only) runs on the first batches before step 0."""
    import kfac_jax as kj

    net = problem.net
    opt = kj.Optimizer(
        value_and_grad_func=jax.value_and_grad(lambda p, b: kfac_jax_loss(problem, p, b)), l2_reg=problem.l2,
        use_adaptive_learning_rate=adaptive, use_adaptive_momentum=adaptive, use_adaptive_damping=adaptive,
        initial_damping=damping, min_damping=1e-5, max_damping=1000.0, damping_adaptation_interval=damping_interval,
        damping_adaptation_decay=0.95, inverse_update_period=inverse_period, num_burnin_steps=burnin,
        curvature_ema=ema, curvature_update_period=stats_period, multi_device=False)
    fixed = {} if adaptive else {k: jnp.asarray(v, jnp.float32) for k, v in
                                 (("learning_rate", lr), ("momentum", momentum), ("damping", damping))}
    stream = {}

    def init(params, key, batch_at):
        stream["batch_at"] = batch_at
        split = split_params(net, params)
        return split, opt.init(split, key, batch_at(0))

    def step(state, batch, key, t):
        if t == 0 and burnin > 0:  # curvature-only burn-in on the first batches, then step on `batch`
            feed = iter([stream["batch_at"](k) for k in range(burnin)] + [batch])
            params, opt_state, stats = opt.step(*state, key, data_iterator=feed, global_step_int=t, **fixed)
        else:
            params, opt_state, stats = opt.step(*state, key, batch=batch, global_step_int=t, **fixed)
        return (params, opt_state), {"loss": stats["loss"]}

    return Method(init, step, lambda state: join_params(net, state[0]), warmup_steps=max(inverse_period,
                  damping_interval) + 2, donates=True, keyed=True)


_CACHE: dict = {}


def make_method(spec: MethodSpec, problem: Problem, hparams: dict, seed: int = 0) -> Method:
    """``spec`` at grid point ``hparams`` for ``problem`` as a ``Method`` (cached, so a resumed
    or repeated run reuses the compiled steps)."""
    key = (spec.name, spec.build, problem, json.dumps(hparams, sort_keys=True), seed)
    if key not in _CACHE:
        _CACHE[key] = as_method(spec.make(dict(hparams), problem=problem, seed=seed), problem.loss)
    return _CACHE[key]


def float32_mode():
    """Context with ``jax_enable_x64`` off for the float32 nets (kfac-jax's factor updates fail
    under x64): ``jax.enable_x64(False)`` where JAX has it (≥ 0.8), else
    ``jax.experimental.disable_x64()`` (jax 0.7.1, the pinned version)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(False)
    from jax.experimental import disable_x64

    return disable_x64()


def single_threaded_blas():
    """Context limiting the BLAS/LAPACK libraries (OpenBLAS) to one thread; XLA's own pool
    keeps both cores.

    jaxlib's CPU LAPACK kernels (Cholesky, LU, triangular solves) run on scipy's OpenBLAS.
    XLA executes independent ops of one step concurrently, so a K-FAC inverse refresh runs
    LAPACK calls beside XLA's matmuls; multi-threaded OpenBLAS then oversubscribes the
    cores and its spinning threads made that step 3–30× slower on this 2-core machine
    (measured: refresh step +0.7–19 s over a plain step; with one BLAS thread, +0.25 s,
    stable). Every study and benchmark contender (ours, kfac-jax, optax) runs under it.
    jaxlib loads scipy's OpenBLAS lazily, at the first linear-algebra call; it is loaded
    here first, or the limit would miss it.
    """
    import scipy.linalg.cython_lapack  # noqa: F401  (the OpenBLAS jaxlib's LAPACK kernels use)
    import threadpoolctl

    return threadpoolctl.threadpool_limits(1, user_api="blas")
