"""Gaussian VI: QBVI (natural gradient, black box) against BBVI (same estimator) and reparameterization VI.

Problems (all data bundled with scikit-learn, 80/20 train/test split, seed 0):

* ``breast-cancer`` — Bayesian logistic regression, 30 standardized features + intercept, prior N(0, 5I)
  (the QBVI reference example's prior variance);
* ``iris`` — logistic regression, versicolor vs virginica, 4 features + intercept, prior N(0, 5I);
* ``digits-bnn`` — a Bayesian 64-8-10 tanh network on 8×8 digits (610 weights), prior N(0, I).

Methods (diagonal Gaussian family, S = 25 samples per step, full-batch likelihood):
``qbvi`` (QBVI with the reference code's defaults, β = 0.08), ``bbvi-sgd`` / ``bbvi-adam``
(score-function gradient with QBVI's control variate, Euclidean in (μ, log σ), optax SGD /
Adam), ``reparam-adam`` (reparameterization gradient, Adam). Per evaluation: the ELBO
(200 fixed reparameterized draws) and the held-out posterior predictive log-likelihood
(mean over test points of log (1/200) Σ_s p(y | x, θ_s)), against iterations and process
CPU seconds (the harness's clock of the steps alone). Reference posterior for the logistic
problems: ``nuts`` — numpyro's NUTS, 4 chains × (1000 warm-up + 2000) draws, with split
R-hat and bulk ESS — or ``laplace`` (the Laplace approximation around the MAP); each VI
fit is compared with it by max |μ − μ_ref|/sd_ref and the geometric-mean sd ratio. The
BNN's posterior is multimodal, so it gets no reference.

Every run (problem, method, step size, seed) is checkpointed at each evaluation and its
result stored as a cell under ``results/qbvi/checkpoints/`` (the NUTS reference too): a
killed study resumes to the same numbers; ``--fresh`` starts over.

    qgeom qbvi            # quick: breast-cancer, 300 iterations, 1 seed, fixed step sizes, Laplace
    qgeom qbvi --full     # all problems, 3000 iterations, 5 seeds, step sizes tuned on seed 0
                          # (1000 iterations, best mean of the last three ELBO evaluations), NUTS

Writes ``results/qbvi/{summary.json,summary.md,curves.png}``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

import qgeom  # noqa: F401  (float64)
from classical.vi import BBVI, QBVI, ReparamVI, kl_to_prior
from experiments.harness import Cells, Checkpoint, Method, MethodSpec, Registry, cell_key, train
from experiments.harness.analysis import first_below
from experiments.harness.cli import Study
from experiments.harness.report import fmt, markdown_table, reached_tag, save_panels
from experiments.harness.store import atomic_write_json, atomic_write_text, checkpoint_dir
from experiments.harness.tune import tune

METHODS = Registry(
    MethodSpec("qbvi", "QBVI (natural)", lambda lr, **kw: QBVI(learning_rate=lr, **kw), (0.02, 0.08, 0.2), (0.08,)),
    MethodSpec("bbvi-sgd", "BBVI, SGD", lambda lr, **kw: BBVI(optimizer=optax.sgd(lr), **kw), (1e-5, 1e-4, 1e-3), (1e-4,)),
    MethodSpec("bbvi-adam", "BBVI, Adam", lambda lr, **kw: BBVI(optimizer=optax.adam(lr), **kw), (3e-3, 1e-2, 3e-2), (1e-2,)),
    MethodSpec("reparam-adam", "reparam. VI, Adam", lambda lr, **kw: ReparamVI(optimizer=optax.adam(lr), **kw),
               (3e-3, 1e-2, 3e-2), (1e-2,)),
)

PROBLEMS = ("breast-cancer", "iris", "digits-bnn")
DEFAULT = {"methods": list(METHODS), "problems": ["breast-cancer"], "steps": 300, "seeds": 1, "eval_every": 25,
           "tune_steps": 0, "reference": "laplace", "nuts_warmup": 1000, "nuts_samples": 2000, "nuts_chains": 4}
FULL = dict(DEFAULT, problems=list(PROBLEMS), steps=3000, seeds=5, eval_every=100, tune_steps=1000,
            reference="nuts")


def _split(x, y, seed=0):
    perm = np.random.default_rng(seed).permutation(len(y))
    k = int(round(0.8 * len(y)))
    return x[perm[:k]], y[perm[:k]], x[perm[k:]], y[perm[k:]]


def problem(name):
    """(log_lik(θ, data) per point, dim, prior_var, train, test)."""
    import sklearn.datasets as ds

    if name in ("breast-cancer", "iris"):
        if name == "breast-cancer":
            b = ds.load_breast_cancer()
            x, y = b.data, b.target
        else:
            b = ds.load_iris()
            keep = b.target > 0
            x, y = b.data[keep], (b.target[keep] == 2).astype(int)
        x = (x - x.mean(0)) / x.std(0)
        x = np.concatenate([np.ones((len(y), 1)), x], axis=1)

        def point_ll(theta, xb, yb):
            z = xb @ theta
            return yb * jax.nn.log_sigmoid(z) + (1 - yb) * jax.nn.log_sigmoid(-z)

        return point_ll, x.shape[1], 5.0, *_split(x, y.astype(float))
    if name == "digits-bnn":
        b = ds.load_digits()
        x, y = b.data / 16.0, b.target
        hidden, dim = 8, 64 * 8 + 8 + 8 * 10 + 10

        def point_ll(theta, xb, yb):
            w1 = theta[: 64 * hidden].reshape(64, hidden)
            b1 = theta[64 * hidden : 64 * hidden + hidden]
            w2 = theta[64 * hidden + hidden : -10].reshape(hidden, 10)
            logits = jnp.tanh(xb @ w1 + b1) @ w2 + theta[-10:]
            return jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None].astype(int), axis=1)[:, 0]

        return point_ll, dim, 1.0, *_split(x, y)
    raise ValueError(f"unknown problem {name!r}; choose from breast-cancer, iris, digits-bnn")


def _neg_log_post(point_ll, prior_var, x, y):
    return jax.jit(lambda t: -jnp.sum(point_ll(t, x, y)) + 0.5 * t @ t / prior_var)


def laplace(point_ll, dim, prior_var, xtr, ytr):
    """MAP by L-BFGS and the Laplace approximation N(θ_MAP, H⁻¹) (H: Hessian of −log posterior)."""
    neg = _neg_log_post(point_ll, prior_var, xtr, ytr)
    res = scipy.optimize.minimize(lambda t: float(neg(t)), np.zeros(dim), jac=lambda t: np.asarray(jax.grad(neg)(t)),
                                  method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-9})
    return res.x, np.linalg.inv(np.asarray(jax.hessian(neg)(jnp.asarray(res.x))))


def nuts(neg_log_post, dim, key, *, warmup=1000, samples=2000, chains=4, init_scale=0.5):
    """NUTS (numpyro, Hoffman & Gelman 2014) on ``neg_log_post(θ)``: ``chains`` vectorized chains
    started at N(0, init_scale²I), ``warmup`` adaptation steps, ``samples`` draws each.

    Returns the draws (chains, samples, dim) and the per-coordinate split R-hat and bulk ESS
    (``numpyro.diagnostics``)."""
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
    from numpyro.infer import MCMC, NUTS

    k_init, k_run = jax.random.split(key)
    mcmc = MCMC(NUTS(potential_fn=neg_log_post), num_warmup=warmup, num_samples=samples, num_chains=chains,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(k_run, init_params=init_scale * jax.random.normal(k_init, (chains, dim)))
    draws = np.asarray(mcmc.get_samples(group_by_chain=True))
    return draws, np.asarray(split_gelman_rubin(draws)), np.asarray(effective_sample_size(draws))


def reference(kind, point_ll, dim, prior_var, data, key, nuts_kw=None):
    """The reference posterior of a logistic problem: ``"nuts"`` (numpyro NUTS, with R-hat and
    ESS) or ``"laplace"`` (around the MAP); its mean, sd and held-out predictive LL."""
    xtr, ytr, xte, yte = data
    if kind == "nuts":
        draws, rhat, ess = nuts(_neg_log_post(point_ll, prior_var, xtr, ytr), dim, key, **(nuts_kw or {}))
        flat = draws.reshape(-1, dim)
        thin = flat[:: max(1, len(flat) // 1000)]
        return {"kind": "NUTS (numpyro)", "mean": flat.mean(0), "sd": flat.std(0), "max_rhat": float(rhat.max()),
                "min_ess": float(ess.min()), "draws": int(len(flat)), "pred_ll": predictive_ll(point_ll, thin, xte, yte)}
    if kind != "laplace":
        raise ValueError(f"reference must be 'nuts' or 'laplace', got {kind!r}")
    mode, cov = laplace(point_ll, dim, prior_var, xtr, ytr)
    thetas = mode + jax.random.normal(key, (1000, dim)) @ np.linalg.cholesky(cov).T
    return {"kind": "Laplace around the MAP", "mean": mode, "sd": np.sqrt(np.diag(cov)),
            "pred_ll": predictive_ll(point_ll, thetas, xte, yte)}


def predictive_ll(point_ll, thetas, x, y):
    lls = jax.vmap(lambda t: point_ll(t, x, y))(thetas)  # (S, n_test)
    return float(jnp.mean(jax.nn.logsumexp(lls, axis=0) - np.log(thetas.shape[0])))


@functools.cache
def _setup(pname, name, lr):
    """(vi, jitted step, jitted ELBO / predictive evaluation, data) of one problem and method, built once."""
    point_ll, dim, prior_var, *data = problem(pname)
    xtr, ytr, xte, yte = data
    vi = METHODS[name].build(lr, loglik=lambda t, b: jnp.sum(point_ll(t, xtr, ytr)), dim=dim, prior_var=prior_var)
    z = jax.random.normal(jax.random.PRNGKey(99), (200, vi.dim))

    @jax.jit
    def evaluate(mean, cov):
        thetas = mean + z * jnp.sqrt(cov)
        lls = jax.vmap(lambda t: point_ll(t, xtr, ytr))(thetas).sum(1)
        pred = jax.vmap(lambda t: point_ll(t, xte, yte))(thetas)
        return (jnp.mean(lls) - kl_to_prior(mean, cov, vi.prior_mean, vi.prior_var),
                jnp.mean(jax.nn.logsumexp(pred, axis=0) - np.log(thetas.shape[0])))

    return vi, jax.jit(vi.step), evaluate


def one_run(pname, name, lr, config, seed, steps, checkpoint=None, on_step=None):
    """One (problem, method, step size, seed): ELBO (200 fixed reparameterized draws) and held-out
    predictive LL at every evaluation; final mean and sd."""
    vi, step, evaluate = _setup(pname, name, lr)

    def do_step(st, batch, key, t):
        st, info = step(st, None, key)
        return st, {"loss": -info["elbo"], "ok": info["finite"]}

    method = Method(init=lambda params, key, batch_at: vi.init(jnp.zeros(vi.dim)), step=do_step,
                    params=lambda st: st, keyed=True)

    def ev(state, t):
        elbo, pred = evaluate(*vi.mean_cov(state))
        return {"elbo": elbo, "pred_ll": pred}

    every = config["eval_every"]
    run = train(method, None, steps, key=jax.random.PRNGKey(seed), evaluate=ev, eval_at=lambda t: t % every == 0,
                checkpoint=checkpoint, on_step=on_step)
    if run["diverged"]:
        print(f"[{pname} {name} lr={lr} s{seed}] {run['status']}: stopped at step {run['t']}")
    mean, cov = vi.mean_cov(run["state"])
    e = run["evals"]
    return {"steps": e["step"], "wall": e["wall_time"], "cpu": e["cpu_time"], "elbo": e["elbo"],
            "pred_ll": e["pred_ll"], "status": run["status"], "diverged": run["diverged"],
            "mean": np.asarray(mean).tolist(), "sd": np.sqrt(np.asarray(cov)).tolist()}


def run_problem(pname, config, names, cells, ckdir, on_step=None):
    def cell(name, lr, seed, steps):
        key = cell_key(problem=pname, method=name, lr=lr, seed=seed, steps=steps, eval_every=config["eval_every"])
        path = ckdir / f"{pname}-{name}-{lr:g}-s{seed}-{steps}.run.pkl"
        out = cells.run(key, lambda: one_run(pname, name, lr, config, seed, steps, Checkpoint(path), on_step))
        Checkpoint(path).clear()
        return out

    short = config["tune_steps"] == 0
    runs, lrs = {}, {}
    for name in names:
        grid = METHODS[name].grid_for(short)
        if len(grid) > 1 and not short:  # tune on seed 0 by the mean of the last three ELBO evaluations
            res = tune(grid, lambda lr: cell(name, lr, 0, config["tune_steps"]), lambda r: -np.mean(r["elbo"][-3:]))
            lrs[name] = res["winner"]
        else:
            lrs[name] = grid[0]
        runs[name] = [cell(name, lrs[name], seed, config["steps"]) for seed in range(config["seeds"])]
    ref = None
    if pname != "digits-bnn" and config["reference"] != "none":
        point_ll, dim, prior_var, *data = problem(pname)
        kw = {k: config["nuts_" + k] for k in ("warmup", "samples", "chains")}
        ref = cells.run(cell_key(problem=pname, reference=config["reference"], **kw),
                        lambda: reference(config["reference"], point_ll, dim, prior_var, data, jax.random.PRNGKey(5), kw))
        ref = dict(ref, **{k: {m: float(np.mean([f(r) for r in runs[m]])) for m in names} for k, f in (
            ("mean_err", lambda r: np.max(np.abs(np.asarray(r["mean"]) - ref["mean"]) / ref["sd"])),
            ("sd_ratio", lambda r: np.exp(np.mean(np.log(np.asarray(r["sd"]) / ref["sd"])))))})
    return {"runs": runs, "lrs": lrs, "reference": ref, **summarize(runs)}


REPORT_AT = (100, 300, 1000)  # iterations at which the table shows the seed-mean ELBO


def summarize(runs):
    """Final ELBO and predictive LL (mean ± SE over seeds), the seed-mean ELBO at ``REPORT_AT``
    iterations, and iterations / CPU seconds until the ELBO first reaches the target (best
    method's final seed-mean ELBO minus max(1, 1 %))."""
    final = {m: np.array([r["elbo"][-1] for r in rs]) for m, rs in runs.items()}
    best = max(np.nanmean(f) for f in final.values())
    target = best - max(1.0, 0.01 * abs(best))
    table = {}
    for m, rs in runs.items():
        hits = [first_below(-np.asarray(r["elbo"], float), -target) for r in rs]
        ok = [(r["steps"][k], r["cpu"][k]) for r, k in zip(rs, hits) if k is not None]
        pred = np.array([r["pred_ll"][-1] for r in rs])
        se = (lambda a: float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else None)
        table[m] = {"final_elbo": float(final[m].mean()), "final_elbo_se": se(final[m]),
                    "pred_ll": float(pred.mean()), "pred_ll_se": se(pred),
                    "steps_to_target": float(np.mean([s for s, _ in ok])) if ok else None,
                    "cpu_to_target": float(np.mean([c for _, c in ok])) if ok else None,
                    "reached": f"{len(ok)}/{len(rs)}", "cpu_s": float(np.mean([r["cpu"][-1] for r in rs])),
                    "diverged": int(sum(r["diverged"] for r in rs)),
                    "elbo_at": {k: float(np.mean([r["elbo"][r["steps"].index(k)] for r in rs])) for k in REPORT_AT
                                if all(k in r["steps"] for r in rs)}}
    return {"table": table, "target": target}


def check_config(config):
    """Refuse bad settings before any training."""
    for k in ("steps", "seeds", "eval_every", "nuts_warmup", "nuts_samples", "nuts_chains"):
        if int(config[k]) != config[k] or config[k] < 1:
            raise ValueError(f"{k} must be a positive integer, got {config[k]!r}")
    if int(config["tune_steps"]) != config["tune_steps"] or config["tune_steps"] < 0:
        raise ValueError(f"tune_steps must be an integer >= 0, got {config['tune_steps']!r}")
    if config["reference"] not in ("nuts", "laplace", "none"):
        raise ValueError(f"reference must be nuts, laplace or none, got {config['reference']!r}")
    unknown = set(config["problems"]) - set(PROBLEMS)
    if unknown or not config["problems"]:
        raise ValueError(f"unknown problems {sorted(unknown)}; choose from {', '.join(PROBLEMS)}")
    METHODS.select(config["methods"])


def run_study(config: dict, outdir, *, fresh: bool = False, progress: bool = True, on_step=None):
    check_config(config)
    outdir = Path(outdir)
    ckdir = checkpoint_dir(outdir, fresh=fresh)
    cells = Cells(Checkpoint(ckdir / "cells.pkl"))
    names = METHODS.select(config["methods"])
    results, lines, panels, verdicts = {}, [], [], []
    for pname in config["problems"]:
        res = results[pname] = run_problem(pname, config, names, cells, ckdir, on_step)
        lines += [f"### {pname}", ""] + _table_lines(res, names) + [""]
        verdicts.append(_verdict(pname, res["table"], names))
        labels = {m: METHODS.label(m) for m in names}
        for curve, xname, key in (("elbo", "iteration", "steps"), ("elbo", "process CPU seconds", "cpu"),
                                  ("pred_ll", "iteration", "steps")):
            panels.append({"curves": {labels[m]: [np.asarray(r[curve], float)[1:] for r in res["runs"][m]] for m in names},
                           "xs": {labels[m]: [np.asarray(r[key], float)[1:] for r in res["runs"][m]] for m in names},
                           "xlabel": xname, "ylabel": "ELBO" if curve == "elbo" else "test pred. LL / point",
                           "title": pname})
    plot = save_panels(outdir / "curves.png", panels, ncols=3)
    verdict = " ".join(verdicts)
    summary = {"config": config, "problems": results, "verdict": verdict, "plot": str(plot), "table": "\n".join(lines)}
    atomic_write_json(outdir / "summary.json", summary)
    atomic_write_text(outdir / "summary.md", "# QBVI study\n\n" + "\n".join(lines) + f"\n{verdict}\n")
    return summary


def _table_lines(res, names):
    t, ref = res["table"], res["reference"]
    rows = [[METHODS.label(m), f"{res['lrs'][m]:g}", f"{t[m]['final_elbo']:.2f} ± {fmt(t[m]['final_elbo_se'], '.2f')}",
             f"{t[m]['pred_ll']:.4f} ± {fmt(t[m]['pred_ll_se'], '.4f')}",
             " / ".join(f"{v:.1f}" for v in t[m]["elbo_at"].values()) or "—",
             f"{fmt(t[m]['steps_to_target'], '.0f')} / {fmt(t[m]['cpu_to_target'], '.2f')}{reached_tag(t[m]['reached'])}",
             f"{t[m]['cpu_s']:.1f}"] + ([f"{ref['mean_err'][m]:.2f}", f"{ref['sd_ratio'][m]:.2f}"] if ref else [])
            for m in names]
    at = next(iter(t.values()))["elbo_at"]
    head = ["method", "step size", "final ELBO (mean ± SE over seeds)", "test pred. LL / point (± SE)",
            f"ELBO at {' / '.join(map(str, at)) or '—'} it.",
            f"iterations / CPU s to ELBO ≥ {res['target']:.1f}", "CPU s"]
    if ref:
        head += ["μ error (max over coords, in ref. sd)", "sd / ref. sd (geo-mean)"]
    out = markdown_table(head, rows)
    if ref:
        diag = (f"; max split R-hat {ref['max_rhat']:.3f}, min bulk ESS {ref['min_ess']:.0f} of {ref['draws']} draws"
                if "max_rhat" in ref else "")
        out += ["", f"Reference posterior: {ref['kind']}{diag}; test predictive LL {ref['pred_ll']:.4f} per point."]
    return out


def _verdict(pname, t, names):
    if "qbvi" not in t or not any(m.startswith("bbvi") for m in names):
        return f"{pname}: no verdict (needs QBVI and a BBVI baseline)."
    q, others = t["qbvi"], [m for m in names if m.startswith("bbvi")]
    first = q["steps_to_target"] is not None and all(
        t[m]["steps_to_target"] is None or q["steps_to_target"] < t[m]["steps_to_target"] for m in others)
    higher = all(q["final_elbo"] > t[m]["final_elbo"] for m in others)
    early = [k for k in q["elbo_at"] if all(k in t[m]["elbo_at"] for m in others)]
    ahead = "".join(
        f" At {k} iterations QBVI's ELBO is {q['elbo_at'][k]:.1f}, the best BBVI's {max(t[m]['elbo_at'][k] for m in others):.1f}."
        for k in early[:2])
    return (f"{pname}: QBVI " + ("reaches" if first else "does not reach") + " the ELBO target before every BBVI "
            "baseline and ends " + ("above" if higher else "not above") + " them in ELBO." + ahead)


def _flags(parser) -> None:
    parser.add_argument("--problems", nargs="+", help="subset of breast-cancer iris digits-bnn")
    for k in ("steps", "seeds", "eval_every", "tune_steps", "nuts_warmup", "nuts_samples", "nuts_chains"):
        parser.add_argument("--" + k.replace("_", "-"), dest=k, type=int)
    parser.add_argument("--reference", choices=("nuts", "laplace", "none"), help="reference posterior (logistic)")


STUDY = Study("qbvi", __doc__, run_study, DEFAULT, FULL, _flags, lambda s: [s["verdict"], f"plot: {s['plot']}"])
main = STUDY.main


if __name__ == "__main__":
    raise SystemExit(main())
