"""Optax ``GradientTransformation``s that precondition with statistics of the gradient alone.

* ``shampoo`` — Shampoo (Gupta, Koren & Singer 2018) with distributed-Shampoo practice;
* ``soap`` — SOAP (Vyas et al. 2024): Adam in the eigenbasis of Shampoo's factors;
* ``mfac`` — M-FAC's dynamic algorithm (Frantar, Kurtic & Alistarh 2021).

All take the learning rate first and work in any optax loop (Flax, Equinox, plain pytrees).
"""

from classical.transforms.mfac import MFACState, mfac, window_metric
from classical.transforms.shampoo import ShampooState, scale_by_shampoo, shampoo
from classical.transforms.soap import SOAPState, soap

__all__ = ["MFACState", "SOAPState", "ShampooState", "mfac", "scale_by_shampoo", "shampoo", "soap", "window_metric"]
