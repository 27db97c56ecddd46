"""Shared harness of the K-FAC studies: problems, optimizer adapters, resumable runs, tuning.

A *problem* is a model + loss on float32 data (the MNIST deep autoencoder, an MLP or a
small conv-net classifier). A *method* adapts one optimizer to the common interface
``init(params, key, batch) -> state`` / ``step(params, state, batch, key, t) ->
(params, state, loss)``: optax SGD with the Sutskever et al. (2013) momentum schedule,
optax Adam, our K-FAC and FOOF (``classical.kfac`` / ``classical.foof``; ``kfac-sub`` is our
K-FAC with its curvature from the first quarter of each batch), and
kfac-jax (DeepMind's reference, only if installed). ``train`` runs one (method,
hyper-parameters, seed) to a step budget with a tqdm bar, evaluating on fixed train /
test subsets, checkpointing atomically so that a killed run resumes where it stopped
and produces the same numbers (mini-batches and per-step keys are functions of
(seed, step)). ``tune`` gives every method the same number of grid points on seed 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import disable_x64
from tqdm.auto import tqdm

from classical import baselines, models
from classical.data import batch_indices
from classical.models import Network
from experiments.io import Checkpoint

# --------------------------------------------------------------------------- problems


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


# --------------------------------------------------------- kfac-jax parametrisation


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


# -------------------------------------------------------------------------- methods


@dataclass
class Method:
    """One optimizer behind a common interface. ``init(params, key, batch) -> (native
    params, state)`` takes the problem's parameters; ``step(params, state, batch, key,
    t) -> (params, state, loss)`` works on the method's native parameters and returns
    the mini-batch loss before the update; ``to_common`` maps native parameters back
    (for evaluation). ``warmup_steps`` steps from the initial state (results
    discarded) compile every branch of ``step`` before the clock starts.
    ``handles_nonfinite``: the optimizer rejects non-finite steps itself (the harness
    then stops only after ``MAX_BAD`` non-finite losses in a row). ``donates``: ``step``
    may reuse its inputs' buffers, so the harness cannot keep the last finite parameters."""

    name: str
    hparams: dict
    init: Callable
    step: Callable
    to_common: Callable = staticmethod(lambda p: p)
    warmup_steps: int = 2
    handles_nonfinite: bool = False
    donates: bool = False
    warmed: bool = False


def optax_step(problem, tx):
    """Jitted ``step(params, state, batch) -> (params, state, loss)`` for an optax transformation."""
    vg = jax.value_and_grad(problem.loss)

    @jax.jit
    def step(params, state, batch):
        loss, grads = vg(params, batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    return step


def _optax_method(name, problem, tx, hparams) -> Method:
    step = optax_step(problem, tx)
    return Method(name, hparams, lambda params, key, batch_at: (params, tx.init(params)), lambda p, s, b, key, t: step(p, s, b))


def _kfac_jax_method(problem, hp) -> Method:
    """kfac-jax's Optimizer with its MNIST-autoencoder example settings by default
    (adaptive lr/momentum/damping, curvature EMA 0.95, inverse period 5, damping
    interval 5, 5 burn-in steps, damping ∈ [1e-5, 1000]); ``adaptive=False`` uses
    fixed ``lr`` / ``momentum`` / ``damping``."""
    import kfac_jax

    net = problem.net
    adaptive = hp.get("adaptive", True)
    opt = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(lambda p, b: kfac_jax_loss(problem, p, b)),
        l2_reg=problem.l2,
        use_adaptive_learning_rate=adaptive,
        use_adaptive_momentum=adaptive,
        use_adaptive_damping=adaptive,
        initial_damping=hp["damping"],
        min_damping=1e-5,
        max_damping=1000.0,
        damping_adaptation_interval=hp.get("damping_interval", 5),
        damping_adaptation_decay=0.95,
        inverse_update_period=hp.get("inverse_period", 5),
        num_burnin_steps=hp.get("burnin", 5),
        curvature_ema=hp.get("ema", 0.95),
        multi_device=False,
    )
    fixed = {}
    if not adaptive:
        fixed = {k: jnp.asarray(hp[h], jnp.float32) for k, h in
                 (("learning_rate", "lr"), ("momentum", "momentum"), ("damping", "damping"))}

    burnin = hp.get("burnin", 5)
    stream = {}

    def init(params, key, batch_at):
        stream["batch_at"] = batch_at
        split = split_params(net, params)
        return split, opt.init(split, key, batch_at(0))

    def step(params, state, batch, key, t):
        if t == 0 and burnin > 0:  # curvature-only burn-in on the first batches, then step on `batch`
            feed = iter([stream["batch_at"](k) for k in range(burnin)] + [batch])
            params, state, stats = opt.step(params, state, key, data_iterator=feed, global_step_int=t, **fixed)
        else:
            params, state, stats = opt.step(params, state, key, batch=batch, global_step_int=t, **fixed)
        return params, state, stats["loss"]

    warmup = max(hp.get("inverse_period", 5), hp.get("damping_interval", 5)) + 2
    return Method("kfac-jax", hp, init, step, lambda split: join_params(net, split), warmup, donates=True)


