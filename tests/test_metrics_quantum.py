"""Quantum metrics against PennyLane, finite differences, relative-entropy Hessians and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pennylane as qml
import pytest

import qgeom  # noqa: F401  (float64)
from qgeom.metrics import bkm, fisher, fubini_study, petz, petz_kernel

# ---------------------------------------------------------------- random circuits

ROTATIONS = ("RX", "RY", "RZ")
ENTANGLERS = ("IsingXX", "IsingZZ", "CNOT")
CONTROLLED = ("CRZ", "CRX")


def random_circuit(seed, n, depth, gates):
    """A random qfunc(t) over ``gates`` (RY layer first, so no parameter is idle) and its parameter count."""
    rng = np.random.default_rng(seed)
    ops = [("RY", (w,)) for w in range(n)]
    for _ in range(depth):
        name = str(rng.choice(gates))
        k = 1 if name in ROTATIONS else 2
        ops.append((name, tuple(int(w) for w in rng.choice(n, k, replace=False))))
    n_par = sum(name != "CNOT" for name, _ in ops)

    def qfunc(t):
        i = 0
        for name, wires in ops:
            if name == "CNOT":
                qml.CNOT(wires=wires)
            else:
                getattr(qml, name)(t[i], wires=wires)
                i += 1

    return qfunc, n_par, jnp.asarray(rng.uniform(0, 2 * np.pi, n_par))


def state_fn_of(qfunc, n):
    """ψ(t) = U(t)|0…0⟩ via PennyLane's differentiable ``qml.matrix``."""
    mat = qml.matrix(qfunc, wire_order=range(n))
    return jax.jit(lambda t: mat(t)[:, 0])


PLAIN = [(11, 2, 6), (13, 3, 10)]  # (seed, qubits, depth): Pauli rotations + entanglers
WITH_CONTROLLED = [(21, 2, 6), (22, 3, 8)]


@pytest.mark.parametrize("seed,n,depth", PLAIN)
def test_fubini_study_matches_pennylane_metric_tensor(seed, n, depth):
    qfunc, _, t = random_circuit(seed, n, depth, ROTATIONS + ENTANGLERS)
    dev = qml.device("default.qubit", wires=n + 1)  # the full metric tensor needs an auxiliary wire

    @qml.qnode(dev, interface="jax")
    def circuit(t):
        qfunc(t)
        return qml.expval(qml.PauliZ(0))

    want = np.asarray(qml.metric_tensor(circuit, approx=None)(t))
    got = fubini_study(state_fn_of(qfunc, n), t).dense()
    np.testing.assert_allclose(got, want, atol=1e-10)


@pytest.mark.parametrize(
    "seed,n,depth,gates",
    [(*c, ROTATIONS + ENTANGLERS) for c in PLAIN] + [(*c, ROTATIONS + ENTANGLERS + CONTROLLED) for c in WITH_CONTROLLED],
)
def test_fubini_study_is_the_fidelity_expansion(seed, n, depth, gates):
    """1 − |⟨ψ(θ)|ψ(θ+εe)⟩|² = ε² eᵀGe + O(ε⁴) (symmetrized in ±ε), on every circuit.

    With controlled rotations (CRZ, CRX) PennyLane 0.45.1's ``qml.metric_tensor(approx=None)``
    disagrees with this expansion by up to ~0.1, so there the finite difference (and the
    exact Hessian of the infidelity) is the reference, not PennyLane.
    """
    qfunc, n_par, t = random_circuit(seed, n, depth, gates)
    psi = state_fn_of(qfunc, n)
    g = fubini_study(psi, t).dense()

    def infidelity(d):
        return 1.0 - jnp.abs(jnp.vdot(psi(t), psi(t + d))) ** 2

    eps = 1e-3
    rng = np.random.default_rng(seed)
    for e in list(np.eye(n_par)) + list(rng.standard_normal((3, n_par))):
        e = jnp.asarray(e)
        fd = 0.5 * (infidelity(eps * e) + infidelity(-eps * e)) / eps**2
        np.testing.assert_allclose(fd, e @ g @ e, rtol=1e-5, atol=1e-8)
    # full matrix: the infidelity's Hessian at 0 is 2G
    np.testing.assert_allclose(jax.hessian(infidelity)(jnp.zeros(n_par)) / 2, g, atol=1e-9)


