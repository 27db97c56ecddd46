"""qgeom: metric tensors on parameter space (Fisher, BKM, Kronecker-factored) in JAX.

The quantum side needs double precision (density matrices, metrics), so importing
qgeom enables ``jax_enable_x64``; the classical nets pass float32 arrays explicitly.
"""

import jax

jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"
