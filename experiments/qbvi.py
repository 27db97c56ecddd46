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
(mean over test points of log (1/200) Σ_s p(y | x, θ_s)). Reference for the logistic
problems: the **Laplace approximation around the MAP** (no MCMC package — blackjax,
numpyro — is installed beside jax 0.7.1 here), whose predictive log-likelihood is reported.

    qgeom qbvi            # quick: breast-cancer, 300 iterations, 1 seed, fixed step sizes
    qgeom qbvi --full     # all problems, 3000 iterations, 5 seeds, step sizes tuned on seed 0

Writes ``results/qbvi/{summary.json,summary.md,curves.png}``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

import qgeom  # noqa: F401  (float64)
from classical.vi import BBVI, QBVI, ReparamVI, kl_to_prior
from experiments.harness import Method, MethodSpec, Registry, train
from experiments.harness.cli import Study
from experiments.harness.report import markdown_table, save_panels
from experiments.harness.store import atomic_write_json, atomic_write_text

METHODS = Registry(
    MethodSpec("qbvi", "QBVI (natural)", lambda lr, **kw: QBVI(learning_rate=lr, **kw), (0.02, 0.08, 0.2), (0.08,)),
    MethodSpec("bbvi-sgd", "BBVI, SGD", lambda lr, **kw: BBVI(optimizer=optax.sgd(lr), **kw), (1e-5, 1e-4, 1e-3), (1e-4,)),
    MethodSpec("bbvi-adam", "BBVI, Adam", lambda lr, **kw: BBVI(optimizer=optax.adam(lr), **kw), (3e-3, 1e-2, 3e-2), (1e-2,)),
    MethodSpec("reparam-adam", "reparam. VI, Adam", lambda lr, **kw: ReparamVI(optimizer=optax.adam(lr), **kw),
               (3e-3, 1e-2, 3e-2), (1e-2,)),
)

DEFAULT = {"methods": list(METHODS), "problems": ["breast-cancer"], "steps": 300, "seeds": 1, "eval_every": 25,
           "tune_steps": 0}
FULL = dict(DEFAULT, problems=["breast-cancer", "iris", "digits-bnn"], steps=3000, seeds=5, eval_every=100,
            tune_steps=1000)


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


def laplace(point_ll, dim, prior_var, xtr, ytr, xte, yte, key):
    """MAP by L-BFGS, Laplace N(θ_MAP, H⁻¹), its held-out predictive log-likelihood."""
    neg = jax.jit(lambda t: -jnp.sum(point_ll(t, xtr, ytr)) + 0.5 * t @ t / prior_var)
    res = scipy.optimize.minimize(lambda t: float(neg(t)), np.zeros(dim), jac=lambda t: np.asarray(jax.grad(neg)(t)),
                                  method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-9})
    cov = np.linalg.inv(np.asarray(jax.hessian(neg)(jnp.asarray(res.x))))
    thetas = res.x + jax.random.normal(key, (200, dim)) @ np.linalg.cholesky(cov).T
    return res.x, predictive_ll(point_ll, thetas, xte, yte)


def predictive_ll(point_ll, thetas, x, y):
    lls = jax.vmap(lambda t: point_ll(t, x, y))(thetas)  # (S, n_test)
    return float(jnp.mean(jax.nn.logsumexp(lls, axis=0) - np.log(thetas.shape[0])))


def one_run(vi, point_ll, data, config, seed, steps):
    xtr, ytr, xte, yte = data
    step = jax.jit(vi.step)
    z = jax.random.normal(jax.random.PRNGKey(99), (200, vi.dim))
    ll_sum = jax.jit(lambda ths: jax.vmap(lambda t: jnp.sum(point_ll(t, xtr, ytr)))(ths))
    method = Method(init=lambda params, key, batch_at: vi.init(jnp.zeros(vi.dim)),
                    step=lambda st, batch, key, t: (lambda s, i: (s, {"loss": -i["elbo"], "ok": i["finite"]}))(
                        *step(st, None, key)), params=lambda st: st, keyed=True)

    def evaluate(state, t):
        mean, cov = vi.mean_cov(state)
        thetas = mean + z * np.sqrt(np.asarray(cov))
        elbo = float(jnp.mean(ll_sum(thetas)) - kl_to_prior(mean, cov, vi.prior_mean, vi.prior_var))
        return {"elbo": elbo, "pred_ll": predictive_ll(point_ll, thetas, xte, yte)}

    every = config["eval_every"]
    run = train(method, None, steps, key=jax.random.PRNGKey(seed), evaluate=evaluate,
                eval_at=lambda t: t % every == 0)
    ev = run["evals"]
    return {"steps": ev["step"], "wall": ev["wall_time"], "elbo": ev["elbo"], "pred_ll": ev["pred_ll"],
            "status": run["status"], "mean": np.asarray(vi.mean_cov(run["state"])[0]).tolist()}


def _build(name, lr, point_ll, dim, prior_var, xtr, ytr):
    return METHODS[name].build(lr, loglik=lambda t, b: jnp.sum(point_ll(t, xtr, ytr)), dim=dim, prior_var=prior_var)


