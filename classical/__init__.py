"""Classical side of qgeom: float32 networks with tapped layers and the K-FAC family.

* ``classical.models``: ``Network``, ``Dense``, ``Conv2D``, ``Flatten``, ``AvgPool2D``, ``mlp``, ``autoencoder``;
* ``classical.distributions``: ``Categorical``, ``Bernoulli``, ``Gaussian`` output distributions;
* ``classical.kfac``: ``KFAC`` (fused ``step`` and optax ``update``), ``kfac`` (optax transformation);
* ``classical.foof``: FOOF (A factor only); ``classical.baselines``: SGD (Sutskever momentum), Adam;
* ``classical.tracing``: use a Flax/Equinox MLP without per-layer registration;
* ``classical.data``: offline datasets;
* ``classical.transforms``: optax transformations from gradients alone: ``shampoo``, ``soap``, ``mfac``.
"""

from classical.transforms import mfac, shampoo, soap

__all__ = ["mfac", "shampoo", "soap"]
