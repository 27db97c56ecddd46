r"""Energy-based models over n bits: p_θ(x) = e^{−E_θ(x)} / Z_θ.

Spins s_i = 1 − 2x_i (bit 0 ↔ Z = +1), bit strings big-endian (x_0 is the most
significant bit of the basis index). All models here are linear in θ,
E_θ(x) = Σ_b θ_b f_b(x) with Z-product features f_b(x) = Π_{i∈b} s_i, so the
modular operator is K_θ = Σ_b θ_b Z^b (see :meth:`ZProductEBM.operator`) and
∇_θ E = f(x):

* :class:`Bernoulli` — b = {i}: independent spins, log Z = Σ_i log 2cosh θ_i;
* :class:`Parity`    — all b with 1 ≤ |b| ≤ order;
* :class:`Ising`     — b = {i} for every node and {i, j} for every edge of a graph.

Exact quantities enumerate all 2ⁿ states (refused above the memory limit).
Sampling is exact (categorical over 2ⁿ) for n ≤ ``EXACT_SAMPLE_MAX``, independent
per spin for Bernoulli at any n, and otherwise approximate: independent
heat-bath (Gibbs-sampler) chains, one per sample, from a uniformly random start,
``sweeps`` systematic sweeps each (x_i ← 1 with probability sigmoid(E(x_i=0) − E(x_i=1))).
(Heat-bath rather than Metropolis: a systematic-scan Metropolis chain with zero-cost
flips always accepted is periodic and does not converge.)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pennylane as qml
from jax.scipy.special import logsumexp

from qgeom.quantum.limits import max_dense_bytes

EXACT_SAMPLE_MAX = 20


def basis_bits(n: int) -> jax.Array:
    """All 2ⁿ bit strings, shape (2ⁿ, n), big-endian: row x holds the bits of integer x."""
    x = jnp.arange(2**n)
    return (x[:, None] >> jnp.arange(n - 1, -1, -1)[None, :]) & 1


def bits_to_index(bits) -> jax.Array:
    """Big-endian bit strings (..., n) → basis indices (...)."""
    n = jnp.shape(bits)[-1]
    return jnp.sum(jnp.asarray(bits) * (2 ** jnp.arange(n - 1, -1, -1)), axis=-1)


class ZProductEBM:
    """E_θ(x) = Σ_b θ_b Π_{i∈b} s_i for a fixed list of index subsets b (static)."""

    def __init__(self, n: int, subsets: Sequence[Sequence[int]]):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        subsets = tuple(tuple(int(i) for i in b) for b in subsets)
        if not subsets:
            raise ValueError("an EBM needs at least one energy term")
        for b in subsets:
            if not b or len(set(b)) != len(b) or min(b) < 0 or max(b) >= n:
                raise ValueError(f"invalid subset {b} for n={n}")
        self.n = n
        self.subsets = subsets
        mask = np.zeros((len(subsets), n), dtype=np.int32)
        for k, b in enumerate(subsets):
            mask[k, list(b)] = 1
        self._mask = mask

    @property
    def param_shape(self) -> tuple[int, ...]:
        return (len(self.subsets),)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, terms={len(self.subsets)})"

    def check_params(self, theta) -> None:
        """Raise ``ValueError`` if ``theta`` does not have shape :attr:`param_shape`."""
        if jnp.shape(theta) != self.param_shape:
            raise ValueError(f"{type(self).__name__} parameters must have shape {self.param_shape}, got {jnp.shape(theta)}")

    def _check_exact(self) -> None:
        need, limit = 2**self.n * (self.n + len(self.subsets)) * 8, max_dense_bytes()
        if need > limit:
            raise ValueError(
                f"exact sums over 2^{self.n} states need {need / 2**30:.1f} GiB, above the limit "
                f"{limit / 2**30:.1f} GiB (qgeom.quantum.limits.max_dense_bytes())"
            )

    def init(self, key, scale: float = 0.5) -> jax.Array:
        """θ ~ N(0, scale²)."""
        return scale * jax.random.normal(key, self.param_shape, dtype=jnp.float64)

    def features(self, bits) -> jax.Array:
        """f_b(x) = Π_{i∈b} s_i = (−1)^{Σ_{i∈b} x_i}; bits (..., n) → (..., len(subsets))."""
        bits = jnp.asarray(bits)
        if bits.shape[-1] != self.n:
            raise ValueError(f"bits must have last axis {self.n}, got shape {bits.shape}")
        return 1.0 - 2.0 * ((bits.astype(jnp.int32) @ self._mask.T) % 2)

    def energy(self, theta, bits) -> jax.Array:
        """E_θ(x) for bits of shape (..., n) → (...)."""
        self.check_params(theta)
        return self.features(bits) @ theta

    def energies(self, theta) -> jax.Array:
        """E_θ(x) for all 2ⁿ basis states, shape (2ⁿ,)."""
        self._check_exact()
        return self.energy(theta, basis_bits(self.n))

    def log_partition(self, theta) -> jax.Array:
        """log Z_θ = logsumexp_x(−E_θ(x))."""
        return logsumexp(-self.energies(theta))

    def probabilities(self, theta) -> jax.Array:
        """p_θ(x) = softmax(−E_θ)(x), shape (2ⁿ,)."""
        return jax.nn.softmax(-self.energies(theta))

    def operator(self, theta, wires: Sequence | None = None):
        """K_θ = Σ_b θ_b Z^b as a PennyLane operator on ``wires`` (default 0…n−1)."""
        wires = list(range(self.n)) if wires is None else list(wires)
        ops = [qml.prod(*[qml.Z([wires[i]]) for i in b]) if len(b) > 1 else qml.Z([wires[b[0]]]) for b in self.subsets]
        return qml.Hamiltonian(list(theta), ops)

    def sample(self, theta, key, shots: int, sweeps: int = 200) -> jax.Array:
        """``shots`` samples x ~ p_θ as (shots, n) int bits: exact for n ≤ EXACT_SAMPLE_MAX, else heat-bath MCMC."""
        self.check_params(theta)
        if self.n <= EXACT_SAMPLE_MAX:
            idx = jax.random.categorical(key, -self.energies(theta), shape=(shots,))
            return basis_bits(self.n)[idx]
        return self._heat_bath(theta, key, shots, sweeps)

    def _heat_bath(self, theta, key, shots, sweeps):
        n = self.n
        k0, k1 = jax.random.split(key)
        x0 = jax.random.bernoulli(k0, 0.5, (shots, n)).astype(jnp.int32)

        def step(t, carry):
            x, key = carry
            key, ku = jax.random.split(key)
            i = t % n
            e0 = self.energy(theta, x.at[:, i].set(0))
            e1 = self.energy(theta, x.at[:, i].set(1))
            new = jax.random.bernoulli(ku, jax.nn.sigmoid(e0 - e1)).astype(jnp.int32)
            return x.at[:, i].set(new), key

        x, _ = jax.lax.fori_loop(0, sweeps * n, step, (x0, k1))
        return x


class Bernoulli(ZProductEBM):
    """Independent spins: E_θ(x) = Σ_i θ_i s_i, p(x_i = 1) = sigmoid(2θ_i), log Z = Σ_i log(2 cosh θ_i)."""

    def __init__(self, n: int):
        super().__init__(n, [(i,) for i in range(n)] if isinstance(n, int) and n > 0 else [])

    def log_partition(self, theta):
        self.check_params(theta)
        return jnp.sum(jnp.logaddexp(theta, -theta))

    def sample(self, theta, key, shots: int, sweeps: int = 0) -> jax.Array:
        """Exact independent sampling at any n."""
        self.check_params(theta)
        return jax.random.bernoulli(key, jax.nn.sigmoid(2.0 * theta), (shots, self.n)).astype(jnp.int32)


class Parity(ZProductEBM):
    """All Z-products up to ``order``: E_θ(x) = Σ_{1≤|b|≤order} θ_b Π_{i∈b} s_i (subsets by size, then lexicographic)."""

    def __init__(self, n: int, order: int = 2):
        if not isinstance(order, int) or not 1 <= order <= (n if isinstance(n, int) else 0):
            raise ValueError(f"order must be an integer in [1, n={n}], got {order!r}")
        super().__init__(n, [b for k in range(1, order + 1) for b in itertools.combinations(range(n), k)])
        self.order = order


class Ising(ZProductEBM):
    """Fields and graph couplings: E_θ(x) = Σ_i θ_i s_i + Σ_{(i,j)∈E} θ_ij s_i s_j.

    Nodes are sorted (same order as the wires of ``tfim(graph)``); θ holds the n fields,
    then one coupling per edge in ``graph.edges`` order.
    """

    def __init__(self, graph: nx.Graph):
        if not isinstance(graph, nx.Graph) or graph.number_of_nodes() == 0:
            raise ValueError("Ising needs a non-empty networkx graph")
        if nx.number_of_selfloops(graph):
            raise ValueError("graph has self-loops")
        nodes = sorted(graph.nodes)
        index = {v: k for k, v in enumerate(nodes)}
        self.nodes = nodes
        self.edges = list(graph.edges)
        super().__init__(len(nodes), [(k,) for k in range(len(nodes))] + [(index[u], index[v]) for u, v in self.edges])


for _cls in (ZProductEBM, Bernoulli, Parity, Ising):
    jax.tree_util.register_static(_cls)
