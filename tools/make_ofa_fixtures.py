"""Write the Once-for-All test fixtures with Once-for-All's own code (run once; the outputs are committed).

    python tools/make_ofa_fixtures.py --ofa-src /tmp/ofa-src [--check N]

`--ofa-src` is a checkout of mit-han-lab/once-for-all (never vendored here). Writes, under tests/data/ofa/:
its supernets' key/shape layouts, reference logits of a few subnets for the seeded weights of
`tests/ofa_fixtures.py`, reference outputs of its accuracy predictor and of its latency table sums.
`--check N` also compares N random subnets per resolution with the edgenas import (in place and extracted)
and prints the largest differences; nothing is written for that.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tools")]

from ofa_fixtures import DATA, SEED, images, ofa_sample, ofa_weights, to_arch  # noqa: E402
from ofa_reference import load_ofa, ofa_latency_table  # noqa: E402

REFERENCE_RESOLUTIONS = (128, 144, 160, 176, 200, 224)
PREDICTOR_ARCHS = 1000  # random archs the predictor's reference covers (seeded: tests draw the same)
LUT_RESOLUTIONS = (176, 192)  # two tables that share modules (the last stage's blocks run at 6x6 in both)
LUT_ARCHS = 300


def ofa_supernet(width: str):
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

    return OFAMobileNetV3(n_classes=1000, dropout_rate=0, width_mult=float(width), ks_list=[3, 5, 7],
                          expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])


@torch.no_grad()
def ofa_logits(net, sample: dict, x: np.ndarray) -> np.ndarray:
    net.set_active_subnet(ks=sample["ks"], e=sample["e"], d=sample["d"])
    return net(torch.from_numpy(x)).numpy()


@torch.no_grad()
def calibrate_bn(net, weights: dict) -> dict[str, np.ndarray]:
    """BatchNorm statistics of the largest subnet at 224 px on seeded images (training mode, one batch), float16."""
    net.load_state_dict(weights)
    net.set_max_net()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0  # the running statistics become this batch's
    net.train()
    net(torch.from_numpy(images(8, 224)))
    net.eval()
    return {k: v.numpy().astype(np.float16) for k, v in net.state_dict().items() if k.endswith(("running_mean",
                                                                                               "running_var"))}


def supernet_fixtures() -> None:
    for width in ("1.0", "1.2"):
        net = ofa_supernet(width)
        layout = {k: list(v.shape) for k, v in net.state_dict().items()}
        (DATA / f"layout_w{width}.json").write_text(json.dumps(layout, indent=0) + "\n")
        np.savez_compressed(DATA / f"bn_stats_w{width}.npz", **calibrate_bn(net, ofa_weights(width, calibrated=False)))
        net = ofa_supernet(width)
        net.load_state_dict(ofa_weights(width))
        net.eval()
        rng = np.random.default_rng([SEED, int(float(width) * 10)])
        samples = [{"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5, "r": [224]},
                   {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": [128]}]
        samples += [ofa_sample(rng, [r]) for r in REFERENCE_RESOLUTIONS]
        logits = np.stack([ofa_logits(net, s, images(2, s["r"][0])) for s in samples])
        (DATA / f"subnets_w{width}.json").write_text(json.dumps(samples) + "\n")
        np.savez_compressed(DATA / f"logits_w{width}.npz", logits=logits.astype(np.float32))
        print(f"w{width}: {len(layout)} keys, logits of {len(samples)} subnets, |logit| up to {np.abs(logits).max():.2f}")


def predictor_fixtures() -> None:
    """Reference outputs of Once-for-All's predictor code for seeded random MLP weights (`ofa_fixtures`)."""
    from ofa.tutorial.accuracy_predictor import AccuracyPredictor
    from ofa_fixtures import predictor_archs, predictor_weights

    predictor = AccuracyPredictor(pretrained=False, device="cpu")
    predictor.model.load_state_dict(predictor_weights())
    out = predictor.predict_accuracy(predictor_archs(PREDICTOR_ARCHS)).numpy()[:, 0]
    np.savez_compressed(DATA / "predictor_reference.npz", accuracy=out.astype(np.float32))
    print(f"predictor: {len(out)} outputs, {out.min():.3f} to {out.max():.3f}")


