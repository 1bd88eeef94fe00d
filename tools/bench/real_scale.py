"""Benchmark: the MobileNetV3 space at real resolution (160-224 px) on this machine, stage by stage.

    python tools/bench/real_scale.py --out OUT [--stages calibrate,eval,transfer,int8] [--budget 100]
        [--holdout 50] [--int8-budget 30] [--resolutions 160,176,192,208,224] [--json]

Each stage runs as the `edgenas` command a user types (`python -m edgenas.cli`, in a subprocess) and is
timed: wall seconds, the peak resident memory of its largest process, the first ETA its progress bars showed
against the time they really had left, and the bytes left on disk. The stages:

- calibrate: `edgenas calibrate --device local --budget N` (ONNX Runtime fp32) on the space (--preset, default
  Once-for-All's w1.2, whose Note10 tables the transfer uses) at --resolutions;
- eval: `edgenas latency eval --device local --holdout 50`: every predictor's share within ±10 % and Spearman;
- transfer: `edgenas import ofa-lut` of Once-for-All's Note10 tables (/work/shared/data/ofa or --ofa), then
  `edgenas calibrate --device local --transfer-from note10 --budget 10` into a tables folder of its own, judged
  on the same held-out subnets (the store holds them), beside a whole-model fit on the same 10 measurements
  alone and the full calibration;
- int8: `edgenas calibrate --device local-tflite --precision int8 --budget M` and its eval on --holdout subnets.

Everything lives in OUT (store, tables, model cache): a stage run again measures nothing twice, so time a stage
on a fresh OUT. Measure alone: the stages take `flock -x /tmp/edgenas-cpu.lock`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

OFA_DATA = Path("/work/shared/data/ofa")
LOCK = "/tmp/edgenas-cpu.lock"
# Runs a command and prints the peak RSS (KiB) of its largest process (itself or a descendant it waited for).
WRAPPER = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
           "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
           "sys.exit(rc)")
BAR = re.compile(r"^(?P<desc>.+?) \[[#.]{20}\] (?P<n>\d+)/(?P<total>\d+) .*?ETA (?P<eta>\?|\d+h\d\dm|\d\d:\d\d)")
DONE = re.compile(r"^(?P<desc>.+?) \[[#.]{20}\] .* done in ")


def _seconds(text: str) -> float | None:
    if text == "?":
        return None
    if "h" in text:
        h, m = text.rstrip("m").split("h")
        return int(h) * 3600 + int(m) * 60
    m, s = text.split(":")
    return int(m) * 60 + int(s)


def eta_checks(lines: list[tuple[float, str]]) -> list[dict[str, Any]]:
    """Per progress bar: the first ETA it showed, the time it really had left then, and their ratio."""
    first: dict[str, tuple[float, float]] = {}
    out = []
    for t, line in lines:
        m = BAR.match(line)
        if m and m["desc"] not in first and _seconds(m["eta"]) is not None and int(m["n"]) < int(m["total"]):
            first[m["desc"]] = (t, float(_seconds(m["eta"]) or 0.0))
        d = DONE.match(line)
        if d and d["desc"] in first:
            shown_at, eta = first.pop(d["desc"])
            truth = t - shown_at
            out.append({"bar": d["desc"], "first_eta_s": eta, "true_left_s": round(truth, 1),
                        "ratio": round(eta / truth, 2) if truth > 1 else None})
    return out


def run_stage(name: str, args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> dict[str, Any]:
    """Run `python -m edgenas.cli ARGS` under the lock; wall time, peak memory, ETA checks and its JSON output."""
    argv = ["flock", "-x", LOCK, sys.executable, "-c", WRAPPER, sys.executable, "-m", "edgenas.cli", *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    lines: list[tuple[float, str]] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    stdout = proc.stdout.read() if proc.stdout else ""
    rc = proc.wait()
    reader.join(5)
    wall = time.monotonic() - t0
    with log.open("a") as f:
        f.write(f"## {name}: {' '.join(args)}\n" + "\n".join(f"{t - t0:8.1f} {s}" for t, s in lines) + "\n" + stdout)
    peak = next((int(s.split()[1]) for _, s in lines if s.startswith("PEAK_RSS_KB")), None)
    try:
        result = json.loads(stdout) if stdout.strip() else None
    except json.JSONDecodeError:
        result = None
    return {"stage": name, "rc": rc, "wall_s": round(wall, 1), "peak_mb": None if peak is None else round(peak / 1024),
            "etas": eta_checks(lines), "result": result, "load": os.getloadavg()}


def disk_mb(path: Path, pattern: str = "*") -> float:
    """Megabytes under `path` (or of the files `pattern` names beside it, e.g. a store and its -wal file)."""
    files = path.rglob("*") if path.is_dir() else path.parent.glob(path.name + pattern)
    return sum(p.stat().st_size for p in files if p.is_file()) / 1e6


def space_file(out: Path, preset: str, resolutions: list[int]) -> Path:
    from edgenas.space import SearchSpace

    space = SearchSpace.preset(preset).replace(resolutions=tuple(resolutions))
    path = out / "mobilenetv3-real.json"
    path.write_text(json.dumps(space.to_dict()))
    return path


def few_alone(out: Path, space_path: Path, tables: Path, transfer_tables: Path) -> dict[str, Any]:
    """A whole-model fit on the transfer's own target measurements alone, scored on the held-out subnets the
    full calibration's eval measured (the store holds both)."""
    import numpy as np

    from edgenas.inputs import read_space_file
    from edgenas.latency.calibrate import load_latency_predictor
    from edgenas.latency.models import ModelCache, arch_description
    from edgenas.latency.predictor_eval import holdout_archs, score
    from edgenas.latency.predictors import WholeModelPredictor
    from edgenas.store import Store

    space = read_space_file(space_path)
    full = load_latency_predictor(tables / "local" / "predictor-onnxruntime-fp32.json", space=space)
    transfer = load_latency_predictor(transfer_tables / "local" / "predictor-onnxruntime-fp32.json", space=space)
    held = holdout_archs(space, ARGS.holdout, full.training_set[0], 0)
    store, cache = Store(out / "store.sqlite"), ModelCache(tables / ".models")
    measured = []
    for a in held:
        sha = cache.known_sha256(arch_description(space, a), "onnx")
        m = store.measurement_for(sha, "local", "onnxruntime", "fp32") if sha else None
        measured.append(None if m is None else m.latency_ms)
    keep = [i for i, m in enumerate(measured) if m is not None]
    archs, ms = [held[i] for i in keep], np.array([measured[i] for i in keep])
    few_archs, few_ms = transfer.training_set
    alone = WholeModelPredictor(device="local", runtime="onnxruntime", precision="fp32", space=space)
    alone.fit(few_archs, np.asarray(few_ms), seed=0)
    rows = {"transfer (10)": transfer.predict(archs), "whole-model on the same 10": alone.predict(archs),
            "full calibration": full.predict(archs)}
    return {name: score(name, p, ms, measurements=0, device_seconds=0).to_dict() for name, p in rows.items()}