def run_problem(pname, config, names, outdir):
    point_ll, dim, prior_var, *data = problem(pname)
    short = config["tune_steps"] == 0
    runs, lrs = {}, {}
    for name in names:
        grid = METHODS[name].grid_for(short)
        if len(grid) > 1 and not short:  # tune on seed 0 by the final ELBO at tune_steps
            scores = [np.mean(one_run(_build(name, lr, point_ll, dim, prior_var, *data[:2]), point_ll, data, config,
                                      0, config["tune_steps"])["elbo"][-3:]) for lr in grid]
            lrs[name] = grid[int(np.nanargmax(scores))]
        else:
            lrs[name] = grid[0]
        runs[name] = [one_run(_build(name, lrs[name], point_ll, dim, prior_var, *data[:2]), point_ll, data, config,
                              seed, config["steps"]) for seed in range(config["seeds"])]
    ref = None
    if pname != "digits-bnn":
        theta_map, ref_pll = laplace(point_ll, dim, prior_var, *data, jax.random.PRNGKey(5))
        ref = {"kind": "Laplace around the MAP", "pred_ll": ref_pll,
               "mean_dist": {m: float(np.mean([np.linalg.norm(np.asarray(r["mean"]) - theta_map) for r in runs[m]]))
                             for m in names}}
    final = {m: np.array([r["elbo"][-1] for r in runs[m]]) for m in names}
    best = max(final[m].mean() for m in names)
    target = best - max(1.0, 0.01 * abs(best))

    def reach(r):
        hit = [s for s, e in zip(r["steps"], r["elbo"]) if e >= target]
        return hit[0] if hit else None

    table = {}
    for m in names:
        hits = [reach(r) for r in runs[m]]
        ok = [h for h in hits if h is not None]
        table[m] = {"lr": lrs[m], "final_elbo": float(final[m].mean()), "final_elbo_sd": float(final[m].std()),
                    "pred_ll": float(np.mean([r["pred_ll"][-1] for r in runs[m]])),
                    "steps_to_target": float(np.median(ok)) if ok else None, "reached": f"{len(ok)}/{len(hits)}",
                    "wall_s": float(np.mean([r["wall"][-1] for r in runs[m]]))}
    return {"runs": runs, "table": table, "target": target, "reference": ref}


def run_study(config: dict, outdir, *, fresh: bool = False, progress: bool = True):
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    names = METHODS.select(config["methods"])
    results, lines, panels, verdicts = {}, [], [], []
    for pname in config["problems"]:
        res = results[pname] = run_problem(pname, config, names, outdir)
        t = res["table"]
        rows = [[METHODS.label(m), f"{t[m]['lr']:g}", f"{t[m]['final_elbo']:.2f} ± {t[m]['final_elbo_sd']:.2f}",
                 f"{t[m]['pred_ll']:.4f}", "—" if t[m]["steps_to_target"] is None else
                 f"{t[m]['steps_to_target']:.0f} ({t[m]['reached']})", f"{t[m]['wall_s']:.1f}"] for m in names]
        ref = res["reference"]
        lines += [f"### {pname}", ""] + markdown_table(
            ["method", "step size", "final ELBO (mean ± sd over seeds)", "test pred. LL / point",
             f"steps to ELBO ≥ {res['target']:.1f}", "wall s"], rows)
        if ref:
            lines += ["", f"Reference ({ref['kind']}): test predictive LL {ref['pred_ll']:.4f} per point."]
        lines.append("")
        q = t.get("qbvi", {}).get("steps_to_target")
        others = [t[m]["steps_to_target"] for m in names if m.startswith("bbvi")]
        if q is not None and all(o is None or q < o for o in others):
            verdicts.append(f"{pname}: QBVI reaches the ELBO target before the black-box (BBVI) baselines.")
        else:
            verdicts.append(f"{pname}: QBVI does not reach the ELBO target before every BBVI baseline.")
        curves = {METHODS.label(m): [np.asarray(r["elbo"]) for r in res["runs"][m]] for m in names}
        for xname, key in (("iteration", "steps"), ("wall time (s)", "wall")):
            panels.append({"curves": curves, "xlabel": xname, "ylabel": "ELBO", "title": pname,
                           "xs": {METHODS.label(m): [np.asarray(r[key], float) for r in res["runs"][m]] for m in names}})
    plot = save_panels(outdir / "curves.png", panels)
    verdict = " ".join(verdicts)
    summary = {"config": config, "problems": results, "verdict": verdict, "plot": str(plot), "table": "\n".join(lines)}
    atomic_write_json(outdir / "summary.json", summary)
    atomic_write_text(outdir / "summary.md", "# QBVI study\n\n" + "\n".join(lines) + f"\n{verdict}\n")
    return summary


def _flags(parser) -> None:
    parser.add_argument("--problems", nargs="+", help="subset of breast-cancer iris digits-bnn")
    for k in ("steps", "seeds", "eval_every", "tune_steps"):
        parser.add_argument("--" + k.replace("_", "-"), dest=k, type=int)


STUDY = Study("qbvi", __doc__, run_study, DEFAULT, FULL, _flags, lambda s: [s["verdict"], f"plot: {s['plot']}"])
main = STUDY.main


if __name__ == "__main__":
    raise SystemExit(main())
