"""CLI command `predictor fit`: evaluate sampled subnets of a supernet and fit the accuracy predictor."""

from __future__ import annotations

import argparse
import json

from edgenas.accuracy import DEFAULT_KIND, KINDS
from edgenas.accuracy.proxies import PROXIES, format_report, proxy_report
from edgenas.errors import UsageError
from edgenas.settings import add_flag


def register(sub: argparse._SubParsersAction) -> None:
    predictor = sub.add_parser("predictor", help="accuracy predictor of a supernet (fit, eval)")
    actions = predictor.add_subparsers(dest="predictor_command", metavar="ACTION")
    fit = actions.add_parser("fit", help="evaluate sampled subnets on the holdout split and fit the accuracy predictor")
    fit.add_argument("--supernet", required=True, metavar="CKPT", help="supernet checkpoint (supernet.pt)")
    add_flag(fit, "samples")
    add_flag(fit, "test")
    add_flag(fit, "seed", help="sampling and fitting seed")
    fit.add_argument("--store", default=None, help="SQLite store of evaluations (default: $EDGENAS_STORE, "
                     "else latency_tables/store.sqlite)")
    fit.add_argument("--out", default=None, help="predictor file (default: accuracy_predictor.npz beside CKPT)")
    add_flag(fit, "workers", help="evaluation processes")
    add_flag(fit, "bn_batches")

    fit.add_argument("--kind", choices=KINDS, default=DEFAULT_KIND,
                     help="gp (Gaussian process on encoding + cost, with an interval) or mlp (Once-for-All's) "
                     "(default: %(default)s)")
    fit.add_argument("--json", action="store_true", help="print the result as JSON")
    fit.set_defaults(handler="edgenas.cli.accuracy:run_fit")

    ev = actions.add_parser("eval", help="rank subnets the predictor never saw against a paired measurement "
                            "(tau, Spearman, RMSE, top-k hits, noise ceiling)")
    ev.add_argument("--supernet", required=True, metavar="CKPT", help="supernet checkpoint (supernet.pt)")
    ev.add_argument("--predictor", default=None, metavar="FILE",
                    help="accuracy predictor (default: accuracy_predictor.npz beside CKPT)")
    ev.add_argument("--holdout", type=int, default=60, metavar="N",
                    help="subnets to measure, none of them in the store's evaluations (default: %(default)s)")
    ev.add_argument("--top-k", type=int, default=5, help="k of the top-k hit rate (default: %(default)s)")
    add_flag(ev, "seed", help="seed of the drawn subnets and of the image halves")
    ev.add_argument("--store", default=None, help="SQLite store of evaluations (default: $EDGENAS_STORE, "
                    "else latency_tables/store.sqlite)")
    add_flag(ev, "bn_batches")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.set_defaults(handler="edgenas.cli.accuracy:run_eval")

    register_proxies(sub)