# ---------------------------------------------------------------- mixed-state families


def random_generators(seed, d, n_par):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_par, d, d)) + 1j * rng.standard_normal((n_par, d, d))
    return jnp.asarray((a + np.conj(np.swapaxes(a, 1, 2))) / 2)


def gibbs_family(gens):
    """ρ(θ) = e^{−Σθ_k H_k}/Z — full rank for every θ."""

    def rho(t):
        h = jnp.tensordot(t, gens.real, 1) + 1j * jnp.tensordot(t, gens.imag, 1)  # real-linear in θ
        w, v = jnp.linalg.eigh(h)
        return (v * jax.nn.softmax(-w)) @ v.conj().T

    return rho


def relative_entropy_hessian(rho_fn, t):
    """∂²/∂θ'² D(ρ_θ‖ρ_θ') at θ' = θ with D = Tr ρ(log ρ − log σ), logs via scipy-free eigh."""

    def logm(r):
        w, v = jnp.linalg.eigh(r)
        return (v * jnp.log(w)) @ v.conj().T

    def rel(tp):
        r, s = rho_fn(t), rho_fn(tp)
        return jnp.real(jnp.trace(r @ (logm(r) - logm(s))))

    return jax.jit(jax.hessian(rel))(t)


def kubo_mori_closed_form(gens, t):
    """∂² log Z of ρ = e^{−H(θ)}/Z, H = Σθ_k H_k: the Kubo–Mori correlation
    Σ_kl (ΔH_i)_kl (ΔH_j)_lk (p_k − p_l)/(log p_k − log p_l) (limit p_k on the diagonal),
    ΔH = H − ⟨H⟩, from one numpy ``eigh`` of H — the BKM metric of an exponential family."""
    w, v = np.linalg.eigh(np.tensordot(np.asarray(t), np.asarray(gens), 1))
    p = np.exp(-(w - w.min()))
    p /= p.sum()
    hs = np.einsum("ka,ikl,lb->iab", v.conj(), np.asarray(gens), v)
    dh = hs - np.einsum("iaa,a->i", hs, p).real[:, None, None] * np.eye(len(p))
    lp = np.log(p)
    diff = lp[:, None] - lp[None]
    same = np.abs(diff) < 1e-12
    kernel = np.where(same, p[:, None], (p[:, None] - p[None]) / np.where(same, 1.0, diff))
    return np.einsum("iab,jba,ab->ij", dh, dh, kernel).real, p


@pytest.mark.parametrize("seed,d,n_par", [(0, 3, 3), (2, 8, 6)])
def test_bkm_is_relative_entropy_hessian(seed, d, n_par):
    """Three routes to the same matrix: ``bkm`` (∂ρ in ρ's eigenbasis), the autodiff Hessian
    of D(ρ_θ‖ρ_θ'), and the Kubo–Mori closed form.

    Conditioning: every route through ∂ρ loses ≈ ε_machine/p_min, so the instance is scaled on
    purpose to a spectral spread of 4 in H (p_max/p_min = e⁴) and the tolerance is
    100·ε/p_min·max|G| — not a number that happened to pass on one CPU.
    """
    gens = random_generators(seed, d, n_par)
    t = jnp.asarray(np.random.default_rng(seed).standard_normal(n_par))
    w = np.linalg.eigvalsh(np.tensordot(np.asarray(t), np.asarray(gens), 1))
    t = t * 4.0 / (w.max() - w.min())
    rho = gibbs_family(gens)
    closed, p = kubo_mori_closed_form(gens, t)
    assert p.min() / p.max() > np.exp(-4.0) * (1 - 1e-9)  # the instance is as conditioned as stated
    tol = 100 * np.finfo(np.float64).eps / p.min() * np.abs(closed).max()
    want = relative_entropy_hessian(rho, t)
    got = bkm(rho, t).dense()
    np.testing.assert_allclose(got, closed, atol=tol)
    np.testing.assert_allclose(want, closed, atol=tol)
    # a second independent reference: scipy's logm on the concrete matrices along a line
    import scipy.linalg as sla

    e = np.random.default_rng(seed + 100).standard_normal(n_par)
    r0 = np.asarray(rho(t))

    def dline(s):
        sig = np.asarray(rho(t + s * jnp.asarray(e)))
        return np.real(np.trace(r0 @ (sla.logm(r0) - sla.logm(sig))))

    h = 1e-3
    fd = (dline(h) - 2 * dline(0.0) + dline(-h)) / h**2
    np.testing.assert_allclose(fd, e @ got @ e, rtol=1e-4)


