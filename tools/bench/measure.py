"""Benchmark of measuring over SSH: connect time, per-model overhead, fleet throughput, run-to-run spread.

Starts a testbed of SSH devices on this machine (tools/testbed.py; needs root and sshd), builds
small ONNX models and prints one table:

- SSH connect: TCP + SSH handshake + public-key auth + SFTP session + work folder, per connect.
- Fixed cost of one measure() call (one exec, the agent's start and its numpy/runtime imports),
  and the per-model overhead in a batch beyond that and beyond each model's own run time
  (load, warm-up and timed runs): cold (first contact, uploads) and warm (cached).
- Fleet throughput: models measured per minute by measure_fleet on all devices at once.
- Run-to-run spread: medians of repeated measurements of one model on one device.

    python tools/bench/measure.py [--devices 3] [--models 24] [--repeats 8] [--runs 10] [--warmup 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edgenas.devices import device_from_config, measure_fleet  # noqa: E402
from edgenas.devices.device_files import read_device_file  # noqa: E402


def _load_tool(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build_models(folder: Path, count: int) -> list[Path]:
    """`count` distinct small convnets (different widths and seeds), written with onnx.helper."""
    fixtures = _load_tool("edgenas_testbed_fixtures", ROOT / "tests" / "testbed_fixtures.py")
    widths = (4, 8, 12, 16)
    return [fixtures.build_onnx_convnet(folder / f"m{i:03d}.onnx", channels=widths[i % 4], size=32,
                                        layers=1 + i % 3, seed=i) for i in range(count)]


def own_time_ms(m) -> float:
    """The model's own run time inside a measurement: warm-up plus every timed pass."""
    timed = m.runs * max(1, len(m.passes))
    return (m.warmup + timed) * m.mean_ms + (m.load_ms or 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--models", type=int, default=24, help="distinct models per batch and per fleet device")
    parser.add_argument("--repeats", type=int, default=8, help="repeated measurements for the spread")
    parser.add_argument("--connects", type=int, default=10, help="connects per device for the connect time")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    testbed = _load_tool("edgenas_tools_testbed", ROOT / "tools" / "testbed.py")
    reason = testbed.Testbed.missing()
    if reason:
        print(f"measure.py: cannot run: {reason}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="edgenas-bench-") as tmp:
        tmp = Path(tmp)
        models = build_models(tmp, args.models)
        spec = testbed.DeviceSpec(runs=args.runs, warmup=args.warmup)
        with testbed.Testbed.up(tmp / "bed", [spec] * args.devices, die_with_parent=True, prefix="bench") as bed:
            configs = [read_device_file(p) for p in bed.device_files()]
            configs = [replace(c, measure=replace(c.measure, max_cv=1.0, remeasure=0)) for c in configs]
            rows = run_benchmarks(configs, models, args)
    load_after = os.getloadavg()[0]

    import onnxruntime

    print(f"edgenas devices benchmark: {args.devices} testbed devices (OpenSSH {ssh_version()} on loopback), "
          f"onnxruntime {onnxruntime.__version__}, 1 thread, {args.warmup} warm-up + {args.runs} timed runs; "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {load_before:.1f} before, {load_after:.1f} after")
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':{width}}  value")
    for name, value in rows:
        print(f"{name:{width}}  {value}")
    return 0


def ssh_version() -> str:
    import subprocess

    done = subprocess.run(["/usr/sbin/sshd", "-V"], capture_output=True, text=True)
    text = (done.stderr or done.stdout).strip()
    return text.split(",")[0].replace("OpenSSH_", "") if text else "?"


def run_benchmarks(configs, models, args) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []

    connects = []
    for config in configs:
        for _ in range(args.connects):
            device = device_from_config(config)
            start = time.perf_counter()
            device.transport.connect()
            connects.append((time.perf_counter() - start) * 1000)
            device.close()
    rows.append((f"SSH connect (TCP+handshake+auth+SFTP), {len(connects)} connects",
                 f"median {statistics.median(connects):.1f} ms, min {min(connects):.1f}, max {max(connects):.1f}"))

    first = configs[0]
    batches = []
    for label in ("cold: first contact, uploads", "warm: models cached"):
        with device_from_config(first) as device:
            start = time.perf_counter()
            results = device.measure(models)
            wall = (time.perf_counter() - start) * 1000
            uploads = device.stats["uploaded_files"]
        assert all(m.ok for m in results), [m.error_message for m in results if not m.ok]
        batches.append((label, wall, sum(own_time_ms(m) for m in results), uploads))
    fixed = []
    with device_from_config(first) as device:
        device.measure(models[:1])  # connected and agent uploaded: what remains is the per-call cost
        for model in models[:5]:
            start = time.perf_counter()
            (m,) = device.measure([model])
            fixed.append((time.perf_counter() - start) * 1000 - own_time_ms(m))
    per_call = statistics.median(fixed)
    rows.append(("fixed cost of one measure() call (exec, agent start, imports)",
                 f"median {per_call:.0f} ms over {len(fixed)} calls"))
    for label, wall, own, uploads in batches:
        rows.append((f"per-model overhead in a batch of {len(models)} ({label})",
                     f"{(wall - own - per_call) / len(models):.1f} ms/model beyond its own run time "
                     f"(batch wall {wall / 1000:.2f} s, models' own {own / 1000:.2f} s, {uploads} files uploaded)"))

    for label in ("cold", "warm"):
        fresh = [replace(c, work_dir=c.work_dir + "-fleet") for c in configs]
        start = time.perf_counter()
        results = measure_fleet([device_from_config(c) for c in fresh], models)
        wall = time.perf_counter() - start
        done = sum(m.ok for ms in results.values() for m in ms)
        total = sum(len(ms) for ms in results.values())
        rows.append((f"fleet of {len(configs)} devices, {len(models)} models each, {label}",
                     f"{done / wall * 60:.0f} models/min ({done}/{total} ok in {wall:.1f} s)"))

    medians = []
    with device_from_config(replace(first, measure=replace(first.measure, runs=30, warmup=5))) as device:
        for _ in range(args.repeats):
            (m,) = device.measure([models[-1]])
            medians.append(m.median_ms)
    mid = statistics.median(medians)
    rows.append((f"run-to-run spread, {args.repeats} repeats of one model (30 runs each)",
                 f"median {mid:.3f} ms, range {min(medians):.3f}-{max(medians):.3f} "
                 f"({(max(medians) - min(medians)) / mid:.1%} of median), CV of medians "
                 f"{statistics.stdev(medians) / statistics.mean(medians):.1%}"))
    return rows


if __name__ == "__main__":
    sys.exit(main())
