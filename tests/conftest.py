"""Test-session settings, applied before any test module imports JAX.

The default suite is dominated by XLA compile time: hundreds of small jitted functions, each
compiled once and run a few times. Backend optimisation buys little at these sizes, so the
tests compile with ``--xla_backend_optimization_level=0`` and LLVM's expensive passes off
(measured on a 2-core AMD EPYC: −24 % CPU time for ``test_metrics_quantum.py``, −32 % for
``test_classical_kfac.py``). The computation is the same; only code generation changes, and
every tolerance already allows for reassociated sums. ``QGEOM_TEST_XLA_OPT=1`` keeps XLA's
default pipeline; flags already in ``XLA_FLAGS`` are kept.
"""

import os

if os.environ.get("QGEOM_TEST_XLA_OPT") != "1":
    _fast = ["--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"]
    _flags = os.environ.get("XLA_FLAGS", "").split()
    os.environ["XLA_FLAGS"] = " ".join(_flags + [f for f in _fast if f.split("=")[0] not in
                                                 {g.split("=")[0] for g in _flags}])
