"""The dense-simulation memory guard: where its limit comes from, and that every check reads it."""

import os

import pytest

from qgeom.quantum import Parity, check_dense, limits


def test_limit_order_env_then_override_then_device_then_host(monkeypatch):
    monkeypatch.delenv("QGEOM_MAX_DENSE_BYTES", raising=False)
    monkeypatch.setattr(limits, "MAX_DENSE_BYTES", None)
    # CPU: the device reports no byte limit, so half the physical memory
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    assert limits.max_dense_bytes() == host
    monkeypatch.setattr(limits, "MAX_DENSE_BYTES", 12345)
    assert limits.max_dense_bytes() == 12345
    monkeypatch.setenv("QGEOM_MAX_DENSE_BYTES", "999")
    assert limits.max_dense_bytes() == 999


def test_device_byte_limit_is_used_when_reported(monkeypatch):
    class FakeDevice:
        def memory_stats(self):
            return {"bytes_limit": 80 * 2**30, "bytes_in_use": 0}

    import jax

    monkeypatch.delenv("QGEOM_MAX_DENSE_BYTES", raising=False)
    monkeypatch.setattr(limits, "MAX_DENSE_BYTES", None)
    monkeypatch.setattr(jax, "devices", lambda *a: [FakeDevice()])
    assert limits.max_dense_bytes() == 80 * 2**30


def test_every_check_reads_the_current_limit(monkeypatch):
    """An override set after import reaches check_dense and the EBM's exact-sum guard alike."""
    monkeypatch.delenv("QGEOM_MAX_DENSE_BYTES", raising=False)
    monkeypatch.setattr(limits, "MAX_DENSE_BYTES", limits.dense_bytes(3) - 1)
    with pytest.raises(ValueError, match="n=3 qubits needs"):
        check_dense(3)
    check_dense(2)
    monkeypatch.setattr(limits, "MAX_DENSE_BYTES", 2**6 * (6 + 6) * 8 - 1)  # Parity(6, 1): 6 subsets
    with pytest.raises(ValueError, match="exact sums over 2\\^6 states"):
        Parity(6, 1).log_partition(Parity(6, 1).init(__import__("jax").random.PRNGKey(0)))