def lut_fixtures(tables_dir: Path) -> None:
    """Tables with Once-for-All's keys (those of its Note10 tables) and seeded random means, and its sums over them."""
    import yaml
    from ofa_fixtures import lut_archs

    rng = np.random.default_rng(SEED)
    files = {}
    for r in LUT_RESOLUTIONS:
        with open(tables_dir / f"note10_{r}_lookup_table.yaml") as f:
            keys = sorted(yaml.safe_load(f))
        table = {k: {"count": 100, "mean": float(rng.uniform(0.05, 2.0)), "std": 0.01} for k in keys}
        files[r] = DATA / f"fixture_{r}_lookup_table.yaml"
        files[r].write_text(yaml.safe_dump(table))
    reference = ofa_latency_table(files)
    sums = {str(r): [reference.predict_efficiency(s) for s in lut_archs(r, LUT_ARCHS)] for r in LUT_RESOLUTIONS}
    (DATA / "lut_reference.json").write_text(json.dumps(sums) + "\n")
    print(f"latency tables: {', '.join(f'{r} px' for r in LUT_RESOLUTIONS)}, {LUT_ARCHS} sums each")


@torch.no_grad()
def check(n: int, resolutions: list[int]) -> None:
    """Largest |logit difference| between Once-for-All's code and the edgenas import, per width and resolution."""
    from edgenas.imports.ofa import import_ofa_supernet
    from edgenas.train.checkpoint import load_supernet

    for width in ("1.0", "1.2"):
        net = ofa_supernet(width)
        weights = ofa_weights(width, seed=SEED + 1)  # weights the fixtures do not use
        weights.update({k: torch.from_numpy(v.astype(np.float32)) for k, v in calibrate_bn(net, weights).items()})
        net = ofa_supernet(width)
        net.load_state_dict(weights)
        net.eval()
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"state_dict": weights}, f"{tmp}/ofa.pth")
            import_ofa_supernet(f"{tmp}/ofa.pth", f"{tmp}/supernet.pt")
            ours = load_supernet(f"{tmp}/supernet.pt")
        rng = np.random.default_rng(7)
        for r in resolutions:
            in_place = extracted = scale = 0.0
            for _ in range(n):
                sample = ofa_sample(rng, [r])
                x = images(2, r, seed=int(rng.integers(1 << 30)))
                ref = ofa_logits(net, sample, x)
                arch = to_arch(sample)
                got = ours.set_active(arch)(torch.from_numpy(x)).numpy()
                ext = ours.extract(arch).eval()(torch.from_numpy(x)).numpy()
                in_place, extracted = max(in_place, np.abs(got - ref).max()), max(extracted, np.abs(ext - ref).max())
                scale = max(scale, np.abs(ref).max())
            print(f"w{width} r{r}: {n} subnets, max |diff| in place {in_place:.2e}, extracted {extracted:.2e} "
                  f"(|logits| up to {scale:.2f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ofa-src", required=True)
    parser.add_argument("--check", type=int, default=0, metavar="N")
    parser.add_argument("--resolutions", default="128,132,160,176,192,208,224")
    parser.add_argument("--only", choices=("supernet", "predictor", "lut"), default=None)
    parser.add_argument("--tables", default="../shared/data/ofa", help="folder of Once-for-All's Note10 tables "
                        "(their keys only are used)")
    args = parser.parse_args()
    load_ofa(args.ofa_src)
    torch.set_num_threads(1)
    if args.check:
        check(args.check, [int(r) for r in args.resolutions.split(",")])
        return
    DATA.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "supernet"):
        supernet_fixtures()
    if args.only in (None, "predictor"):
        predictor_fixtures()
    if args.only in (None, "lut"):
        lut_fixtures(Path(args.tables))


if __name__ == "__main__":
    main()