def test_sld_pure_state_limit_is_four_fubini_study():
    """ρ_ε = (1−ε)|ψ⟩⟨ψ| + ε I/d has G_SLD = 4(1−ε)²/(1−ε+2ε/d) · G_FS exactly; → 4·G_FS as ε → 0."""
    n = 2
    qfunc, _, t = random_circuit(5, n, 6, ROTATIONS + ENTANGLERS)
    psi = state_fn_of(qfunc, n)
    g_fs = fubini_study(psi, t).dense()
    d = 2**n
    errors = []
    for eps in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6):

        def rho(t, eps=eps):
            p = psi(t)
            return (1 - eps) * jnp.outer(p, p.conj()) + eps * jnp.eye(d) / d

        g = petz(rho, t, "sld").dense()
        factor = (1 - eps) ** 2 / (1 - eps + 2 * eps / d)
        np.testing.assert_allclose(g, 4 * factor * g_fs, atol=1e-9)
        errors.append(np.abs(g - 4 * g_fs).max())
    assert all(a > b for a, b in zip(errors, errors[1:]))  # converges as ε → 0
    assert errors[-1] < 1e-5 * np.abs(g_fs).max()


@pytest.mark.parametrize("kind", ["sld", "bkm", "wy"])
def test_petz_reduces_to_classical_fisher_for_commuting_families(kind):
    """ρ(θ) = W diag(p(θ)) W† with fixed unitary W: every Petz metric equals Σ (∂p)²/p."""
    rng = np.random.default_rng(7)
    d, n_par = 6, 4
    a = jnp.asarray(rng.standard_normal((d, n_par)))
    w = jnp.asarray(np.linalg.qr(rng.standard_normal((d, d)) + 1j * rng.standard_normal((d, d)))[0])
    probs = lambda t: jax.nn.softmax(a @ jnp.sin(t) + a @ t**2)  # noqa: E731
    t = jnp.asarray(rng.standard_normal(n_par))
    want = fisher(probs, t).dense()
    diag = petz(lambda t: jnp.diag(probs(t)).astype(jnp.complex128), t, kind).dense()
    rotated = petz(lambda t: (w * probs(t)) @ w.conj().T, t, kind).dense()
    np.testing.assert_allclose(diag, want, atol=1e-12)
    np.testing.assert_allclose(rotated, want, atol=1e-10)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_loewner_order_sld_wy_bkm(seed):
    d, n_par = 6, 8
    rho = gibbs_family(random_generators(seed, d, n_par) * 1.5)
    t = jnp.asarray(np.random.default_rng(seed).standard_normal(n_par))
    g = {k: petz(rho, t, k).dense() for k in ("sld", "wy", "bkm")}
    tol = 1e-10 * np.abs(g["bkm"]).max()
    assert np.linalg.eigvalsh(g["wy"] - g["sld"]).min() >= -tol
    assert np.linalg.eigvalsh(g["bkm"] - g["wy"]).min() >= -tol
    # and the order is strict for a genuinely quantum family
    assert np.linalg.eigvalsh(g["bkm"] - g["sld"]).max() > 1e-3 * np.abs(g["bkm"]).max()


