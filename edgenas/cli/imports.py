"""CLI command `import`: other tools' published files in (Once-for-All's supernets, predictor and phone tables)."""

from __future__ import annotations

import argparse
import json

from edgenas.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="bring in Once-for-All's published supernets, accuracy predictor and phone "
                       "latency tables")
    kinds = p.add_subparsers(dest="import_command", metavar="KIND")
    ofa = kinds.add_parser("ofa", help="a Once-for-All MobileNetV3 supernet (ofa_mbv3_d234_e346_k357_w1.0 / _w1.2) "
                           "as an edgenas supernet checkpoint")
    ofa.add_argument("checkpoint", metavar="CHECKPOINT", help="Once-for-All's supernet file ({'state_dict': ...})")
    ofa.add_argument("--out", required=True, metavar="SUPERNET.pt", help="edgenas checkpoint to write")
    ofa.add_argument("--num-classes", type=int, default=None, metavar="N",
                     help="put a new, untrained classifier of N classes on it (to fine-tune on your data)")
    ofa.add_argument("--resolutions", default=None, metavar="R,R,...",
                     help="input sizes the space offers, e.g. 160,176,192,208,224 (default: 128 to 224 in steps of 4)")
    ofa.add_argument("--dataset", default=None, metavar="SPEC",
                     help="the data it is used with (digits, shapes, folder:PATH, ...): every later stage reads it "
                          "from the checkpoint; a new classifier gets its classes")
    ofa.add_argument("--json", action="store_true", help="print the result as JSON")
    ofa.set_defaults(handler="edgenas.cli.imports:run_import_ofa")

    pred = kinds.add_parser("ofa-predictor", help="Once-for-All's accuracy predictor (acc_predictor.pth) as an "
                            "edgenas accuracy predictor")
    pred.add_argument("file", metavar="FILE", help="acc_predictor.pth")
    pred.add_argument("--out", required=True, metavar="PREDICTOR", help="predictor file to write (.npz); put it "
                      "beside the imported supernet as accuracy_predictor.npz to be found by default")
    pred.add_argument("--json", action="store_true", help="print the result as JSON")
    pred.set_defaults(handler="edgenas.cli.imports:run_import_predictor")

    lut = kinds.add_parser("ofa-lut", help="Once-for-All's phone latency tables (one YAML per resolution) as a "
                           "device's latency table and predictor")
    lut.add_argument("files", nargs="+", metavar="FILES", help="<device>_<res>_lookup_table.yaml files")
    lut.add_argument("--device", required=True, metavar="NAME", help="device name: writes latency_tables/NAME/ "
                     "and devices/NAME.toml (when there is none)")
    lut.add_argument("--tables-dir", default=None, help="latency tables folder (default: $EDGENAS_LATENCY_TABLES, "
                     "else ./latency_tables)")
    lut.add_argument("--json", action="store_true", help="print the result as JSON")
    lut.set_defaults(handler="edgenas.cli.imports:run_import_lut")


def _report(result: dict, as_json: bool, lines: list[str]) -> int:
    print(json.dumps(result, indent=2) if as_json else "\n".join(lines))
    return 0


def run_import_ofa(args: argparse.Namespace) -> int:
    # deferred: torch, numpy load when the command runs, not for `edgenas --help`
    from edgenas.imports.ofa import import_ofa_supernet
    from edgenas.inputs import output_file

    output_file(args.out, "--out")
    resolutions = None
    if args.resolutions is not None:
        try:
            resolutions = tuple(int(r) for r in args.resolutions.split(",") if r.strip())
        except ValueError:
            raise UsageError(f"--resolutions {args.resolutions}: expected input sizes in pixels separated by commas, "
                             "like 160,176,192,208,224") from None
    dataset = None
    if args.dataset is not None:  # seed 0: the split every later stage makes of it (the checkpoint's seed)
        # deferred: numpy loads when the command runs, not for `edgenas --help`
        from edgenas.data import load_dataset

        dataset = load_dataset(args.dataset, seed=0)
    r = import_ofa_supernet(args.checkpoint, args.out, num_classes=args.num_classes, resolutions=resolutions,
                            dataset=dataset)
    head = "a new, untrained classifier" if r["new_classifier"] else "Once-for-All's classifier"
    sizes = f"{min(r['resolutions'])}-{max(r['resolutions'])} px"
    return _report(r, args.json, [f"supernet: {r['out']} (space {r['space']} at {sizes}, {r['num_classes']} classes, "
                                  f"{head})",
                                  f"  from {args.checkpoint} (sha256 {r['source_sha256'][:16]}...)"])


def run_import_predictor(args: argparse.Namespace) -> int:
    # deferred: numpy loads when the command runs, not for `edgenas --help`
    from edgenas.imports.ofa_predictor import import_ofa_predictor
    from edgenas.inputs import output_file

    output_file(args.out, "--out")
    r = import_ofa_predictor(args.file, args.out)
    return _report(r, args.json, [f"accuracy predictor: {r['out']} (space {r['space']}, resolutions "
                                  f"{', '.join(map(str, r['resolutions']))})"])


def run_import_lut(args: argparse.Namespace) -> int:
    # deferred: numpy loads when the command runs, not for `edgenas --help`
    from edgenas.imports.ofa_lut import import_ofa_tables

    r = import_ofa_tables(args.files, args.device, tables_root=args.tables_dir)
    device = f"device file: {r['device_file']}" + ("" if r["wrote_device_file"] else " (kept as it was)")
    return _report(r, args.json, [f"latency table: {r['table']} ({r['pieces']} pieces, space {r['space']}, "
                                  f"resolutions {', '.join(map(str, r['resolutions']))})",
                                  f"latency predictor: {r['predictor']}", device])