def main() -> int:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--stages", default="calibrate,eval,transfer")
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--int8-budget", type=int, default=30)
    p.add_argument("--holdout", type=int, default=50)
    p.add_argument("--resolutions", default="160,176,192,208,224")
    p.add_argument("--preset", default="mobilenetv3-w1.2",
                   help="the space (default: Once-for-All's w1.2, the space of its Note10 tables)")
    p.add_argument("--ofa", type=Path, default=OFA_DATA)
    p.add_argument("--json", action="store_true")
    ARGS = args = p.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    space = space_file(out, args.preset, [int(r) for r in args.resolutions.split(",")])
    tables, transfer_tables, log = out / "tables", out / "tables-transfer", out / "stages.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGENAS_STORE": str(out / "store.sqlite")}
    common = ["--space", str(space), "--tables", str(tables), "--models", str(tables / ".models"), "--json"]
    results = []
    stages = args.stages.split(",")
    if "calibrate" in stages:
        results.append(run_stage("calibrate local fp32", ["calibrate", "--device", "local", "--budget",
                                                          str(args.budget), *common], env, log))
    if "eval" in stages:
        results.append(run_stage("latency eval local fp32", ["latency", "eval", "--device", "local", "--holdout",
                                                             str(args.holdout), *common], env, log))
    if "transfer" in stages:
        yamls = sorted(str(f) for f in args.ofa.glob("note10_*_lookup_table.yaml"))
        results.append(run_stage("import ofa-lut note10", ["import", "ofa-lut", *yamls, "--device", "note10",
                                                           "--tables-dir", str(transfer_tables), "--json"], env, log,
                                 cwd=out))  # it writes devices/note10.toml where it runs
        tcommon = [c if c != str(tables) else str(transfer_tables) for c in common]
        results.append(run_stage("calibrate local --transfer-from note10", [
            "calibrate", "--device", "local", "--transfer-from", "note10", "--budget", "10", *tcommon], env, log))
        results.append({"stage": "transfer judged on the held-out subnets",
                        "result": few_alone(out, space, tables, transfer_tables)})
    if "int8" in stages:
        results.append(run_stage("calibrate local-tflite int8", ["calibrate", "--device", "local-tflite", "--precision",
                                                                 "int8", "--budget", str(args.int8_budget), *common],
                                 env, log))
        results.append(run_stage("latency eval local-tflite int8", ["latency", "eval", "--device", "local-tflite",
                                                                    "--precision", "int8", "--holdout",
                                                                    str(args.holdout), *common], env, log))
    disk = {"store": disk_mb(out / "store.sqlite"), "model cache": disk_mb(tables / ".models"),
            "tables": disk_mb(tables) - disk_mb(tables / ".models"), "all": disk_mb(out)}
    report = {"stages": results, "disk_mb": {k: round(v, 1) for k, v in disk.items()}}
    with (out / "real_scale.json").open("a") as f:
        f.write(json.dumps(report) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for r in results:
            res = r.get("result") or {}
            print(f"{r['stage']:<45} rc={r.get('rc')} wall {r.get('wall_s')} s peak {r.get('peak_mb')} MB "
                  f"load {r.get('load')}")
            for e in r.get("etas", []):
                print(f"    ETA check {e['bar']}: first ETA {e['first_eta_s']} s, truly {e['true_left_s']} s left "
                      f"(x{e['ratio']})")
            for s in res.get("scores", []) if isinstance(res, dict) else []:
                print(f"    {s['name']:<14} ±10 % {s['within_10']:.1%}  Spearman {s['spearman']:.3f}")
            if r["stage"].startswith("transfer judged"):
                for name, s in res.items():
                    print(f"    {name:<28} ±10 % {s['within_10']:.1%}  Spearman {s['spearman']:.3f}")
        print("disk (MB):", report["disk_mb"])
    return 0


ARGS: argparse.Namespace


if __name__ == "__main__":
    sys.exit(main())