_OURS_ARGS = {"lr": "learning_rate", "momentum": "momentum", "damping": "damping", "adapt_damping": "adapt_damping",
              "inverse_period": "inverse_period", "damping_interval": "damping_interval", "ema": "ema_decay",
              "inverse": "inverse", "curvature_batch_size": "curvature_batch_size", "stats_period": "stats_period"}


def _ours_method(name, problem, hp, seed) -> Method:
    """Our K-FAC (``classical.kfac.KFAC``) or FOOF (``classical.foof.FOOF``), fused step.

    For K-FAC unset ``lr`` / ``momentum`` mean the quadratic-model values (§7); FOOF
    needs ``lr`` (its momentum defaults to 0.9, its damping is fixed). Damping is clipped
    to [1e-5, 1000] as in kfac-jax's example. A step whose objective is non-finite is
    undone by the optimizer itself (it raises λ), so the harness keeps going."""
    if name.startswith("kfac"):
        from classical.kfac import KFAC as cls
    else:
        from classical.foof import FOOF as cls
    unknown = set(hp) - set(_OURS_ARGS)
    if unknown:
        raise ValueError(f"unknown {name} hyper-parameters {sorted(unknown)}; known: {sorted(_OURS_ARGS)}")
    kwargs = {_OURS_ARGS[k]: v for k, v in hp.items()}
    kwargs.setdefault("min_damping", 1e-5)
    kwargs.setdefault("max_damping", 1000.0)
    opt = cls(problem.net, l2_reg=problem.l2, seed=seed, donate_state=True, **kwargs)  # as kfac-jax does

    def step(params, state, batch, key, t):
        params, state, info = opt.step(params, state, batch)
        return params, state, info["objective"]

    return Method(name, hp, lambda params, key, batch_at: (params, opt.init(params)), step, handles_nonfinite=True,
                  donates=True)


_METHOD_CACHE: dict = {}


def make_method(name: str, problem: Problem, hparams: dict, seed: int = 0) -> Method:
    """Build method ``name`` (one of ``METHODS``) for ``problem`` with ``hparams``
    (``seed`` seeds our K-FAC's target sampling; kfac-jax gets per-step keys).
    Methods are cached, so a resumed or repeated run reuses the compiled steps."""
    key = (name, problem, json.dumps(hparams, sort_keys=True), seed)
    if key not in _METHOD_CACHE:
        _METHOD_CACHE[key] = _make_method(name, problem, hparams, seed)
    return _METHOD_CACHE[key]


def _make_method(name, problem, hparams, seed) -> Method:
    hp = dict(hparams)
    if name == "sgd":
        return _optax_method(name, problem, baselines.sgd_sutskever(hp["lr"], hp.get("mu_max", 0.99)), hp)
    if name == "adam":
        return _optax_method(name, problem, baselines.adam(hp["lr"]), hp)
    if name == "kfac-jax":
        return _kfac_jax_method(problem, hp)
    if name in ("kfac", "kfac-sub", "foof"):
        if name == "kfac-sub":
            hp.setdefault("curvature_batch_size", KFAC_SUB_FRACTION)
        return _ours_method(name, problem, hp, seed)
    raise ValueError(f"unknown method {name!r}; choose from {METHODS}")


