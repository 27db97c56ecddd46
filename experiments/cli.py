"""The ``qgeom`` command: one entry point for every study and benchmark.

``qgeom <command> [flags]`` runs ``experiments.<module>.main(flags)`` (a study module sets
``main = STUDY.main``, ``experiments.harness.cli``); ``qgeom <command> -h`` shows its flags.
A new command is one line of ``COMMANDS``. Modules are imported lazily, so one study's
optional dependencies never slow down or break another.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("experiments.demo", "short demo of both worlds (what `make run` runs)"),
    "gibbs": ("experiments.gibbs", "Gibbs sampling (VQT) of TFIM rings: QPMD, QPNGD, Adam, GD, QNG"),
    "learn": ("experiments.learn", "Hamiltonian learning (QMHL) from exact states and from shots"),
    "sequence": ("experiments.sequence", "geometric-locality sequences: warm vs cold starts"),
    "qhbm-baselines": ("experiments.qhbm_baselines", "the QPMD authors' 24-run sweep (TFIM ring n=4, qhea7) through qgeom"),
    "torus": ("experiments.torus", "Gibbs sampling of the TFIM on a 2×3 / 3×3 torus (h = 2.5): six methods, ERT"),
    "kfac": ("experiments.kfac_autoencoder", "MNIST deep autoencoder: K-FAC, FOOF, SGD, Adam, kfac-jax"),
    "kfac-classifier": ("experiments.kfac_classifier", "MNIST MLP / conv classifier with K-FAC and baselines"),
    "relu-autoencoder": ("experiments.relu_autoencoder", "MNIST ReLU autoencoder (Goldfarb-group protocol): TNT, MBF, Shampoo, ..."),
    "bench-metrics": ("experiments.bench_metrics", "BKM metric vs relative-entropy Hessian timing"),
    "bench-simulator": ("experiments.bench_simulator", "VQT loss+gradient: ours vs a jitted PennyLane QNode"),
    "bench-kfac": ("experiments.bench_kfac", "ms per step: K-FAC vs kfac-jax vs optax"),
    "bench-shape": ("experiments.bench_shape", "roofline: Shampoo, SOAP, TNT, MBF, M-FAC steps by part (MACs, CPU s)"),
    "bench-gpu": ("experiments.bench_gpu", "GPU: VQT vs PennyLane, structured BKM, K-FAC vs SGD/kfac-jax (refuses without a GPU)"),
    "comm-volume": ("experiments.comm_volume", "bytes per step in the sharded steps' collectives (HLO vs analytic), 1 vs D devices"),
    "spectra": ("experiments.spectra", "Lanczos/SLQ spectra of batch Hessian and GGN vs batch size; CG vs Nyström-PCG"),
    "batch-scaling": ("experiments.batch_scaling", "largest stable / best lr of SGD and Adam, K-FAC's min damping vs batch size"),
    "slq-learner": ("experiments.slq_learner", "Granziol et al.'s SLQ lr/momentum learner vs tuned SGD and Adam (MNIST-1D)"),
    "benzing": ("experiments.benzing", "exact NGD (Hessian-free) vs K-FAC vs FOOF vs Adam, and why (directions vs the Fisher)"),
    "nrws": ("experiments.nrws", "Helmholtz machines on binarized MNIST: WS, RWS (SGD, Adam), natural RWS"),
    "qbvi": ("experiments.qbvi", "Gaussian VI: QBVI vs black-box and reparameterization VI on sklearn data"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: qgeom <command> [flags]   (qgeom <command> -h for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {doc}" for name, (_, doc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"qgeom: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
