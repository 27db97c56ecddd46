"""Methods: the one ``Method`` shape the loop drives, registry entries and adapters.

A **Method** is ``init(params, key, batch_at) → state``, ``step(state, batch, key, t) →
(state, info)`` (``info["loss"]``: the loss at the step's input; optional ``info["ok"]``,
``info["grad_evals"]``) and ``params(state)`` (the problem's parameters, for evaluation),
with ``warmup_steps`` (steps that compile every branch), ``tolerate`` (non-finite steps in a
row the optimizer undoes itself), ``donates`` (the step reuses its input's buffers) and
``keyed`` (the step uses its per-step random key; else it gets None).

A **MethodSpec** is one registry entry: ``name``, ``label``, ``build`` (called with a grid
point and the fixed ``settings``), ``grid`` (and a ``short_grid``), ``settings``. ``build``
may return an optax ``GradientTransformation``, an object with K-FAC's shape
(``init(params)``, ``step(params, state, batch) → (params, state, info)`` with
``info["objective"]``) or a ready ``Method``; ``as_method`` adapts the first two.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import jax
import optax

MAX_BAD = 20  # a self-correcting optimizer's run stops after this many non-finite steps in a row


@dataclasses.dataclass
class Method:
    """One optimizer in the loop's shape (module docstring)."""

    init: Callable
    step: Callable
    params: Callable = staticmethod(lambda state: state[0])
    warmup_steps: int = 2
    tolerate: int = 0
    donates: bool = False
    keyed: bool = False


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registry entry.

    ``build(point, **settings, **context)``: a grid point that is a number is passed first
    (the learning rate); a dict is passed as keywords. ``context`` holds what the study
    offers (``problem``, ``model``, ``seed``, ...); ``build`` receives those it names as
    parameters. ``grid``: the tuning grid (every method of a study gets the same number of
    points); ``short_grid``: the quick study's (default ``grid``). ``settings``: fixed
    keyword arguments, recorded in cell keys and summaries. ``requires``: a module that must
    be importable, else the method is skipped with a note (e.g. ``kfac_jax``).
    """

    name: str
    label: str
    build: Callable[..., Any]
    grid: tuple = ()
    short_grid: tuple | None = None
    settings: dict = dataclasses.field(default_factory=dict)
    requires: str | None = None

    def grid_for(self, short: bool = False) -> tuple:
        return tuple(self.short_grid if short and self.short_grid is not None else self.grid)

    def make(self, point, **context):
        """``build`` at one grid point (see the class docstring)."""
        names = inspect.signature(self.build).parameters
        ctx = {k: v for k, v in context.items() if k in names and names[k].kind != inspect.Parameter.VAR_KEYWORD}
        if isinstance(point, dict):
            return self.build(**self.settings, **point, **ctx)
        return self.build(point, **self.settings, **ctx)

    @property
    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None


class Registry:
    """Method specs by name, in the order added (tables and plots keep it)."""

    def __init__(self, *specs: MethodSpec):
        self._specs: dict[str, MethodSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: MethodSpec) -> MethodSpec:
        if spec.name in self._specs:
            raise ValueError(f"method {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        return spec

    def __getitem__(self, name: str) -> MethodSpec:
        if name not in self._specs:
            raise ValueError(f"unknown method {name!r}; known: {list(self._specs)}")
        return self._specs[name]

    def __contains__(self, name) -> bool:
        return name in self._specs

    def __iter__(self):
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def label(self, name: str) -> str:
        return self._specs[name].label if name in self._specs else name

    def select(self, names: Iterable[str] | str | None = None, *, skip_unavailable: bool = True) -> list[str]:
        """Validated method names (all when ``None``; a comma-separated string is split);
        methods whose ``requires`` is missing are dropped with a note."""
        if names is None:
            names = list(self._specs)
        elif isinstance(names, str):
            names = [m.strip() for m in names.split(",") if m.strip()]
        names = list(names)
        bad = [m for m in names if m not in self._specs]
        if bad or not names:
            raise ValueError(f"unknown methods {bad}; choose from {list(self._specs)}")
        out = []
        for m in names:
            if skip_unavailable and not self._specs[m].available:
                print(f"{m} needs {self._specs[m].requires}, which is not installed (pip install -e '.[ref]'): "
                      "skipping it")
            else:
                out.append(m)
        return out

    def replace(self, name: str, **changes) -> Registry:
        """A copy with one entry changed (e.g. another study's grid)."""
        out = Registry(*self._specs.values())
        out._specs[name] = dataclasses.replace(self[name], **changes)
        return out


# ----------------------------------------------------------------------------- adapters


def optax_method(loss: Callable, tx, *, warmup_steps: int = 2, check_finite: bool = True) -> Method:
    """A ``Method`` for an optax transformation: state ``(params, opt_state)``; the step is
    ``qgeom.optimize.make_step(loss, tx)`` (``loss(params, batch)``; value passed to
    ``update`` as an extra argument; ``ok`` checks the loss, gradient and update).
    ``check_finite=False``: the bare step (value, gradient, update; the loop then checks
    the loss only), e.g. to time optax alone in a benchmark."""
    from qgeom.optimize import make_step

    if not isinstance(tx, optax.GradientTransformationExtraArgs):
        tx = optax.with_extra_args_support(tx)
    evals = 1 + int(getattr(tx.update, "extra_grad_evals", 0))
    if check_finite:
        jitted = make_step(loss, tx)
    else:
        @jax.jit
        def jitted(params, opt_state, batch):
            value, grads = jax.value_and_grad(loss)(params, batch)
            updates, opt_state = tx.update(grads, opt_state, params, value=value)
            return optax.apply_updates(params, updates), opt_state, value, True

    def step(state, batch, key, t):
        new, opt_state, value, ok = jitted(*state, batch)
        return (new, opt_state), {"loss": value, "ok": ok, "grad_evals": evals}

    return Method(lambda params, key, batch_at: (params, tx.init(params)), step, warmup_steps=warmup_steps)


def kfac_shaped_method(opt, *, to_common: Callable | None = None) -> Method:
    """A ``Method`` for an optimizer with K-FAC's shape: ``init(params)``, ``step(params, state,
    batch) → (params, state, info)`` with ``info["objective"]`` (the loss at the input).
    It rejects non-finite steps itself (``tolerate = MAX_BAD − 1``); ``donates`` follows its
    ``donate_state`` attribute."""

    def step(state, batch, key, t):
        params, opt_state, info = opt.step(*state, batch)
        return (params, opt_state), {"loss": info["objective"]}

    return Method(lambda params, key, batch_at: (params, opt.init(params)), step,
                  params=(lambda s: s[0]) if to_common is None else (lambda s: to_common(s[0])),
                  tolerate=MAX_BAD - 1, donates=bool(getattr(opt, "donate_state", False)))


def as_method(built, loss: Callable | None = None) -> Method:
    """Adapt what a ``MethodSpec.build`` returned: a ``Method`` as is, an optax
    transformation by ``optax_method(loss, ...)``, a K-FAC-shaped object by
    ``kfac_shaped_method``."""
    if isinstance(built, Method):
        return built
    if isinstance(built, optax.GradientTransformation):
        if loss is None:
            raise ValueError("an optax method needs the problem's loss")
        return optax_method(loss, built)
    if callable(getattr(built, "init", None)) and callable(getattr(built, "step", None)):
        return kfac_shaped_method(built)
    raise ValueError(f"cannot adapt {type(built).__name__} to a Method: expected an optax GradientTransformation, "
                     "an object with init(params) and step(params, state, batch), or a Method")


def tree_copy(tree):
    """A copy of every array leaf (a warm-up must not consume buffers a donating step reuses)."""
    return jax.tree_util.tree_map(lambda x: x.copy() if hasattr(x, "copy") else x, tree)
