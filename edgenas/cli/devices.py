"""CLI commands `devices list | check NAME | clean NAME` and `measure --device NAME MODEL...`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

TRUST_HELP = "record the device's SSH host key in its known_hosts file if it has none yet (never replaces a changed key)"


def register(sub: argparse._SubParsersAction) -> None:
    devices = sub.add_parser("devices", help="list device files, check that a device is ready")
    dsub = devices.add_subparsers(dest="devices_command", metavar="SUBCOMMAND", parser_class=type(devices))
    listing = dsub.add_parser("list", help="device files in ./devices and ~/.config/edgenas/devices")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(handler="edgenas.cli.devices:run_list")
    check = dsub.add_parser("check", help="connect, verify the host key, the remote Python and the runtime")
    check.add_argument("name", metavar="NAME", help="device name (devices/NAME.toml) or path to a .toml file")
    check.add_argument("--trust-new-host-key", action="store_true", help=TRUST_HELP)
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(handler="edgenas.cli.devices:run_check")
    clean = dsub.add_parser("clean", help="remove the agent and the models uploaded to a device")
    clean.add_argument("name", metavar="NAME")
    clean.set_defaults(handler="edgenas.cli.devices:run_clean")

    measure = sub.add_parser("measure", help="measure the latency of ONNX / TFLite models on devices")
    measure.add_argument("--device", action="append", required=True, metavar="NAME",
                         help="device name or .toml path; give it several times to measure on a fleet")
    measure.add_argument("models", nargs="+", metavar="MODEL", help=".onnx or .tflite files")
    measure.add_argument("--trust-new-host-key", action="store_true", help=TRUST_HELP)
    measure.add_argument("--json", action="store_true", help="print one JSON object per measurement")
    measure.set_defaults(handler="edgenas.cli.devices:run_measure")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
    # deferred: numpy loads when the command runs, not for `edgenas --help`
    from edgenas.devices import list_devices
    from edgenas.devices.device_files import device_dirs

    entries = list_devices()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("no device files: copy one of devices/*.example.toml to devices/NAME.toml")
        return 0
    examples = sorted(p.name for d in device_dirs() if d.is_dir() for p in d.glob("*.example.toml"))
    rows = [[e["name"], e["kind"] or "-", e["runtime"] or "-", str(e["threads"] or "-"), e["host"] or "-",
             e["path"] if not e["error"] else f"INVALID: {e['error']}"] for e in entries]
    print(_table(rows, ["NAME", "KIND", "RUNTIME", "THREADS", "HOST", "FILE"]))
    if examples:
        print(f"examples to copy: {', '.join(examples)}")
    return 0


def _print_check(report: dict[str, Any]) -> None:
    order = ("name", "kind", "host", "port", "user", "host_key", "host_key_recorded", "connect_ms", "work_dir",
             "python", "numpy", "runtime", "runtime_package", "runtime_version", "threads", "agent_version")
    for key in order:
        if report.get(key) is not None:
            print(f"{key:18} {report[key]}")
    machine = report.get("machine") or {}
    if machine:
        print(f"{'machine':18} {machine.get('machine')} {machine.get('system')} {machine.get('release')}, "
              f"{machine.get('cpu_count')} CPUs ({machine.get('cpu')})")
        if machine.get("cpu_quota"):
            print(f"{'cpu_quota':18} {machine['cpu_quota']:.0%} of one CPU")
    if report.get("check_output"):
        print(f"{'check_output':18} {report['check_output']}")
    for problem in report["problems"]:
        print(f"PROBLEM: {problem}")
    print("ready" if report["ok"] else "NOT ready")


def run_check(args: argparse.Namespace) -> int:
    # deferred: numpy loads when the command runs, not for `edgenas --help`
    from edgenas.devices import load_device

    with load_device(args.name, trust_new_host_key=args.trust_new_host_key) as device:
        report = device.check()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_check(report)
    return 0 if report["ok"] else 1


def run_clean(args: argparse.Namespace) -> int:
    # deferred: numpy loads when the command runs, not for `edgenas --help`
    from edgenas.devices import load_device

    with load_device(args.name) as device:
        removed = device.clean()
    print(f"{device.name}: removed {removed} file(s)")
    return 0


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _timing_note(m: Any) -> str:
    """What to know about how a figure was taken: re-timed windows, and why one was not steady."""
    notes = []
    if m.retimed:
        notes.append(f"retimed {m.retimed}x")
    if m.unsteady:
        notes.append(f"UNSTEADY: {m.unsteady}")
    return "; ".join(notes)


def _window_lines(measurements: list[Any]) -> list[str]:
    """One line per timing window: how long, how many models shared it, what the speed probe saw."""
    seen, lines = set(), []
    for m in measurements:
        window = m.timing.get("window") or {}
        if not m.ok or window.get("seconds") is None:
            continue
        key = (m.device, m.timing.get("models"), round(float(window["seconds"]), 3), window.get("probe_fast_ms"))
        if key in seen:
            continue
        seen.add(key)
        off = window.get("off_cpu_share") or []
        lines.append(f"{m.device}: {m.timing.get('models')} model(s) timed interleaved over {window['seconds']:.1f} s "
                     f"({window.get('rounds')} rounds); device slow {window.get('slow_share') or 0:.0%} of the time "
                     f"(probe {window.get('probe_ratio') or 1:.2f}x its fastest), other work "
                     f"{max(off) if off else 0:.0%}" + (f"; re-timed {m.retimed}x" if m.retimed else "")
                     + (f"; UNSTEADY: {m.unsteady}" if m.unsteady else ""))
    return lines


def run_measure(args: argparse.Namespace) -> int:
    # deferred: numpy, edgenas.progress load when the command runs, not for `edgenas --help`
    from edgenas.devices import load_device, measure_fleet
    from edgenas.devices.protocol import ModelFile
    from edgenas.inputs import check_model_file
    from edgenas.progress import Progress, WindowEta

    for path in args.models:  # a missing or foreign file is a usage error before anything connects
        check_model_file(path)
        ModelFile.from_path(path)
    devices = [load_device(name, trust_new_host_key=args.trust_new_host_key) for name in args.device]
    total = len(devices) * len(args.models)
    try:
        with Progress(total, "measure", unit="model", enabled=not args.json or sys.stderr.isatty()) as bar:
            eta = WindowEta(bar)

            def on_result(m: Any) -> None:
                eta.window_done()
                bar.update(1, last=f"{m.device}:{_fmt(m.latency_ms, '.3f')}ms" if m.ok else f"{m.device}:{m.error}")
                if args.json:
                    print(json.dumps(m.to_dict()), flush=True)

            if len(devices) == 1:  # the device's plan and ticks for each window give the ETA before any result
                devices[0].on_event = eta.on_event
                results = {devices[0].name: devices[0].measure(args.models, on_result=on_result)}
            else:
                results = measure_fleet(devices, args.models, on_result=on_result)
    finally:
        for device in devices:
            device.close()
    measurements = [m for ms in results.values() for m in ms]
    if not args.json:
        rows = [[m.device, m.model_path, _fmt(m.latency_ms, ".3f"), _fmt(m.median_ms, ".3f"),
                 _fmt(m.extra.get("spread", None) if m.ok else None, ".0%"), str(m.runs or "-"),
                 f"{m.error}: {m.error_message}" if m.error else _timing_note(m)]
                for m in measurements]
        print(_table(rows, ["DEVICE", "MODEL", "LATENCY_MS", "MEDIAN_MS", "SPREAD", "RUNS", "TIMING"]))
        for line in _window_lines(measurements):
            print(line)
    failed = sum(not m.ok for m in measurements)
    if failed:
        print(f"edgenas measure: {failed} of {len(measurements)} measurements failed", file=sys.stderr)
    return 1 if failed else 0
