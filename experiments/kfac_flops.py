"""Multiply–add counts of one training step of a dense network: the floor a step cannot beat.

For a stack of dense layers with weight shapes (d_in, d_out) (bias extra) and batch N, one
step's matrix products cost, in multiply–adds (MACs; elementwise work is lower order):

    forward                           N Σ d_in d_out                        = N P
    backward, weight gradients        N P
    backward, input gradients         N (P − P₁)          (no gradient w.r.t. the data)
    sampled-target backward (taps)    m (P − P₁)          (m = curvature examples)
    factor statistics A, G            m Σ [(d_in + 1)² + d_out²]
    preconditioning A⁻¹ V G⁻¹         Σ [(d_in + 1)² d_out + (d_in + 1) d_out²]
    one JVP J·v                       m (2P − P₁)
    ρ's extra forward (+ one JVP      N P / (damping interval)
      when α is fixed)
    inverse refresh (Cholesky,        Σ_factors (d³/6 + d³/2 + d³) / (inverse period)
      triangular solve, L⁻ᵀL⁻¹)

with P = Σ d_in d_out and P₁ the first layer's share. SGD and Adam cost the first three
lines. Compute-bound steps take time ∝ MACs, so ``macs(...) / macs("sgd")`` is the lowest
step time relative to SGD that any implementation of that algorithm can reach on the same
matrix-product throughput. ``tests/test_classical_flops.py`` checks the terms against XLA's
own cost analysis of the jitted computations.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepCost:
    """MACs per step by part (amortised over the inverse, statistics and damping periods)."""

    forward: float
    backward: float
    sampled_backward: float = 0.0
    statistics: float = 0.0
    precondition: float = 0.0
    jvps: float = 0.0
    rho_forward: float = 0.0
    inverse: float = 0.0

    @property
    def total(self) -> float:
        return sum(getattr(self, f) for f in self.__dataclass_fields__)


def forward_macs(shapes, n):
    """N P: the forward pass."""
    return n * sum(di * do for di, do in shapes)


def input_grad_macs(shapes, n):
    """N (P − P₁): gradients (or tangents) through the weights of layers 2…L."""
    return forward_macs(shapes, n) - n * shapes[0][0] * shapes[0][1]


def backward_macs(shapes, n):
    """N P (weight gradients) + N (P − P₁) (input gradients of layers 2…L)."""
    return forward_macs(shapes, n) + input_grad_macs(shapes, n)


def statistics_macs(shapes, m, g_factor=True):
    """m Σ (d_in + 1)² (+ m Σ d_out² with G): the Gram products of A (and G)."""
    return m * sum((di + 1) ** 2 + (do**2 if g_factor else 0) for di, do in shapes)


def precondition_macs(shapes, g_factor=True):
    """Σ (d_in + 1)² d_out (+ (d_in + 1) d_out² with G): A⁻¹ V G⁻¹ per layer."""
    return sum((di + 1) ** 2 * do + ((di + 1) * do**2 if g_factor else 0) for di, do in shapes)


def jvp_macs(shapes, m):
    """m (2P − P₁): tangent propagation ż W (layers 2…L) plus z̄ Ẇ."""
    return forward_macs(shapes, m) + input_grad_macs(shapes, m)


def inverse_macs(shapes, g_factor=True):
    """Cholesky (d³/6) + triangular solve against I (d³/2) + L⁻ᵀL⁻¹ (d³) per factor."""
    dims = [di + 1 for di, _ in shapes] + ([do for _, do in shapes] if g_factor else [])
    return sum((1 / 6 + 1 / 2 + 1) * d**3 for d in dims)


def step_cost(method, shapes, n, *, curvature_batch=None, inverse_period=20, stats_period=1,
              damping_interval=5, adaptive_damping=None) -> StepCost:
    """MACs of one step of ``method`` ∈ {"sgd", "adam", "kfac-fixed", "kfac-adaptive", "foof"}.

    ``shapes``: per dense layer (d_in, d_out) without the bias; ``n``: batch size;
    ``curvature_batch``: examples the curvature terms use (default all ``n``).
    ``adaptive_damping`` defaults to True for ``kfac-adaptive`` and False otherwise.
    """
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if not shapes:
        raise ValueError("shapes must list at least one (d_in, d_out) layer")
    base = StepCost(forward_macs(shapes, n), backward_macs(shapes, n))
    if method in ("sgd", "adam"):
        return base
    if method not in ("kfac-fixed", "kfac-adaptive", "foof"):
        raise ValueError(f"unknown method {method!r}")
    m = n if curvature_batch is None else min(int(curvature_batch), n)
    g_factor = method != "foof"
    adaptive = method == "kfac-adaptive"
    lm = adaptive if adaptive_damping is None else adaptive_damping
    return StepCost(
        forward=base.forward,
        backward=base.backward,
        sampled_backward=(input_grad_macs(shapes, m) if g_factor else 0.0) / stats_period,
        statistics=statistics_macs(shapes, m, g_factor) / stats_period,
        precondition=precondition_macs(shapes, g_factor),
        jvps=2 * jvp_macs(shapes, m) if adaptive else 0.0,
        rho_forward=(forward_macs(shapes, n) + (0 if adaptive else jvp_macs(shapes, m))) / damping_interval
        if lm else 0.0,
        inverse=inverse_macs(shapes, g_factor) / inverse_period,
    )
