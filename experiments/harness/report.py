"""Tables and plots: Markdown tables, learning curves per method (mean ± spread over seeds).

Curves everywhere are ``{method: [per-seed 1-D array, ...]}`` and, optionally, ``xs`` of
the same shape (e.g. per-seed wall-clock times). Seeds sharing one x axis (steps) are
truncated to the shortest run; seeds with their own x (wall time) are linearly
interpolated onto a common grid over the interval every seed covers, so the band is a
statistic over seeds at equal x, never a mix of different x values.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.harness.store import atomic_savefig  # noqa: E402


def fmt(x, spec: str) -> str:
    """``format(x, spec)``, or "—" for a missing value (None)."""
    return "—" if x is None else format(x, spec)


def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def reached_tag(reached: str) -> str:
    """" (k/n)" when only k of n seeds reached a target, else ""."""
    k, n = reached.split("/")
    return "" if k == n else f" ({reached})"


def seed_band(ys, xs=None, num: int = 200, spread: str = "std"):
    """``(x, mean, lo, hi)`` of per-seed curves ``ys`` (list of 1-D arrays).

    ``spread`` is ``"std"`` (mean ± one standard deviation) or ``"minmax"`` (the
    envelope over seeds). ``xs=None`` means x = 0, 1, 2, ... shared by all seeds.
    Non-finite points are dropped seed by seed before interpolation.
    """
    if spread not in ("std", "minmax"):
        raise ValueError(f"spread must be 'std' or 'minmax', got {spread!r}")
    if not ys:
        raise ValueError("seed_band needs at least one curve")
    ys = [np.asarray(y, dtype=float) for y in ys]
    if xs is None:
        n = min(len(y) for y in ys)
        x, stack = np.arange(n, dtype=float), np.stack([y[:n] for y in ys])
    else:
        if len(xs) != len(ys):
            raise ValueError(f"{len(xs)} x arrays for {len(ys)} curves")
        pairs = []
        for x, y in zip(xs, ys):
            x = np.asarray(x, dtype=float)
            if x.shape != y.shape:
                raise ValueError(f"x of shape {x.shape} does not match y of shape {y.shape}")
            ok = np.isfinite(x) & np.isfinite(y)
            pairs.append((x[ok], y[ok]))
        if any(len(x) == 0 for x, _ in pairs):
            raise ValueError("a seed has no finite points")
        lo_x, hi_x = max(x.min() for x, _ in pairs), min(x.max() for x, _ in pairs)
        x = np.linspace(lo_x, hi_x, num) if hi_x > lo_x else np.array([lo_x])
        stack = np.stack([np.interp(x, px, py) for px, py in pairs])
    mean = stack.mean(0)
    if spread == "std":
        sd = stack.std(0)
        return x, mean, mean - sd, mean + sd
    return x, mean, stack.min(0), stack.max(0)


def plot_curves(ax, curves: dict, xs: dict | None = None, *, spread="std", logy=False, xlabel="", ylabel="", title=""):
    """Draw one line (mean over seeds) and a shaded band per method on ``ax``."""
    for i, (method, ys) in enumerate(curves.items()):
        x, mean, lo, hi = seed_band(ys, None if xs is None else xs[method], spread=spread)
        color = f"C{i % 10}"
        ax.plot(x, mean, color=color, label=f"{method} (n={len(ys)})")
        if len(ys) > 1:
            ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def save_panels(path, panels: list[dict], ncols: int = 2, suptitle: str = ""):
    """One figure of several ``plot_curves`` panels (each a dict of its keyword args
    plus ``curves``), written atomically to ``path``; returns the path."""
    if not panels:
        raise ValueError("save_panels needs at least one panel")
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4 * nrows), squeeze=False)
    for ax, panel in zip(axes.ravel(), panels):
        plot_curves(ax, **panel)
    for ax in axes.ravel()[len(panels) :]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return atomic_savefig(fig, path)
