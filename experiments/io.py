"""Results I/O for the studies: atomic JSON/PNG writes and resumable checkpoints.

Every file is written to a temporary sibling and moved into place with ``os.replace``,
so an interrupted run never leaves a half-written result behind.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

RESULTS = Path(os.environ.get("QGEOM_RESULTS", "results"))


def results_dir(*parts: str) -> Path:
    """``results/<parts...>``, created if missing (root overridable by ``$QGEOM_RESULTS``)."""
    path = RESULTS.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _to_builtin(obj: Any):
    """JSON-safe copy: arrays become lists, NaN/Inf become None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_builtin(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return _to_builtin(np.asarray(obj).tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return _atomic_write(Path(path), lambda fh: fh.write(text.encode()))


def atomic_write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (NaN/Inf become null)."""
    return atomic_write_text(path, json.dumps(_to_builtin(obj), indent=2, allow_nan=False))


def atomic_savefig(fig, path, **kwargs) -> Path:
    """``fig.savefig`` to ``path`` atomically (format from the suffix), then close ``fig``
    (also when saving fails)."""
    import matplotlib.pyplot as plt

    fmt = Path(path).suffix.lstrip(".") or "png"
    kwargs.setdefault("dpi", 130)
    kwargs.setdefault("bbox_inches", "tight")
    try:
        return _atomic_write(Path(path), lambda fh: fig.savefig(fh, format=fmt, **kwargs))
    finally:
        plt.close(fig)


class Checkpoint:
    """A resumable run's state in one pickle file, replaced atomically on every save.

    ``load()`` returns the last saved state (a dict of numpy-converted pytrees) or
    ``None``; ``save(state)`` overwrites it. Pass ``--fresh`` style flags by calling
    ``clear()`` before the run.
    """

    def __init__(self, path):
        self.path = Path(path)

    def load(self):
        if not self.path.exists():
            return None
        with open(self.path, "rb") as fh:
            return pickle.load(fh)

    def save(self, state: dict) -> None:
        state = jax.tree_util.tree_map(lambda x: np.asarray(x) if isinstance(x, jax.Array) else x, state)
        _atomic_write(self.path, lambda fh: pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