def run_fit(args: argparse.Namespace) -> int:
    # deferred: edgenas.accuracy.fit loads when the command runs, not for `edgenas --help`
    from edgenas.accuracy.fit import fit_predictor

    if args.samples < 1 or args.test < 1 or args.workers < 1:
        raise UsageError("--samples, --test and --workers must be positive integers")
    # deferred: torch, edgenas.inputs load when the command runs, not for `edgenas --help`
    from edgenas.inputs import output_file
    from edgenas.train.checkpoint import load_checkpoint_info

    if args.out is not None:
        output_file(args.out, "--out")
    load_checkpoint_info(args.supernet)  # a missing or damaged checkpoint is one line before any work
    result = fit_predictor(args.supernet, samples=args.samples, test=args.test, seed=args.seed, store_path=args.store,
                           out=args.out, workers=args.workers, bn_batches=args.bn_batches,
                           kind=args.kind)
    if result is None:  # a non-zero torchrun rank: rank 0 fits and reports
        return 0
    if args.json:
        # deferred: edgenas.artifacts loads when the command runs, not for `edgenas --help`
        from edgenas.artifacts import undefined_as_null

        print(json.dumps(undefined_as_null(result.to_dict()), indent=2))  # a GP has no early-stopping figures
        return 0
    fit = result.fit
    print(f"accuracy predictor: {result.path}")
    print(f"  archs evaluated: {result.samples} ({result.evaluated_now} now, the rest from the store)")
    if fit.val_size:
        print(f"  fitted on {fit.train_size} (early stopping on {fit.val_size}), best epoch {fit.best_epoch}/{fit.epochs}")
    else:
        print(f"  fitted on {fit.train_size} ({args.kind})")
    print(f"  test on {result.test_size} held-out archs: RMSE {result.test_rmse:.4f}, "
          f"Kendall tau {result.test_kendall_tau:.3f}")
    if result.paired_images is not None:
        print(f"  the same archs on {result.paired_images} val + holdout images (paired): Kendall tau "
              f"{result.paired_kendall_tau:.3f}, Spearman {result.paired_spearman:.3f}, RMSE "
              f"{result.paired_rmse_points:.2f} points, top-k hit rate {result.paired_top_k_hit_rate:.2f}; "
              f"noise ceiling {result.noise_ceiling:.3f}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    # deferred: torch, edgenas.accuracy.evaluation load when the command runs, not for `edgenas --help`
    from edgenas.accuracy.evaluation import format_eval, predictor_eval
    from edgenas.train.checkpoint import load_checkpoint_info

    if args.holdout < 3:
        raise UsageError(f"--holdout {args.holdout} must be at least 3 (a rank correlation needs subnets to rank)")
    if not 1 <= args.top_k <= args.holdout:
        raise UsageError(f"--top-k {args.top_k} must be between 1 and --holdout ({args.holdout})")
    if args.bn_batches < 1:
        raise UsageError(f"--bn-batches {args.bn_batches} must be a positive integer")
    load_checkpoint_info(args.supernet)  # a missing or damaged checkpoint is one line before any work
    result = predictor_eval(args.supernet, predictor_path=args.predictor, holdout=args.holdout, seed=args.seed,
                            store_path=args.store, bn_batches=args.bn_batches, k=args.top_k, progress=not args.json)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_eval(result))
    return 0


def register_proxies(sub: argparse._SubParsersAction) -> None:
    """Add `edgenas proxies` to the CLI's subparsers (handler resolved lazily)."""
    p = sub.add_parser("proxies", help="zero-cost proxies' Kendall tau against real subnet accuracy")
    p.add_argument("--supernet", required=True, metavar="CKPT", help="supernet checkpoint (supernet.pt)")
    p.add_argument("--samples", type=int, default=100, help="archs to rank (stored evaluations first; "
                   "the rest evaluated now) (default: %(default)s)")

    p.add_argument("--proxies", default=",".join(PROXIES), help="comma-separated (default: all: %(default)s)")
    p.add_argument("--at-init", action="store_true", help="score a freshly initialised supernet, not the trained one")
    p.add_argument("--batch-size", type=int, default=32, help="images in the scoring batch (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling, batch and initialisation seed (default: %(default)s)")
    p.add_argument("--store", default=None, help="SQLite store of evaluations (default: $EDGENAS_STORE, "
                   "else latency_tables/store.sqlite)")
    p.add_argument("--bn-batches", type=int, default=8, help="training batches for BN recalibration "
                   "(default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler="edgenas.cli.accuracy:run_proxies")


def run_proxies(args: argparse.Namespace) -> int:
    names = [n.strip() for n in str(args.proxies).split(",") if n.strip()]
    if not names:
        raise UsageError("--proxies is empty: give a comma-separated list, e.g. synflow,naswot")
    if args.batch_size < 2:
        raise UsageError(f"--batch-size {args.batch_size} must be at least 2 (naswot and jacov compare images)")
    report = proxy_report(args.supernet, samples=args.samples, names=names, seed=args.seed, store_path=args.store,
                          at_init=args.at_init, batch_size=args.batch_size, bn_batches=args.bn_batches,
                          progress=not args.json)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    return 0
