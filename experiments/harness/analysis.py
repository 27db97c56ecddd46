"""Analysis of finished runs: first crossing of a target, cost to it, ERT, floors, seed statistics.

A *trace* is a dict of equal-length arrays over iterations (a curve such as the divergence
``D`` and cumulative costs such as ``time``, ``cpu_time``, ``grad_evals``); NaN marks
iterations a run did not reach (a stop).
"""

from __future__ import annotations

import numpy as np
import scipy.stats

# the cost columns of the quantum traces: name in the summaries → array in the trace (None: the index)
COSTS = {"iterations": None, "grad_evals": "grad_evals", "wall_s": "time", "cpu_s": "cpu_time"}


def first_below(values, threshold) -> int | None:
    """Index of the first value ≤ ``threshold`` (NaN never counts), or None."""
    hit = np.nonzero(np.nan_to_num(np.asarray(values, dtype=float), nan=np.inf) <= threshold)[0]
    return None if hit.size == 0 else int(hit[0])


def mean_std(values) -> tuple[float | None, float | None]:
    """(mean, std) over seeds as floats, or (None, None) for no values."""
    values = [v for v in values if v is not None]
    return (float(np.mean(values)), float(np.std(values))) if values else (None, None)


def first_reach(trace: dict, threshold: float, curve: str = "D", costs: dict = COSTS) -> dict | None:
    """The costs (``costs``: name → trace array, None for the index) at the first iteration
    whose ``curve`` ≤ threshold, or None if never."""
    k = first_below(trace[curve], threshold)
    if k is None:
        return None
    return {name: k if key is None else float(trace[key][k]) for name, key in costs.items()}


def reach_summary(traces: list[dict], threshold: float, curve: str = "D", costs: dict = COSTS) -> dict:
    """Cost to ``curve`` ≤ threshold: the mean (and std) over the seeds that reached it, how many
    did, and the expected running time with restarts (``ert_*``; Hansen et al., COCO: (Σ cost
    to the hit over successful runs + Σ whole cost of the failed runs) / number of successes),
    which charges a method for the seeds that never get there."""
    hits = [first_reach(t, threshold, curve, costs) for t in traces]
    ok = [h for h in hits if h is not None]
    out = {"threshold": threshold, "reached": f"{len(ok)}/{len(hits)}"}
    for name in costs:
        out[name], out[name + "_std"] = mean_std([h[name] for h in ok])
    for name in ("wall_s", "cpu_s", "iterations"):
        if name not in costs:
            continue
        key = costs[name]
        spent = [h[name] if h is not None else (np.count_nonzero(np.isfinite(t[curve])) - 1 if key is None
                                                else float(np.nanmax(t[key])))
                 for h, t in zip(hits, traces)]
        out["ert_" + name] = float(np.sum(spent) / len(ok)) if ok else None
    return out


def floor_estimate(runs: dict, curve: str = "D") -> float:
    """The lowest value of ``curve`` any run of any method reached (an ansatz's floor D*)."""
    return float(min(np.nanmin(t[curve]) for traces in runs.values() for t in traces))


def per_iteration(trace: dict, key: str) -> float:
    """The cumulative ``key`` at the last finite iteration divided by the iterations run."""
    return float(np.nanmax(trace[key]) / max(1, np.count_nonzero(np.isfinite(trace[key])) - 1))


def fit_power_law(x, y):
    """Fit y ∝ x^s by least squares of log y on log x: slope s, its 95 % t confidence interval
    (n − 2 degrees of freedom) and the prefactor. Points with y ≤ 0 or None are dropped; fewer
    than 3 points give ``slope=None``."""
    keep = [(a, b) for a, b in zip(x, y) if b is not None and np.isfinite(b) and b > 0]
    if len(keep) < 3:
        return {"slope": None, "ci95": None, "points": len(keep)}
    lx, ly = np.log([a for a, _ in keep]), np.log([b for _, b in keep])
    res = scipy.stats.linregress(lx, ly)
    half = scipy.stats.t.ppf(0.975, len(keep) - 2) * res.stderr
    return {"slope": float(res.slope), "ci95": [float(res.slope - half), float(res.slope + half)],
            "prefactor": float(np.exp(res.intercept)), "points": len(keep)}
