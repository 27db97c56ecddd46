"""The one tuner: every method gets the same budget (its grid, one seed, one step count).

``tune(grid, run, score)`` runs every grid point (``run(point)``: in practice a resumable
cell or a checkpointed run, so a re-run study re-scores without training again) and
returns the grid, the scores and the winner (lowest score; the first on ties; the first
point when no score is finite), which studies store beside their results.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def tune(grid, run: Callable, score: Callable, *, progress: Callable[[object], None] | None = None) -> dict:
    """``{"grid": [...], "scores": [...], "winner": point, "results": [run(point) ...]}``."""
    grid = list(grid)
    if not grid:
        raise ValueError("a tuning grid needs at least one point")
    results, scores = [], []
    for point in grid:
        if progress is not None:
            progress(point)
        results.append(run(point))
        scores.append(float(score(results[-1])))
    finite = [s if np.isfinite(s) else np.inf for s in scores]
    best = min(range(len(grid)), key=finite.__getitem__)
    return {"grid": grid, "scores": scores, "winner": grid[best], "results": results}