METHODS = ("kfac", "kfac-sub", "foof", "sgd", "adam", "kfac-jax")
KFAC_SUB_FRACTION = 0.25  # kfac-sub: curvature from the first quarter of each batch


def kfac_jax_available() -> bool:
    try:
        import kfac_jax  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------- training


MAX_BAD = 20


def _run_id(method, hparams, seed, config) -> str:
    blob = json.dumps({"m": method, "hp": hparams, "cfg": config}, sort_keys=True, default=str)
    return f"{method}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}-s{seed}"


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


def train(*args, **kwargs) -> dict:
    """``_train`` with x64 off (the nets are float32 and kfac-jax's factor updates fail
    under ``jax_enable_x64``: float64 zeros meet float32 statistics in its ``cond``) and
    single-threaded BLAS (``single_threaded_blas``)."""
    with disable_x64(), single_threaded_blas():
        return _train(*args, **kwargs)


def _train(
    problem: Problem,
    method: str,
    hparams: dict,
    data,
    *,
    seed: int,
    steps: int,
    batch_size: int,
    eval_every: int,
    ckpt_dir=None,
    progress: bool = True,
    stop_below: float | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict:
    """Train one (method, hparams, seed); return its history (lists over eval points).

    ``data = {"train": (x, y), "eval_train": (x, y), "eval_test": (x, y)}`` (numpy
    float32 / int32). Wall time counts training steps only (each blocked until ready),
    accumulated across resumptions. A non-finite loss stops the run (``diverged``);
    so does, before ``steps``, an evaluated training loss ≤ ``stop_below`` (a target
    reached: the run is not continued on resumption either).
    ``on_step(t)`` is called after step t (a hook; raising in it simulates a kill).
    """
    if steps < 1 or eval_every < 1:
        raise ValueError(f"steps and eval_every must be >= 1, got {steps}, {eval_every}")
    x_tr, y_tr = data["train"]
    n = len(x_tr)
    config = {"batch": batch_size, "n_train": n, **problem.config}
    run_id = _run_id(method, hparams, seed, config)
    ckpt = Checkpoint(f"{ckpt_dir}/{run_id}.pkl") if ckpt_dir else None

    evaluate = jax.jit(problem.metrics)
    ev_tr = tuple(jnp.asarray(a) for a in data["eval_train"])
    ev_te = tuple(jnp.asarray(a) for a in data["eval_test"])
    state = ckpt.load() if ckpt else None
    m = make_method(method, problem, hparams, seed)
    key = jax.random.PRNGKey(seed)

    def batch_at(t):
        idx = batch_indices(n, batch_size, seed, t)
        return jnp.asarray(x_tr[idx]), jnp.asarray(y_tr[idx])

    def record(hist, t, wall, params, batch_losses):
        common = m.to_common(params)
        tr, te = evaluate(common, ev_tr), evaluate(common, ev_te)
        hist["step"].append(t)
        hist["wall_time"].append(wall)
        hist["train_loss"].append(float(tr["loss"]))
        hist["train_error"].append(float(tr["error"]))
        hist["test_loss"].append(float(te["loss"]))
        hist["test_error"].append(float(te["error"]))
        hist["batch_loss"].append(float(np.mean(batch_losses)) if batch_losses else float("nan"))

    if state is None:
        params, opt_state = m.init(problem.net.init(jax.random.fold_in(key, 0)), jax.random.fold_in(key, 1), batch_at)
        hist = {k: [] for k in ("step", "wall_time", "train_loss", "train_error", "test_loss", "test_error", "batch_loss")}
        record(hist, 0, 0.0, params, [])
        state = {"t": 0, "wall": 0.0, "params": params, "opt_state": opt_state, "hist": hist, "diverged": False}
    params, opt_state, hist = state["params"], state["opt_state"], state["hist"]
    t, wall, diverged = state["t"], state["wall"], state["diverged"]
    if not diverged and t < steps:
        params = jax.tree_util.tree_map(jnp.asarray, params)
        opt_state = jax.tree_util.tree_map(lambda a: jnp.asarray(a) if isinstance(a, np.ndarray) else a, opt_state)
        warm_start = time.perf_counter()
        warm_params, warm_state = m.init(problem.net.init(jax.random.fold_in(key, 0)), jax.random.fold_in(key, 1), batch_at)
        for k in range(m.warmup_steps):
            warm_params, warm_state, _ = m.step(warm_params, warm_state, batch_at(k), jax.random.fold_in(key, 3), k)
        jax.block_until_ready(warm_params)
        hist.setdefault("compile_time", []).append(time.perf_counter() - warm_start)
        m.warmed = True
    bar = tqdm(total=steps, initial=min(t, steps), desc=f"{method} s{seed}", leave=False, disable=not progress)
    losses, bad = [], 0
    good = params  # the last parameters with a finite mini-batch loss (kept unless the step donates)

    def reached():
        return stop_below is not None and hist["train_loss"][-1] <= stop_below

    while t < steps and not diverged and not reached():
        batch = batch_at(t)
        step_key = jax.random.fold_in(jax.random.fold_in(key, 2), t)
        start = time.perf_counter()
        new_params, new_state, loss = m.step(params, opt_state, batch, step_key, t)
        loss = float(jax.block_until_ready(loss))
        jax.block_until_ready(new_params)
        wall += time.perf_counter() - start
        t += 1
        bad = 0 if np.isfinite(loss) else bad + 1
        if not bad and not m.donates:
            good = params
        params, opt_state = new_params, new_state  # (the old ones may have been donated to the step)
        if bad and (not m.handles_nonfinite or bad >= MAX_BAD):
            diverged = True
            if not m.donates:  # the loss is at the step's input: evaluate the last finite point instead
                params = good
            tqdm.write(f"[{method} s{seed} {hparams}] non-finite loss at step {t}: run stopped (diverged)")
        elif not bad:
            losses.append(loss)
        bar.update(1)
        if t % eval_every == 0 or t == steps or diverged:  # (stop_below is checked here only)
            record(hist, t, wall, params, losses)
            losses = []
            bar.set_postfix(loss=f"{hist['train_loss'][-1]:.4g}")
            if ckpt:
                ckpt.save({"t": t, "wall": wall, "params": params, "opt_state": opt_state, "hist": hist, "diverged": diverged})
        if on_step:
            on_step(t)
    bar.close()
    return {"method": method, "hparams": hparams, "seed": seed, "diverged": diverged, "run_id": run_id, **hist}


def loss_at(run: dict, i: int) -> float:
    """Train-subset loss at evaluation ``i`` (inf if non-finite, or if ``i`` is the last
    evaluation of a diverged run)."""
    v = run["train_loss"][i]
    last = i in (-1, len(run["train_loss"]) - 1)
    return float("inf") if (run["diverged"] and last) or not np.isfinite(v) else float(v)


def final_loss(run: dict) -> float:
    """Last recorded train-subset loss (inf if the run diverged or ended non-finite)."""
    return loss_at(run, -1)


def _last_eval_at(run: dict, step: int) -> int:
    """Index of the last evaluation at or before ``step``."""
    return max(i for i, s in enumerate(run["step"]) if s <= step)


def tune(problem, method, grid, data, *, steps, batch_size, eval_every, ckpt_dir=None, progress=True, seed=0):
    """Run every grid point on ``seed`` for ``steps``; return (winner hparams, table).

    Each point is scored at step ``steps`` even when its checkpoint has since been continued
    (the winner's seed-``seed`` final run resumes from it), so a re-run study ranks alike."""
    table = []
    for hp in grid:
        run = train(problem, method, hp, data, seed=seed, steps=steps, batch_size=batch_size,
                    eval_every=eval_every, ckpt_dir=ckpt_dir, progress=progress)
        i = _last_eval_at(run, steps)
        table.append({"hparams": hp, "final_train_loss": loss_at(run, i), "wall_time": run["wall_time"][i]})
    best = min(range(len(table)), key=lambda i: table[i]["final_train_loss"])
    return grid[best], table


# ------------------------------------------------------------------------- studies


def first_reach(steps, walls, losses, target):
    """(step, wall time) of the first evaluation with loss ≤ target, or (None, None)."""
    for s, w, v in zip(steps, walls, losses):
        if np.isfinite(v) and v <= target:
            return int(s), float(w)
    return None, None


def _seed_mean(runs, key):
    n = min(len(r[key]) for r in runs)
    return np.mean([r[key][:n] for r in runs], axis=0), n


def adam_target(runs, horizon) -> tuple[float, int]:
    """(best seed-mean training loss within ``horizon`` steps, the horizon actually covered)."""
    mean, n = _seed_mean(runs, "train_loss")
    steps = np.asarray(runs[0]["step"][:n])
    return float(np.nanmin(mean[steps <= horizon])), int(min(horizon, steps[-1]))


def summarize(runs_by_method: dict, target_method="adam", horizon=2000, error_name="test_error") -> dict:
    """Per method: final losses / errors (mean, std over seeds), ms per step, and — for
    every seed — the step and wall time at which its training loss first reaches
    ``target_method``'s best seed-mean training loss within ``horizon`` steps (mean over
    the seeds that reach it; ``reached`` counts them)."""
    table = {}
    target = None
    if target_method in runs_by_method:
        target, horizon = adam_target(runs_by_method[target_method], horizon)
    for method, runs in runs_by_method.items():
        final = lambda k: np.array([r[k][-1] for r in runs], float)  # noqa: E731
        ms = [1e3 * r["wall_time"][-1] / max(r["step"][-1], 1) for r in runs]
        row = {
            "seeds": len(runs),
            "diverged": sum(r["diverged"] for r in runs),
            "steps": int(max(r["step"][-1] for r in runs)),
            "train_loss": float(np.mean(final("train_loss"))),
            "train_loss_std": float(np.std(final("train_loss"))),
            "test_loss": float(np.mean(final("test_loss"))),
            error_name: float(np.mean(final("test_error"))),
            error_name + "_std": float(np.std(final("test_error"))),
            "wall_time_s": float(np.mean([r["wall_time"][-1] for r in runs])),
            "ms_per_step": float(np.median(ms)),
        }
        if target is not None:
            hits = [first_reach(r["step"], r["wall_time"], r["train_loss"], target) for r in runs]
            got = [h for h in hits if h[0] is not None]
            row["reach_per_seed"] = [list(h) for h in hits]
            row["reached"] = len(got)
            row["reach_step"] = float(np.mean([h[0] for h in got])) if got else None
            row["reach_step_std"] = float(np.std([h[0] for h in got])) if got else None
            row["reach_wall_s"] = float(np.mean([h[1] for h in got])) if got else None
            row["reach_wall_s_std"] = float(np.std([h[1] for h in got])) if got else None
        table[method] = row
    return {"target_method": target_method, "target_horizon": horizon, "target_train_loss": target, "methods": table}


def markdown_table(summary: dict, error_name="test_error") -> str:
    """The summary as a Markdown table (means ± std over seeds)."""
    tgt = summary["target_train_loss"]
    head = (f"| method | steps | train loss | {error_name} | wall s | ms/step | "
            f"steps to {summary['target_method']}'s best | wall s to it |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for m, r in summary["methods"].items():
        if tgt is None:
            reach = ["—", "—"]
        elif not r["reached"]:
            reach = [f"not reached (0/{r['seeds']})", "—"]
        else:
            part = "" if r["reached"] == r["seeds"] else f" ({r['reached']}/{r['seeds']} seeds)"
            reach = [f"{r['reach_step']:.0f} ± {r['reach_step_std']:.0f}{part}",
                     f"{r['reach_wall_s']:.1f} ± {r['reach_wall_s_std']:.1f}"]
        lines.append(f"| {m} | {r['steps']} | {r['train_loss']:.4g} ± {r['train_loss_std']:.2g} | "
                     f"{r[error_name]:.4g} ± {r[error_name + '_std']:.2g} | {r['wall_time_s']:.1f} | "
                     f"{r['ms_per_step']:.0f} | {reach[0]} | {reach[1]} |")
    if tgt is not None:
        lines.append(f"\ntarget: {summary['target_method']}'s best seed-mean training loss within "
                     f"{summary['target_horizon']} steps = {tgt:.4g}")
    return "\n".join(lines)


def study_settings_text(results) -> str:
    """The study's budget and tuning grids as Markdown lines."""
    lines = [f"- {results['n_train']} training images, batch {results['batch_size']}, up to {results['steps']} steps, "
             f"{results['seeds']} seed(s); curves on {results['n_eval']} train / test images",
             f"- tuning: every grid point {results['tune_steps']} steps on seed 0, ranked by training loss"
             + ("; non-Adam runs stop at Adam's best loss" if results["stop_at_target"] else "")]
    for m, t in results["tuning"].items():
        lines.append(f"- {m}: grid {t['grid']} → {t['winner']}")
    return "\n".join(lines)


def run_study(problem, data, *, methods, grids, seeds, steps, tune_steps, batch_size, eval_every, out_dir,
              progress=True, error_label="test error", target_horizon=2000, stop_at_target=False, title="",
              settings=None):
    """Tune every method on seed 0 (same number of grid points each; tuning runs are
    checkpoints the seed-0 final run continues from), train the winners on every seed,
    write ``results.json`` and ``curves.png`` to ``out_dir``; return the results dict.

    Adam runs first; with ``stop_at_target`` every other method's final runs stop at the
    first evaluation at or below Adam's best seed-mean training loss within
    ``target_horizon`` steps (or at ``steps``). ``settings`` (e.g. the CLI arguments) are
    recorded in the results."""
    from experiments.io import atomic_write_json, atomic_write_text
    from experiments.plotting import save_panels

    ckpt_dir = f"{out_dir}/ckpt"
    tuning, runs = {}, {}
    target = None
    methods = sorted(methods, key=lambda m: m != "adam")  # stable: Adam first, then as given
    for method in methods:
        grid = grids[method]
        if tune_steps > 0 and len(grid) > 1:
            best, table = tune(problem, method, grid, data, steps=tune_steps, batch_size=batch_size,
                               eval_every=eval_every, ckpt_dir=ckpt_dir, progress=progress)
        else:
            best, table = grid[len(grid) // 2], []
        tuning[method] = {"grid": grid, "table": table, "winner": best}
        stop = target if stop_at_target and method != "adam" else None
        runs[method] = [train(problem, method, best, data, seed=s, steps=steps, batch_size=batch_size,
                              eval_every=eval_every, ckpt_dir=ckpt_dir, progress=progress, stop_below=stop)
                        for s in range(seeds)]
        if method == "adam":
            target, _ = adam_target(runs["adam"], target_horizon)
        r = runs[method]
        tqdm.write(f"{method}: winner {best}, final train loss "
                   f"{np.mean([x['train_loss'][-1] for x in r]):.4g}, wall {np.mean([x['wall_time'][-1] for x in r]):.1f} s")
    summary = summarize(runs, horizon=target_horizon)
    results = {"problem": problem.config, "steps": steps, "seeds": seeds, "batch_size": batch_size,
               "tune_steps": tune_steps, "n_train": len(data["train"][0]), "n_eval": len(data["eval_test"][0]),
               "stop_at_target": stop_at_target, "settings": settings or {},
               "tuning": tuning, "summary": summary, "runs": runs}
    atomic_write_json(f"{out_dir}/results.json", results)
    atomic_write_text(f"{out_dir}/summary.md", f"# {title}\n\n{study_settings_text(results)}\n\n"
                      f"{markdown_table(summary)}\n")
    curves = lambda k: {m: [np.asarray(x[k]) for x in rs] for m, rs in runs.items()}  # noqa: E731
    steps_x = {m: [np.asarray(x["step"]) for x in rs] for m, rs in runs.items()}
    wall_x = curves("wall_time")
    panels = [
        dict(curves=curves("train_loss"), xs=steps_x, xlabel="step", ylabel="training loss", logy=True),
        dict(curves=curves("test_error"), xs=steps_x, xlabel="step", ylabel=error_label, logy=True),
        dict(curves=curves("train_loss"), xs=wall_x, xlabel="wall time (s)", ylabel="training loss", logy=True),
        dict(curves=curves("test_error"), xs=wall_x, xlabel="wall time (s)", ylabel=error_label, logy=True),
    ]
    save_panels(f"{out_dir}/curves.png", panels, suptitle=title)
    return results


# ------------------------------------------------------------------------ command line


def study_parser(prog, doc, *, defaults, full) -> argparse.ArgumentParser:
    """The argument parser shared by the K-FAC studies; ``defaults`` are the quick run's
    values, ``full`` those ``--full`` substitutes for arguments left at their default."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma-separated subset of %(default)s (kfac-jax is skipped when not installed)")
    for name, kind, text in (("steps", int, "training steps per run"), ("seeds", int, "seeds per method"),
                             ("batch-size", int, "mini-batch size"), ("train-size", int, "training images used"),
                             ("eval-size", int, "train / test images the curves are measured on"),
                             ("eval-every", int, "steps between evaluations"),
                             ("tune-steps", int, "steps per grid point on seed 0 (0: no tuning, middle grid point)")):
        ap.add_argument(f"--{name}", type=kind, default=defaults[name.replace("-", "_")], help=text)
    ap.add_argument("--stop-at-target", action="store_true", default=defaults.get("stop_at_target", False),
                    help="stop each non-Adam run once it reaches Adam's best training loss")
    ap.add_argument("--full", action="store_true", help="the full study: " + ", ".join(f"{k}={v}" for k, v in full.items()))
    ap.add_argument("--out", default=None, help="output directory")
    ap.add_argument("--fresh", action="store_true", help="delete this study's checkpoints first")
    ap.add_argument("--no-progress", action="store_true")
    ap.set_defaults(_full=full)
    return ap


def parse_study_args(ap: argparse.ArgumentParser, argv=None):
    """Parse, apply ``--full``, resolve the methods and validate; returns the namespace
    (``args.methods`` becomes a list)."""
    args = ap.parse_args(argv)
    full = args._full
    del args._full
    if args.full:
        for k, v in full.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    args.methods = select_methods(args.methods)
    for name in ("steps", "seeds", "batch_size", "train_size", "eval_size", "eval_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.tune_steps < 0:
        raise ValueError(f"--tune-steps must be >= 0, got {args.tune_steps}")
    if args.batch_size > args.train_size:
        raise ValueError(f"--batch-size {args.batch_size} exceeds --train-size {args.train_size}")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    return args


def select_methods(spec: str) -> list[str]:
    """Comma-separated method names; kfac-jax is dropped (with a note) when not installed."""
    methods = [m.strip() for m in spec.split(",") if m.strip()]
    if "kfac-jax" in methods and not kfac_jax_available():
        print("kfac-jax is not installed (pip install -e '.[ref]'): skipping it")
        methods.remove("kfac-jax")
    return methods


def study_mnist(args):
    """MNIST (``classical.data.load_mnist``) after checking the requested subset sizes."""
    from classical.data import load_mnist

    mnist = load_mnist()
    if args.train_size > len(mnist.x_train) or args.eval_size > len(mnist.x_test):
        raise ValueError(f"MNIST has {len(mnist.x_train)} train / {len(mnist.x_test)} test images")
    return mnist


def study_out(out: str, fresh: bool) -> str:
    """``out``, with its checkpoints deleted first when ``fresh``."""
    if fresh:
        shutil.rmtree(f"{out}/ckpt", ignore_errors=True)
    return out


def print_study(res, out):
    """The tuning tables and the summary table of a finished study."""
    for m, t in res["tuning"].items():
        if t["table"]:
            grid = ", ".join(f"{row['hparams']}: {row['final_train_loss']:.4g}" for row in t["table"])
            print(f"tuning {m}: {grid} -> {t['winner']}")
    print(markdown_table(res["summary"], "test_error"))
    print(f"wrote {out}/results.json and {out}/curves.png\n")
