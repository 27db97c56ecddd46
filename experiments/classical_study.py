"""The classical studies' protocol: tune every method on seed 0, train the winners on every seed.

One run is ``harness.train`` with mini-batches and keys as functions of (seed, step),
evaluation on fixed train / test subsets every ``eval_every`` steps, x64 off (the nets are
float32; kfac-jax's factor updates fail under ``jax_enable_x64``), one BLAS thread, and an
atomic checkpoint per (method, hyper-parameters, seed): a killed study resumes where it
stopped with the same numbers. Tuning runs are those checkpoints; the winner's seed-0 final
run continues its tuning run, scored at the tuning step all the same.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from classical.data import batch_indices
from experiments.classical_methods import float32_mode, make_method, single_threaded_blas
from experiments.classical_problems import Problem
from experiments.harness import Checkpoint, Registry, train
from experiments.harness.analysis import first_below, mean_std
from experiments.harness.store import atomic_write_json, atomic_write_text, checkpoint_dir
from experiments.harness.tune import tune

BLOWUP = 100.0  # a run whose training loss exceeds its start and 100 x its best is stopped as diverged
HIST = ("step", "wall_time", "train_loss", "train_error", "test_loss", "test_error", "batch_loss")
_METRICS: dict = {}


def _run_id(method, hparams, seed, config) -> str:
    blob = json.dumps({"m": method, "hp": hparams, "cfg": config}, sort_keys=True, default=str)
    return f"{method}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}-s{seed}"


def run(problem: Problem, registry: Registry, method: str, hparams: dict, data, *, seed: int, steps: int,
        batch_size: int, eval_every: int, ckpt_dir=None, progress: bool = True, stop_below: float | None = None,
        on_step=None) -> dict:
    """Train one (method, hparams, seed); return its history (lists over evaluations).

    ``data = {"train": (x, y), "eval_train": (x, y), "eval_test": (x, y)}`` (numpy float32 /
    int32). A run stops at a non-finite loss (``diverged``; a self-correcting optimizer
    after ``MAX_BAD`` in a row), at an evaluated training loss above its start and ``BLOWUP``
    × its best (``diverged`` too) and, before ``steps``, at an evaluated training loss ≤
    ``stop_below`` (not continued on resumption either). ``on_step(t)``: a hook after step t.
    """
    if steps < 1 or eval_every < 1:
        raise ValueError(f"steps and eval_every must be >= 1, got {steps}, {eval_every}")
    x_tr, y_tr = data["train"]
    n = len(x_tr)
    run_id = _run_id(method, hparams, seed, {"batch": batch_size, "n_train": n, **problem.config})
    with float32_mode(), single_threaded_blas():
        if problem not in _METRICS:
            _METRICS[problem] = jax.jit(problem.metrics)
        metrics = _METRICS[problem]
        ev = {k: tuple(jnp.asarray(a) for a in data[k]) for k in ("eval_train", "eval_test")}

        def evaluate(params, t):
            tr, te = metrics(params, ev["eval_train"]), metrics(params, ev["eval_test"])
            return {"train_loss": tr["loss"], "train_error": tr["error"], "test_loss": te["loss"],
                    "test_error": te["error"]}

        def batch_at(t):
            idx = batch_indices(n, batch_size, seed, t)
            return jnp.asarray(x_tr[idx]), jnp.asarray(y_tr[idx])

        key = jax.random.PRNGKey(seed)
        out = train(make_method(registry[method], problem, hparams, seed), problem.net.init(jax.random.fold_in(key, 0)),
                    steps, key=key, batch_at=batch_at, evaluate=evaluate, eval_at=lambda t: t % eval_every == 0,
                    checkpoint=Checkpoint(f"{ckpt_dir}/{run_id}.run.pkl") if ckpt_dir else None,
                    stop=None if stop_below is None else (lambda r: "target reached" if r["train_loss"] <= stop_below
                                                          else None),
                    progress=progress, desc=f"{method} s{seed}", on_step=on_step, blowup=BLOWUP)
    if out["diverged"]:
        print(f"[{method} s{seed} {hparams}] {out['status']}: run stopped (diverged)")
    hist = {k: out["evals"][k] for k in HIST}
    return {"method": method, "hparams": hparams, "seed": seed, "diverged": out["diverged"], "run_id": run_id,
            **hist, "cpu_time": out["evals"]["cpu_time"], "compile_time": out["compile_time"]}


def loss_at(run: dict, i: int) -> float:
    """Train-subset loss at evaluation ``i`` (inf if non-finite, or if ``i`` is the last
    evaluation of a diverged run)."""
    v = run["train_loss"][i]
    last = i in (-1, len(run["train_loss"]) - 1)
    return float("inf") if (run["diverged"] and last) or not np.isfinite(v) else float(v)


def final_loss(run: dict) -> float:
    """Last recorded train-subset loss (inf if the run diverged or ended non-finite)."""
    return loss_at(run, -1)


def tune_method(problem, registry, method, grid, data, *, steps, seed=0, **kw):
    """Every grid point on ``seed`` for ``steps``: (winner, table of hparams / training loss /
    wall time). Each point is scored at step ``steps`` even when its checkpoint has since been
    continued (the winner's final run resumes from it), so a re-run study ranks alike."""
    def score(r):
        return loss_at(r, max(i for i, s in enumerate(r["step"]) if s <= steps))

    res = tune(grid, lambda hp: run(problem, registry, method, hp, data, seed=seed, steps=steps, **kw), score)
    table = [{"hparams": hp, "final_train_loss": s, "wall_time": r["wall_time"][
        max(i for i, st in enumerate(r["step"]) if st <= steps)]}
        for hp, s, r in zip(res["grid"], res["scores"], res["results"])]
    return res["winner"], table


def adam_target(runs, horizon) -> tuple[float, int]:
    """(best seed-mean training loss within ``horizon`` steps, the horizon actually covered)."""
    n = min(len(r["train_loss"]) for r in runs)
    mean = np.mean([r["train_loss"][:n] for r in runs], axis=0)
    steps = np.asarray(runs[0]["step"][:n])
    return float(np.nanmin(mean[steps <= horizon])), int(min(horizon, steps[-1]))


def first_reach(steps, walls, losses, target, cpus=None):
    """(step, wall time[, process CPU time]) of the first evaluation with loss ≤ target, or Nones."""
    k = first_below(losses, target)
    hit = (None, None) if k is None else (int(steps[k]), float(walls[k]))
    return hit if cpus is None else (*hit, None if k is None else float(cpus[k]))


def summarize(runs_by_method: dict, target_method="adam", horizon=2000, error_name="test_error") -> dict:
    """Per method: final losses / errors (mean, std over seeds), ms per step, and — for every
    seed — the step and wall time at which its training loss first reaches
    ``target_method``'s best seed-mean training loss within ``horizon`` steps (mean over the
    seeds that reach it; ``reached`` counts them)."""
    table, target = {}, None
    if target_method in runs_by_method:
        target, horizon = adam_target(runs_by_method[target_method], horizon)
    for method, runs in runs_by_method.items():
        def final(k):
            return [r[k][-1] for r in runs]

        row = {"seeds": len(runs), "diverged": sum(r["diverged"] for r in runs),
               "steps": int(max(r["step"][-1] for r in runs))}
        row["train_loss"], row["train_loss_std"] = mean_std(final("train_loss"))
        row["test_loss"] = mean_std(final("test_loss"))[0]
        row[error_name], row[error_name + "_std"] = mean_std(final("test_error"))
        row["wall_time_s"] = mean_std(final("wall_time"))[0]
        row["ms_per_step"] = float(np.median([1e3 * r["wall_time"][-1] / max(r["step"][-1], 1) for r in runs]))
        if target is not None:
            hits = [first_reach(r["step"], r["wall_time"], r["train_loss"], target, r.get("cpu_time")) for r in runs]
            got = [h for h in hits if h[0] is not None]
            row["reach_per_seed"], row["reached"] = [list(h) for h in hits], len(got)
            row["reach_step"], row["reach_step_std"] = mean_std([h[0] for h in got])
            row["reach_wall_s"], row["reach_wall_s_std"] = mean_std([h[1] for h in got])
            if all(len(h) == 3 for h in hits):  # process CPU seconds (the machine may be shared)
                row["reach_cpu_s"], row["reach_cpu_s_std"] = mean_std([h[2] for h in got])
        table[method] = row
    return {"target_method": target_method, "target_horizon": horizon, "target_train_loss": target, "methods": table}


def markdown_table(summary: dict, error_name="test_error") -> str:
    """The summary as a Markdown table (means ± std over seeds)."""
    tgt = summary["target_train_loss"]
    head = (f"| method | steps | train loss | {error_name} | wall s | ms/step | "
            f"steps to {summary['target_method']}'s best | wall s to it | CPU s to it |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for m, r in summary["methods"].items():
        if tgt is None:
            reach = ["—", "—", "—"]
        elif not r["reached"]:
            reach = [f"not reached (0/{r['seeds']})", "—", "—"]
        else:
            part = "" if r["reached"] == r["seeds"] else f" ({r['reached']}/{r['seeds']} seeds)"
            cpu = f"{r['reach_cpu_s']:.1f} ± {r['reach_cpu_s_std']:.1f}" if "reach_cpu_s" in r else "—"
            reach = [f"{r['reach_step']:.0f} ± {r['reach_step_std']:.0f}{part}",
                     f"{r['reach_wall_s']:.1f} ± {r['reach_wall_s_std']:.1f}", cpu]
        lines.append(f"| {m} | {r['steps']} | {r['train_loss']:.4g} ± {r['train_loss_std']:.2g} | "
                     f"{r[error_name]:.4g} ± {r[error_name + '_std']:.2g} | {r['wall_time_s']:.1f} | "
                     f"{r['ms_per_step']:.0f} | {reach[0]} | {reach[1]} | {reach[2]} |")
    if tgt is not None:
        lines.append(f"\ntarget: {summary['target_method']}'s best seed-mean training loss within "
                     f"{summary['target_horizon']} steps = {tgt:.4g}")
    return "\n".join(lines)


def settings_text(results) -> str:
    """The study's budget and tuning grids as Markdown lines."""
    lines = [f"- {results['n_train']} training images, batch {results['batch_size']}, up to {results['steps']} steps, "
             f"{results['seeds']} seed(s) from seed {results['settings'].get('first_seed', 0)}; "
             f"curves on {results['n_eval']} train / test images",
             f"- tuning: every grid point {results['tune_steps']} steps on seed 0, ranked by training loss"
             + ("; non-Adam runs stop at Adam's best loss" if results["stop_at_target"] else "")]
    lines += [f"- {m}: grid {t['grid']} → {t['winner']}" for m, t in results["tuning"].items()]
    return "\n".join(lines)


def run_study(problem: Problem, registry: Registry, data, config: dict, out_dir, *, progress=True, fresh=False,
              error_label="test error", title="") -> dict:
    """Tune every method of ``config["methods"]`` on seed 0 (its grid from ``registry``; the
    middle point without tuning), train the winners on every seed, write ``results.json``,
    ``summary.md`` and ``curves.png`` to ``out_dir``; return the results dict.

    The final runs are seeds ``first_seed``, …, ``seeds`` − 1 (a later seed in its own
    process without re-running the earlier ones; tuning stays on seed 0). Adam runs first;
    with ``stop_at_target`` every other method's final runs stop at the first evaluation at
    or below Adam's best seed-mean training loss within ``steps``.
    """
    out_dir, c = Path(out_dir), config
    ckpt = checkpoint_dir(out_dir, "ckpt", fresh=fresh)
    kw = dict(batch_size=c["batch_size"], eval_every=c["eval_every"], ckpt_dir=ckpt, progress=progress)
    tuning, runs, target = {}, {}, None
    for method in sorted(c["methods"], key=lambda m: m != "adam"):  # stable: Adam first, then as given
        grid = [dict(p) for p in registry[method].grid]
        if c["tune_steps"] > 0 and len(grid) > 1:
            best, table = tune_method(problem, registry, method, grid, data, steps=c["tune_steps"], **kw)
        else:
            best, table = grid[len(grid) // 2], []
        tuning[method] = {"grid": grid, "table": table, "winner": best}
        stop = target if c["stop_at_target"] and method != "adam" else None
        runs[method] = [run(problem, registry, method, best, data, seed=s, steps=c["steps"], stop_below=stop, **kw)
                        for s in range(c["first_seed"], c["seeds"])]
        if method == "adam":
            target, _ = adam_target(runs["adam"], c["steps"])
        r = runs[method]
        print(f"{method}: winner {best}, final train loss {np.mean([x['train_loss'][-1] for x in r]):.4g}, "
              f"wall {np.mean([x['wall_time'][-1] for x in r]):.1f} s")
    summary = summarize(runs, horizon=c["steps"])
    results = {"problem": problem.config, "steps": c["steps"], "seeds": c["seeds"] - c["first_seed"],
               "batch_size": c["batch_size"],
               "tune_steps": c["tune_steps"], "n_train": len(data["train"][0]), "n_eval": len(data["eval_test"][0]),
               "stop_at_target": c["stop_at_target"], "settings": dict(c), "tuning": tuning, "summary": summary,
               "runs": runs, "table": markdown_table(summary)}
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "summary.md", f"# {title}\n\n{settings_text(results)}\n\n{results['table']}\n")

    save_curves(out_dir / "curves.png", runs, error_label, title)
    return results


def save_curves(path, runs: dict, error_label="test error", title="", methods=None):
    """Training loss and ``error_label`` against steps, wall and process CPU seconds for
    ``runs`` = {method: [run, …]} (``methods``: a subset, in that order); the CPU panels are
    the fair ones on a shared machine."""
    from experiments.harness.report import save_panels

    names = list(runs) if methods is None else list(methods)

    def curves(k):
        return {m: [np.asarray(x[k]) for x in runs[m]] for m in names}

    panels = []
    for key, label in (("step", "step"), ("wall_time", "wall time (s)"), ("cpu_time", "process CPU time (s)")):
        if all(key in x for m in names for x in runs[m]):
            panels += [dict(curves=curves(y), xs=curves(key), xlabel=label, ylabel=ylab, logy=True)
                       for y, ylab in (("train_loss", "training loss"), ("test_error", error_label))]
    return save_panels(path, panels, suptitle=title)


def report(results) -> list[str]:
    """The tuning lines of a finished study (its table is printed before them)."""
    return [f"tuning {m}: " + ", ".join(f"{row['hparams']}: {row['final_train_loss']:.4g}" for row in t["table"])
            + f" -> {t['winner']}" for m, t in results["tuning"].items() if t["table"]]


def flags(parser) -> None:
    """The classical studies' own flags (config keys as destinations)."""
    for name, kind, text in (("steps", int, "training steps per run"), ("seeds", int, "seeds per method"),
                             ("first-seed", int, "run seeds first-seed, ..., seeds - 1 only"),
                             ("batch-size", int, "mini-batch size"), ("train-size", int, "training images used"),
                             ("eval-size", int, "train / test images the curves are measured on"),
                             ("eval-every", int, "steps between evaluations"),
                             ("tune-steps", int, "steps per grid point on seed 0 (0: no tuning, middle grid point)")):
        parser.add_argument(f"--{name}", type=kind, help=text)
    parser.add_argument("--stop-at-target", action="store_true", default=None,
                        help="stop each non-Adam run once it reaches Adam's best training loss")


def check_config(config: dict, registry: Registry) -> dict:
    """Validated config (``methods`` resolved against ``registry``; kfac-jax dropped when missing)."""
    config = dict(config, methods=registry.select(config["methods"]))
    for name in ("steps", "seeds", "batch_size", "train_size", "eval_size", "eval_every"):
        if config[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {config[name]}")
    if not 0 <= config["first_seed"] < config["seeds"]:
        raise ValueError(f"need 0 <= --first-seed < --seeds, got {config['first_seed']}, {config['seeds']}")
    if config["tune_steps"] < 0:
        raise ValueError(f"--tune-steps must be >= 0, got {config['tune_steps']}")
    if config["batch_size"] > config["train_size"]:
        raise ValueError(f"--batch-size {config['batch_size']} exceeds --train-size {config['train_size']}")
    return config


def mnist(config: dict):
    """MNIST (``classical.data.load_mnist``) after checking the requested subset sizes."""
    from classical.data import load_mnist

    data = load_mnist()
    if config["train_size"] > len(data.x_train) or config["eval_size"] > len(data.x_test):
        raise ValueError(f"MNIST has {len(data.x_train)} train / {len(data.x_test)} test images")
    return data


def autoencoder_setup(config: dict, registry, name: str) -> tuple[dict, dict]:
    """The autoencoder studies' checked config and data: the first ``train_size`` MNIST images
    as (x, x), and ``eval_size`` train / test images for the evaluations."""
    config = check_config(config, registry)
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    data = mnist(config)
    x = data.x_train[: config["train_size"]]
    ev_tr, ev_te = x[: config["eval_size"]], data.x_test[: config["eval_size"]]
    print(f"{name}: {config['train_size']} images, batch {config['batch_size']}, {config['steps']} steps, "
          f"{config['seeds']} seed(s), methods {config['methods']}, tuning {config['tune_steps']} steps/grid point")
    return config, {"train": (x, x), "eval_train": (ev_tr, ev_tr), "eval_test": (ev_te, ev_te)}
