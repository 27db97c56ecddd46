"""Classical side of qgeom: float32 networks with tapped layers and the K-FAC family.

* ``classical.models``: ``Network``, ``Dense``, ``Conv2D``, ``Flatten``, ``AvgPool2D``, ``mlp``, ``autoencoder``;
* ``classical.distributions``: ``Categorical``, ``Bernoulli``, ``Gaussian`` output distributions;
* ``classical.kfac``: ``KFAC`` (fused ``step`` and optax ``update``), ``kfac`` (optax transformation);
* ``classical.foof``: FOOF (A factor only); ``classical.baselines``: SGD (Sutskever momentum), Adam;
* ``classical.blocks``: the curvature-block protocol and its blocks (Kronecker, input-only, EKFAC,
  randomized, block-tridiagonal, TNT, MBF); ``classical.family``: ``ekfac``, ``rs_kfac``, ``kfac_tridiag``,
  ``tnt``, ``mbf``;
  ``classical.kld_wrm``: ``kld_wrm`` (SO-KLD-WRM) — each a ``KFAC`` with another curvature;
* ``classical.tracing``: use a Flax/Equinox MLP without per-layer registration;
* ``classical.data``: offline datasets;
* ``classical.transforms``: optax transformations from gradients alone: ``shampoo``, ``soap``, ``mfac``.
"""

from classical.family import ekfac, kfac_tridiag, mbf, rs_kfac, tnt
from classical.kld_wrm import kld_wrm
from classical.transforms import mfac, shampoo, soap

__all__ = ["mfac", "shampoo", "soap", "ekfac", "kfac_tridiag", "rs_kfac", "kld_wrm", "tnt", "mbf"]
