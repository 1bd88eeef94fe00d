"""Benchmark: accuracy-predictor variants judged on the same subnets none of them saw (issue 43's comparison).

On one supernet (e.g. a demo's `supernet/supernet.pt`), the fitting subnets are the ones the run's predictor stage
draws (`sample_archs` with the run's seed: half uniform, half spread over MACs), the judged ones those of
`edgenas predictor eval --holdout N --seed S` (uniform, none in the store's fitting evaluations). Every subnet is
measured paired (`edgenas.accuracy.measure`: val + holdout images, BN recalibrated on the same batches; stored, so
a re-run only fits). Each variant is fitted on the fitting subnets' targets and judged against the judged subnets'
pooled top-1; the table gives Kendall tau, Spearman, RMSE and the top-5 hit rate, beside the noise ceiling.

Variants: today's MLP (one-hot encoding, logit output) on the holdout split's top-1 as the run measures it
(`--run-bn` batches) and on the paired pooled measurement; the MLP with cost features (log MACs, log params,
resolution) and a zero-cost proxy (synflow of the trained weights); the same with a pairwise ranking loss; an
ensemble of 5 (bootstrap, its spread an interval); scikit-learn's Gaussian process and gradient boosting on the same
features; a ridge regression on the cost features alone (the floor a predictor must beat); and four of them fitted
on the fitting subnets' mean true-class log-likelihood (a less noisy figure of the same images) instead of top-1.

    python tools/bench/predictor_variants.py --supernet DEMO/supernet/supernet.pt --store DEMO/store.sqlite
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edgenas.accuracy.cost_features import CostFeatures  # noqa: E402
from edgenas.accuracy.evaluation import fitted_archs, rank_figures, unseen_archs  # noqa: E402


def _logit(p):
    q = np.clip(np.asarray(p, float), 1e-3, 1 - 1e-3)
    return np.log(q / (1 - q))


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, float)))


def fit_mlp(x, y, *, seed, ranking=False, hidden=(64, 64), epochs=400, weight_decay=1e-3):
    """A small torch MLP on features `x` to logit(top-1) (MSE; with `ranking`, plus a pairwise logistic loss on
    every pair's order). Returns predict(x) -> top-1."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sizes = (x.shape[1], *hidden, 1)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    net = nn.Sequential(*layers[:-1])
    z = _logit(y)
    mu, sd = z.mean(), z.std() + 1e-9
    xt = torch.tensor(x, dtype=torch.float32)
    zt = torch.tensor((z - mu) / sd, dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=weight_decay)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        out = net(xt[perm])[:, 0]
        loss = ((out - zt[perm]) ** 2).mean()
        if ranking:
            d_out = out[:, None] - out[None, :]
            d_true = zt[perm][:, None] - zt[perm][None, :]
            sign = torch.sign(d_true)
            loss = loss + nn.functional.softplus(-sign * d_out)[sign != 0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def predict(xq):
        with torch.no_grad():
            return _sigmoid(net(torch.tensor(xq, dtype=torch.float32))[:, 0].numpy() * sd + mu)

    return predict


def fit_ensemble(x, y, *, seed, members=5, **kw):
    rng = np.random.default_rng(seed)
    fits = []
    for m in range(members):
        idx = rng.integers(0, len(y), len(y))
        fits.append(fit_mlp(x[idx], y[idx], seed=seed * 100 + m, **kw))
    return lambda xq: np.mean([f(xq) for f in fits], axis=0)


def fit_gp(x, y, *, seed):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    z = _logit(y)
    kernel = ConstantKernel(1.0) * RBF(length_scale=np.full(x.shape[1], 3.0), length_scale_bounds=(1e-2, 1e3)) \
        + WhiteKernel(0.1, (1e-5, 10.0))
    gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2, random_state=seed).fit(x, z)
    return lambda xq: _sigmoid(gp.predict(xq))


def fit_gbm(x, y, *, seed):
    from sklearn.ensemble import GradientBoostingRegressor

    gbm = GradientBoostingRegressor(n_estimators=200, max_depth=2, learning_rate=0.05, subsample=0.8,
                                    random_state=seed).fit(x, _logit(y))
    return lambda xq: _sigmoid(gbm.predict(xq))


def fit_ridge(x, y, *, seed):
    from sklearn.linear_model import RidgeCV

    r = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(x, _logit(y))
    return lambda xq: _sigmoid(r.predict(xq))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--supernet", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--samples", type=int, default=60, help="fitting subnets (the demo's predictor samples)")
    p.add_argument("--holdout", type=int, default=60, help="judged subnets (edgenas predictor eval --holdout)")
    p.add_argument("--seed", type=int, default=0, help="the run's seed (fitting subnets) and the judged ones' seed")
    p.add_argument("--run-bn", type=int, default=4, help="BN batches of the run's own measurement (the demo: 4)")
    p.add_argument("--bn-batches", type=int, default=8, help="BN batches of the paired measurement")
    p.add_argument("--fit-seeds", type=int, default=3, help="fits per variant (figures averaged)")
    args = p.parse_args()

    import torch

    from edgenas.accuracy.dataset import AccuracyDataset, sample_archs, top1_metric
    from edgenas.accuracy.fit import SupernetEvaluator
    from edgenas.accuracy.measure import measure_paired
    from edgenas.accuracy.predictor import AccuracyPredictor, free_cores
    from edgenas.store import Store

    torch.set_num_threads(free_cores())
    ev = SupernetEvaluator(args.supernet, "holdout", args.bn_batches)
    space = ev.supernet.space
    fit_archs = sample_archs(space, args.samples, np.random.default_rng(args.seed))
    t0 = time.perf_counter()
    with Store(args.store) as store:
        exclude = fitted_archs(store, ev.info["sha256"])
        judged = unseen_archs(space, args.holdout, args.seed, exclude | set(fit_archs))
        m_judged = measure_paired(ev, judged, store, bn_batches=args.bn_batches)
        m_fit = measure_paired(ev, fit_archs, store, bn_batches=args.bn_batches)
        run_data = AccuracyDataset(store, ev.info["sha256"], ev.dataset.fingerprint, "holdout",
                                   metric=top1_metric(args.run_bn))
        run_archs, run_y = run_data.load(fit_archs)
    print(f"measured in {time.perf_counter() - t0:.0f} s; judged subnets {len(judged)}, images {m_judged.images()}, "
          f"noise ceiling {m_judged.noise_ceiling(args.seed):.3f} (val vs holdout {m_judged.split_ceiling():.3f}); "
          f"fitting subnets {len(fit_archs)} (run's own holdout figures for {len(run_archs)})")
    measured = m_judged.accuracy()
    y_fit = m_fit.accuracy()
    # the fitting subnets' mean true-class log-likelihood on the same images, as a geometric-mean probability in
    # (0, 1] (the predictors' targets must be in [0, 1]; only its order matters for tau against top-1)
    y_fit_ll = np.exp(m_fit.mean_loglik())
    feats = CostFeatures.fit(space, fit_archs, supernet=ev.supernet, dataset=ev.dataset)
    x_fit, x_judged = feats(fit_archs), feats(judged)
    cost_only = slice(space.encoding_size, None)

    def today(archs, y, seed):
        pred, _ = AccuracyPredictor.fit(space, archs, y, seed=seed)
        return pred.predict

    def gp_default(seed, archs=fit_archs, y=y_fit):
        from edgenas.accuracy.gp import GPAccuracyPredictor

        return GPAccuracyPredictor.fit(space, archs, y, seed=seed).predict

    rows = []
    variants = [
        ("MLP today (holdout top-1, run's BN)", lambda s: today(run_archs, run_y, s), judged),
        ("MLP today (paired pooled top-1)", lambda s: today(fit_archs, y_fit, s), judged),
        ("ridge, cost features only", lambda s: fit_ridge(x_fit[:, cost_only], y_fit, seed=s),
         x_judged[:, cost_only]),
        ("MLP + cost + proxy", lambda s: fit_mlp(x_fit, y_fit, seed=s), x_judged),
        ("MLP + cost + proxy, ranking loss", lambda s: fit_mlp(x_fit, y_fit, seed=s, ranking=True), x_judged),
        ("ensemble of 5 (MLP + cost + proxy)", lambda s: fit_ensemble(x_fit, y_fit, seed=s), x_judged),
        ("Gaussian process (encoding + cost + proxy)", lambda s: fit_gp(x_fit, y_fit, seed=s), x_judged),
        ("Gaussian process (cost + proxy)", lambda s: fit_gp(x_fit[:, cost_only], y_fit, seed=s),
         x_judged[:, cost_only]),
        ("GP edgenas.accuracy.gp (encoding + cost)", lambda s: gp_default(s), judged),
        ("GP edgenas.accuracy.gp, holdout top-1, run's BN", lambda s: gp_default(s, run_archs, run_y), judged),
        ("gradient boosting (encoding + cost + proxy)", lambda s: fit_gbm(x_fit, y_fit, seed=s), x_judged),
        ("MLP today, fitted on mean log-likelihood", lambda s: today(fit_archs, y_fit_ll, s), judged),
        ("GP edgenas.accuracy.gp, fitted on mean log-likelihood", lambda s: gp_default(s, fit_archs, y_fit_ll),
         judged),
        ("ridge, cost features only, fitted on mean log-likelihood",
         lambda s: fit_ridge(x_fit[:, cost_only], y_fit_ll, seed=s), x_judged[:, cost_only]),
        ("ensemble of 5, fitted on mean log-likelihood", lambda s: fit_ensemble(x_fit, y_fit_ll, seed=s), x_judged),
    ]
    for name, fit, query in variants:
        figs = []
        t0 = time.perf_counter()
        for s in range(args.fit_seeds):
            predict = fit(s)
            figs.append(rank_figures(predict(query), measured, k=5))
        mean = {k: float(np.mean([f[k] for f in figs])) for k in figs[0]}
        rows.append((name, mean, (time.perf_counter() - t0) / args.fit_seeds))
    print(f"\n{'variant':<58} {'tau':>6} {'rho':>6} {'RMSE pt':>8} {'top-5':>6} {'fit s':>6}")
    for name, f, sec in rows:
        print(f"{name:<58} {f['kendall_tau']:6.3f} {f['spearman']:6.3f} {f['rmse_points']:8.2f} "
              f"{f['top5_hit_rate']:6.2f} {sec:6.1f}")
    print(f"{'noise ceiling (two halves of the images)':<58} {m_judged.noise_ceiling(args.seed):6.3f}")
    print(f"{'mean log-likelihood on one half -> top-1 on the other':<58} "
          f"{m_judged.noise_ceiling(args.seed, statistic='loglik', against='top1'):6.3f}")
    print(f"{'ceiling of the mean log-likelihood':<58} {m_judged.noise_ceiling(args.seed, statistic='loglik'):6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
