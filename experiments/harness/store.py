"""Results on disk: atomic JSON / text / PNG writes, resumable checkpoints and result cells.

Every file is written to a temporary sibling and moved into place with ``os.replace``, so
an interrupted run never leaves a half-written result behind. ``Checkpoint`` holds one
run's state (a pickle replaced atomically on every save); ``Cells`` stores finished
results under stable keys (``cell_key``), so a killed study resumes where it stopped and a
later study with overlapping settings reuses finished cells.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
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


def checkpoint_dir(outdir, name: str = "checkpoints", fresh: bool = False) -> Path:
    """``outdir/name``, created; emptied first when ``fresh`` (a study's ``--fresh``)."""
    path = Path(outdir) / name
    if fresh:
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def enable_compile_cache(path=None) -> None:
    """Persistent XLA compilation cache (default ``results/.jax_cache``) unless one is set:
    a resumed or repeated study does not pay the compile again."""
    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(path or results_dir(".jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


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


def to_builtin(obj: Any):
    """JSON-safe copy: arrays become lists, NaN/Inf become None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_builtin(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return to_builtin(np.asarray(obj).tolist())
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
    return atomic_write_text(path, json.dumps(to_builtin(obj), indent=2, allow_nan=False))


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

    ``load()`` returns the last saved state (numpy-converted pytrees) or ``None``;
    ``save(state)`` overwrites it; ``clear()`` deletes it (a ``--fresh`` run).
    """

    def __init__(self, path):
        self.path = Path(path)

    def load(self):
        if not self.path.exists():
            return None
        with open(self.path, "rb") as fh:
            return pickle.load(fh)

    def save(self, state) -> None:
        state = jax.tree_util.tree_map(lambda x: np.asarray(x) if isinstance(x, jax.Array) else x, state)
        _atomic_write(self.path, lambda fh: pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def cell_key(**fields) -> str:
    """Stable key of one cell from its defining fields (a hash prefix, then the fields as JSON)."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16] + ":" + text


class Cells:
    """Finished results under their ``cell_key`` in one ``Checkpoint``, saved after every cell.

    ``run(key, compute)`` returns the stored result or computes, stores and returns it.
    ``stop_after`` (tests) raises ``KeyboardInterrupt`` before the next new cell once that
    many were computed: a simulated kill.
    """

    def __init__(self, checkpoint: Checkpoint, fresh: bool = False, stop_after: int | None = None):
        self.checkpoint = checkpoint
        if fresh:
            checkpoint.clear()
        self.done = dict((checkpoint.load() or {}).get("cells", {}))
        self.computed = 0
        self.stop_after = stop_after

    def run(self, key: str, compute: Callable[[], Any]):
        if key in self.done:
            return self.done[key]
        if self.stop_after is not None and self.computed >= self.stop_after:
            raise KeyboardInterrupt(f"stopped after {self.computed} new cells (simulated kill)")
        result = compute()
        self.done[key] = result
        self.computed += 1
        self.checkpoint.save({"cells": self.done})
        return result
