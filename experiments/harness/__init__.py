"""The studies' harness: one method shape, one registry, one loop, one tuner, one report.

Both worlds (quantum: QHBMs with QPNGD, QPMD, ...; classical: nets with K-FAC, FOOF, optax)
run through these pieces; a study is a config, a registry and a ``Study`` for the CLI.

**Methods** (``methods``)
  ``Method(init, step, params, warmup_steps=2, tolerate=0, donates=False, keyed=False)``:
  ``init(params, key, batch_at) → state``; ``step(state, batch, key, t) → (state, info)``
  with ``info["loss"]`` the loss at the step's input (optional ``info["ok"]``,
  ``info["grad_evals"]``); ``params(state)`` → the problem's parameters.
  ``MethodSpec(name, label, build, grid, short_grid=None, settings={}, requires=None)`` is one
  registry entry; ``build`` gets a grid point (a number is passed first — the learning rate —,
  a dict as keywords), the fixed ``settings`` and whichever of the study's context
  (``problem``, ``model``, ``seed``) it names, and returns an optax
  ``GradientTransformation``, a K-FAC-shaped object (``init(params)``,
  ``step(params, state, batch) → (params, state, info)`` with ``info["objective"]``) or a
  ``Method``; ``as_method(built, loss)`` adapts it. ``Registry(*specs)`` keeps them in order:
  ``registry.add(spec)``, ``registry[name]``, ``registry.select(names)``,
  ``registry.replace(name, grid=...)``, ``registry.label(name)``.

  A new classical method is one entry in a study's registry, e.g.::

      MethodSpec("shampoo", "Shampoo", build=lambda lr, **kw: classical.shampoo(lr, **kw),
                 grid=({"lr": 1e-3}, {"lr": 3e-3}, {"lr": 1e-2}, {"lr": 3e-2}))

**Loop** (``loop.train``)
  ``train(method, params0, steps, key=, batch_at=, evaluate=, eval_at=, checkpoint=, stop=,
  progress=)`` on ``qgeom.optimize.runner.run_steps``: compile outside the clocks, wall and
  CPU clocks, gradient-evaluation counts, non-finite policy (stop at the last finite point,
  say so in ``status``), evaluations, atomic checkpoints and exact resume.

**Tuning** (``tune.tune(grid, run, score)``), **analysis** (``analysis``: ``first_below``,
``first_reach``, ``reach_summary`` with ERT, ``floor_estimate``, ``mean_std``, ``fit_power_law``), **report**
(``report``: ``markdown_table``, ``plot_curves``, ``save_panels``), **storage** (``store``:
atomic writes, ``Checkpoint``, ``Cells``/``cell_key``, ``results_dir``), **CLI** (``cli``:
``Study``, ``main``, ``quick``). A new command is one line in ``experiments/cli.py``.
"""

from experiments.harness.loop import train
from experiments.harness.methods import (
           MAX_BAD,
           Method,
           MethodSpec,
           Registry,
           as_method,
           optax_method,
)
from experiments.harness.store import Cells, Checkpoint, cell_key, results_dir
from experiments.harness.tune import tune

__all__ = ["MAX_BAD", "Cells", "Checkpoint", "Method", "MethodSpec", "Registry", "as_method", "cell_key",
           "optax_method", "results_dir", "train", "tune"]
