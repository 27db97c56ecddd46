"""Memory limits for dense simulation, checked before anything is allocated.

A dense operator on n qubits is a 2ⁿ×2ⁿ complex128 array, 16·4ⁿ bytes
(n = 12: 268 MB, n = 13: 1.07 GB, n = 14: 4.3 GB). Each routine states how many
such arrays it holds at once (``copies``; reverse-mode training through a circuit
keeps about ``TRAINING_COPIES`` of them, see ``qgeom.quantum.circuits``) and
:func:`check_dense` refuses sizes whose total exceeds :data:`MAX_DENSE_BYTES`:
half the machine's physical memory, or the value of the environment variable
``QGEOM_MAX_DENSE_BYTES`` when set.
"""

from __future__ import annotations

import os

TRAINING_COPIES = 24


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 2**30


MAX_DENSE_BYTES: int | None = None  # set to override the automatic limit


def max_dense_bytes() -> int:
    """The dense-simulation memory limit in bytes (see the module docstring for the order)."""
    if "QGEOM_MAX_DENSE_BYTES" in os.environ:
        return int(os.environ["QGEOM_MAX_DENSE_BYTES"])
    if MAX_DENSE_BYTES is not None:
        return int(MAX_DENSE_BYTES)
    import jax

    stats = jax.devices()[0].memory_stats()  # None on CPU
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return _physical_memory() // 2


def dense_bytes(n: int, copies: int = 1) -> int:
    """Bytes held by ``copies`` complex128 2ⁿ×2ⁿ arrays."""
    return copies * 16 * 4**n


def check_dense(n: int, copies: int = 1, what: str = "dense simulation") -> None:
    """Raise ``ValueError`` if ``copies`` 2ⁿ×2ⁿ complex128 arrays exceed :func:`max_dense_bytes`."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of qubits must be a positive integer, got {n!r}")
    need, limit = dense_bytes(n, copies), max_dense_bytes()
    if need > limit:
        raise ValueError(
            f"{what} on n={n} qubits needs about {need / 2**30:.1f} GiB "
            f"({copies} × 2^{n}×2^{n} complex128 arrays), above the limit of "
            f"{limit / 2**30:.1f} GiB (qgeom.quantum.limits.max_dense_bytes(): device memory, "
            "set QGEOM_MAX_DENSE_BYTES to change it)"
        )