def test_bkm_kernel_stable_at_degeneracy():
    """K(p, q) → 1/p smoothly: values and gradients finite at and near p = q, matching the direct formula."""
    p = jnp.asarray([0.3, 0.3, 0.3, 1e-12, 0.5])
    q = jnp.asarray([0.3, 0.3 + 1e-9, 0.31, 1e-12, 0.2])
    direct = (np.log(0.3) - np.log(0.31)) / (0.3 - 0.31)
    np.testing.assert_allclose(petz_kernel(p, q, "bkm")[2], direct, rtol=1e-12)
    np.testing.assert_allclose(petz_kernel(p, q, "bkm")[:2], [1 / 0.3, 1 / 0.3], rtol=1e-8)
    np.testing.assert_allclose(petz_kernel(p, q, "bkm")[3], 1e12, rtol=1e-12)
    gp = jax.grad(lambda p: petz_kernel(p, q, "bkm").sum())(p)
    assert np.all(np.isfinite(gp))
    np.testing.assert_allclose(gp[0], -1 / (2 * 0.3**2), rtol=1e-8)  # ∂_p K(p,q) at p=q is −1/(2p²)
    for kind in ("sld", "wy"):
        np.testing.assert_allclose(petz_kernel(p[:1], p[:1], kind), [1 / 0.3], rtol=1e-14)


def test_rank_deficient_state_no_nan():
    """A pure family (rank one): SLD = 4·FS exactly (kernel pairs are dropped), no NaN anywhere."""
    n = 2
    qfunc, _, t = random_circuit(8, n, 5, ROTATIONS + ENTANGLERS)
    psi = state_fn_of(qfunc, n)
    rho = lambda t: jnp.outer(psi(t), psi(t).conj())  # noqa: E731
    g_fs = fubini_study(psi, t).dense()
    np.testing.assert_allclose(petz(rho, t, "sld").dense(), 4 * g_fs, atol=1e-8)
    for kind in ("bkm", "wy"):
        assert np.all(np.isfinite(petz(rho, t, kind).dense()))


def test_bad_density_matrices_raise():
    good = jnp.eye(2, dtype=jnp.complex128) / 2
    cases = {
        "square": lambda t: jnp.ones((2, 3)) / 2,
        "Hermitian": lambda t: good + jnp.asarray([[0, 0.1], [0, 0]]),
        "negative eigenvalue": lambda t: jnp.diag(jnp.asarray([1.2, -0.2])),
        "trace": lambda t: 2 * good,
    }
    for problem, fn in cases.items():
        with pytest.raises(ValueError, match=problem):
            bkm(fn, jnp.zeros(1))
    with pytest.raises(ValueError, match="kind"):
        petz(lambda t: good, jnp.zeros(1), "bures")
    with pytest.raises(ValueError, match="norm"):
        fubini_study(lambda t: jnp.ones(2, jnp.complex128), jnp.zeros(1))


def test_metrics_jit_as_pytrees():
    rho = gibbs_family(random_generators(9, 4, 3))
    t = jnp.asarray([0.1, -0.4, 0.3])
    m = bkm(rho, t)
    v = jnp.asarray([1.0, 2.0, -1.0])
    np.testing.assert_allclose(jax.jit(lambda m, v: m.mv(v))(m, v), m.dense() @ v, atol=1e-12)
    np.testing.assert_allclose(jax.jit(lambda m: m.dense())(m), m.dense(), atol=1e-12)


def test_fully_degenerate_maximally_mixed_state():
    """ρ(θ) = (I + Σ θ_k H̃_k)/d with traceless H̃_k: at θ = 0 every eigenvalue is equal and all
    Petz metrics are d·Tr(∂iρ ∂jρ) = Tr(H̃_i H̃_j)/d — finite, no 0/0 from the kernel."""
    d, n_par = 4, 3
    gens = random_generators(10, d, n_par)
    traceless = gens - jnp.trace(gens, axis1=1, axis2=2)[:, None, None] * jnp.eye(d) / d
    re, im = traceless.real, traceless.imag

    def rho(t):
        return (jnp.eye(d) + jnp.tensordot(t, re, 1) + 1j * jnp.tensordot(t, im, 1)) / d

    want = jnp.einsum("iab,jba->ij", traceless, traceless).real / d
    for kind in ("sld", "bkm", "wy"):
        np.testing.assert_allclose(petz(rho, jnp.zeros(n_par), kind).dense(), want, atol=1e-12)
