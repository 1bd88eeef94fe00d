"""CLI commands `train` (progressive shrinking) and `eval` (BN-recalibrated top-1 of subnets)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgenas.cli.run import EXIT_CHECK_FAILED
from edgenas.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="train a once-for-all supernet with progressive shrinking (resumable, torchrun-ready)",
        description="Train a supernet: full network, then elastic kernel, depth and expand ratio, distilled from the "
        "full network. Settings: preset < --config FILE < flags. Run under `torchrun --nproc-per-node N` for "
        "data-parallel training.")
    train.add_argument("--dataset", help="digits, shapes, folder:PATH, imagenet:PATH, cifar10:PATH or idx:PATH "
                       "(default: the preset's)")
    train.add_argument("--preset", choices=("tiny", "small", "ofa", "finetune"), help="schedule preset (default: "
                       "tiny, or the config file's; finetune: shorter phases at lower rates for --init)")
    train.add_argument("--init", metavar="SUPERNET.pt", help="start from this supernet checkpoint (trained here or "
                       "brought in by `edgenas import ofa`); a new classifier where the class count differs")
    train.add_argument("--config", help="TOML file overriding the preset (see config.toml written by a run)")
    train.add_argument("--out", help="output folder (default: runs/<dataset>-<preset>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--space", help="search-space preset (tiny, mobilenetv3; mcunet for microcontrollers)")
    train.add_argument("--seed", type=int, help="seed for the data split, order and subnet sampling")
    train.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    train.add_argument("--steps", type=int, help="run exactly this many steps in every phase (quick trials)")
    train.add_argument("--total-steps", type=int, metavar="N", help="run exactly N steps in all, spread over the "
                       "phases in proportion to their epochs (a fixed length, whatever the machine's speed)")
    train.add_argument("--epochs-scale", type=float, help="multiply every phase's epochs (and max_epochs) by this "
                       "factor")
    train.add_argument("--time-budget", type=float, metavar="SECONDS", help="wall-clock seconds for the training, "
                       "spread over the phases in progressive shrinking's proportions (a phase also stops when its "
                       "validation top-1 stops rising)")
    train.add_argument("--no-compare", action="store_true", help="skip training the largest network alone for "
                       "comparison")
    train.add_argument("--checkpoint-every", type=int, help="steps between resumable checkpoints")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    train.add_argument("--threads", type=int, help="CPU threads per process (default: the idle cores)")
    train.add_argument("--data-workers", type=int, help="worker processes decoding a streamed folder's images (default: "
                       "half the cores, at most 8; 0 reads in the training process)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--json", action="store_true", help="print the final summary as JSON")
    train.add_argument("--force", action="store_true", help="exit 0 even when the supernet failed its training "
                       "check (the failure is still printed; for deliberately short trials)")
    train.set_defaults(handler="edgenas.cli.train:run_train")

    ev = sub.add_parser("eval", help="BN-recalibrated top-1 of subnets of a trained supernet",
                        description="Evaluate subnets of a supernet checkpoint on its dataset, each after re-estimating "
                        "BatchNorm statistics on training batches. Default: the largest and smallest subnets.")
    ev.add_argument("--supernet", help="checkpoint (supernet.pt) or a run folder (default: the run folder "
                    "holding the --arch file)")
    which = ev.add_mutually_exclusive_group()
    which.add_argument("--arch", help="arch as inline JSON or a JSON file")
    which.add_argument("--sample", type=int, metavar="N", help="N random subnets (seeded by --seed)")
    ev.add_argument("--split", default="val", choices=("val", "holdout", "train"), help="(default: %(default)s)")
    ev.add_argument("--dataset", help="evaluate on this dataset instead of the checkpoint's (same classes and channels)")
    ev.add_argument("--seed", type=int, default=0, help="seed for --sample (default: %(default)s)")
    ev.add_argument("--bn-batches", type=int, default=None, help="training batches for BN recalibration")
    ev.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    ev.add_argument("--threads", type=int, help="CPU threads (default: the idle cores)")
    ev.add_argument("--json", action="store_true", help="print results as JSON")
    ev.set_defaults(handler="edgenas.cli.train:run_eval")


def run_train(args: argparse.Namespace) -> int:
    # deferred: numpy, torch load when the command runs, not for `edgenas --help`
    from edgenas.train.config import load_config
    from edgenas.train.trainer import train

    space = args.space
    if args.init is not None and space is None:  # the pretrained supernet's space
        # deferred: torch loads when the command runs, not for `edgenas --help`
        from edgenas.train.finetune import init_space_name

        space = init_space_name(args.init)
    config = load_config(args.config, preset=args.preset, dataset=args.dataset, space=space, seed=args.seed,
                         batch_size=args.batch_size, checkpoint_every=args.checkpoint_every,
                         time_budget=args.time_budget, compare_alone=False if args.no_compare else None,
                         init=args.init, data_workers=args.data_workers)
    if args.epochs_scale is not None:
        config = config.scale_epochs(args.epochs_scale)
    if args.steps is not None:
        if args.steps < 1:
            raise UsageError(f"--steps {args.steps} must be at least 1")
        config = config.fixed_steps(args.steps)
    if args.total_steps is not None:
        if args.steps is not None:
            raise UsageError("give --steps (per phase) or --total-steps (in all), not both")
        config = config.spread_steps(args.total_steps)
    # deferred: numpy, torch load when the command runs, not for `edgenas --help`
    from edgenas.data import check_dataset_spec
    from edgenas.inputs import output_dir, output_files
    from edgenas.train.trainer import default_out_dir

    check_dataset_spec(config.dataset)
    out = args.out if args.out is not None else default_out_dir(config.dataset, config.preset)
    output_dir(out, "--out")
    output_files(out, ("config.toml", "metrics.jsonl", "supernet.pt"), "--out")
    result = train(config, args.out, resume=args.resume, device=args.device, threads=args.threads, progress=not args.no_progress)
    if result.rank == 0 and Path(result.checkpoint).is_file():
        # deferred: edgenas.run_folder loads when the command runs, not for `edgenas --help`
        from edgenas.run_folder import write_manifest

        write_manifest(result.out_dir, made_by="edgenas train", supernet=Path(result.checkpoint))
    if not result.summary or result.rank != 0:
        return 0
    summary = result.summary
    if args.json:
        print(json.dumps({"checkpoint": str(result.checkpoint), **summary}, indent=2))
    elif "val" in summary:
        print(f"supernet: {result.checkpoint}")
        print(f"{'phase':<10} {'steps':>6} {'epochs':>7} {'stopped':>10} {'seconds':>8} {'img/s':>7} {'largest':>8} "
              f"{'smallest':>8}")
        so_far = False  # a phase's smallest is that of the dimensions trained so far (marked *) until all are
        for p in summary["phases"]:
            mark = "*" if p.get("smallest_is_space") is False else ""
            so_far = so_far or bool(mark)
            print(f"{p['phase']:<10} {p['steps']:>6} {p.get('epochs', float('nan')):>7.2f} {p.get('stopped', ''):>10} "
                  f"{p['seconds']:>8.1f} {p['samples_per_s']:>7.0f} {p.get('val_largest', float('nan')):>8.4f} "
                  f"{p.get('val_smallest', float('nan')):>8.4f}{mark}")
        if so_far:
            print("* the smallest subnet of the dimensions trained so far (the space's smallest once it is trained)")
        print("validation top-1 after BN recalibration:")
        for r in summary["val"]:
            print(f"  {r['name']:<8} {r['top1']:.4f}  {json.dumps(r['arch'], separators=(',', ':'))}")
        if "alone" in summary:
            print(f"  the largest network trained alone for the same {summary['alone']['steps']} steps: "
                  f"{summary['alone']['top1']:.4f}")
        if "chance" in summary:
            print(f"  chance (always the most common class): {summary['chance']:.4f}")
        if (summary.get("gate") or {}).get("gap") is not None:
            print(f"  the smallest subnet trails the largest by {100 * summary['gate']['gap']:.1f} points (the check "
                  f"allows {100 * summary['gate']['allowed_gap']:.1f})")
    if "gate" in summary:
        print(f"edgenas train: {summary['gate']['message']}", file=sys.stderr)
        if not summary["gate"]["passed"]:  # one verdict, one exit status: as `edgenas run` stops at this check
            if args.force:
                print(f"edgenas train: WARNING: the training check FAILED; kept anyway (--force): {result.checkpoint}",
                      file=sys.stderr)
                return 0
            print(f"edgenas: error: the training check failed; the trained supernet is kept in {result.checkpoint} "
                  "(`edgenas run --force` with train.checkpoint set to it goes on with it)", file=sys.stderr)
            return EXIT_CHECK_FAILED
    return 0


def run_eval(args: argparse.Namespace) -> int:
    # deferred: numpy, torch load when the command runs, not for `edgenas --help`
    import numpy as np
    import torch

    from edgenas.cost import arch_stats
    from edgenas.data import check_dataset_spec, load_dataset
    from edgenas.inputs import parse_arch
    from edgenas.train.checkpoint import OpenedCheckpoint
    from edgenas.train.evaluate import evaluate_many
    from edgenas.train.trainer import auto_threads

    torch.set_num_threads(args.threads or auto_threads())
    if args.dataset is not None:
        check_dataset_spec(args.dataset)
    opened = OpenedCheckpoint(args.supernet)  # read once: info and supernet
    info, net = opened.info, opened.supernet
    space = net.space
    arch = parse_arch(args.arch, space) if args.arch is not None else None  # an empty --arch '' is refused
    dataset = load_dataset(args.dataset or info["dataset"], seed=info["seed"])
    if not args.dataset and dataset.fingerprint != info["dataset_fingerprint"]:
        raise UsageError(f"dataset {info['dataset']} no longer matches the one {args.supernet} was trained on "
                         f"(fingerprint {dataset.fingerprint}, expected {info['dataset_fingerprint']}): restore the data "
                         "or pass --dataset to evaluate on other data")
    if arch is not None:
        archs, names = [arch], ["arch"]
    elif args.sample is not None:
        if args.sample < 1:
            raise UsageError(f"--sample {args.sample} must be at least 1")
        archs = space.sample_many(np.random.default_rng(args.seed), args.sample)
        names = [f"sample{i}" for i in range(len(archs))]
    else:
        archs, names = [space.largest(), space.smallest()], ["largest", "smallest"]
    bn_batches = args.bn_batches or int(info["config"].get("bn_batches", 8))
    accs = evaluate_many(net, archs, dataset, args.split, bn_batches=bn_batches, batch_size=args.batch_size,
                         seed=info["seed"], progress=len(archs) > 3)
    rows = [{"name": n, "arch": a.to_dict(), "top1": acc, "macs": arch_stats(space, a).macs}
            for n, a, acc in zip(names, archs, accs)]
    if args.json:
        print(json.dumps({"supernet": args.supernet, "split": args.split, "dataset": dataset.spec, "results": rows},
                         indent=2))
    else:
        print(f"{'subnet':<10} {'top-1':>7} {'MMACs':>8}  arch")
        for r, a in zip(rows, archs):
            print(f"{r['name']:<10} {r['top1']:>7.4f} {r['macs'] / 1e6:>8.2f}  {a}")
    return 0
