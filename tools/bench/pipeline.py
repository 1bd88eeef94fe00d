"""Benchmark: the demo's (or a run config's) stage times and CPU use per stage.

Runs `edgenas demo --out DIR` (or `edgenas run CONFIG.toml --out DIR`) in a child process and reads
its stage lines ("edgenas: stage NAME: running" / "done in" / "reused"). At each line it reads the
CPU time of the child's whole process tree from /proc (user + system of the live processes and of
the children they have waited for), so each stage gets its wall seconds, its CPU seconds and their
ratio: how many cores it kept busy (at most the machine's core count). Nothing is polled between
stage lines, so the benchmark itself takes no CPU from what it measures.

    python tools/bench/pipeline.py [--out DIR] [--config CONFIG.toml] [--json] [--keep]

A re-run into a folder that holds a finished run reuses every stage: use a fresh --out (the default
is a new temporary folder). Wall time includes any time the processes were stopped (SIGSTOP) or
waited for the CPU; the load average before and after is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGE_LINE = re.compile(r"^edgenas: stage (?P<name>\S+): (?P<what>running|done in|reused)")
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own user+system seconds, waited-for children's user+system seconds) of a process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid ... utime stime cutime cstime
    ppid = int(fields[1])
    own = (int(fields[11]) + int(fields[12])) / TICK
    waited = (int(fields[13]) + int(fields[14])) / TICK
    return ppid, own, waited


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root` and all its descendants, alive or waited for."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            s = _stat(int(entry))
            if s is not None:
                stats[int(entry)] = s
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1] + stats[pid][2]
        todo.extend(children.get(pid, []))
    return total


def run(command: list[str], echo: bool) -> tuple[list[dict], float, float, int]:
    """Run `command`; return per-stage rows, total wall and CPU seconds, and its exit status."""
    t_start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stderr is not None
    try:
        return _follow(proc, t_start, echo)
    finally:
        if proc.poll() is None:  # interrupted: stop the run too (it saves its state on SIGTERM)
            proc.terminate()
            proc.wait()


def _follow(proc: subprocess.Popen, t_start: float, echo: bool) -> tuple[list[dict], float, float, int]:
    rows: list[dict] = []
    tail: list[str] = []  # the last lines, shown when the run fails
    current: dict | None = None
    cpu_last = 0.0
    assert proc.stderr is not None
    for line in proc.stderr:
        if echo:
            sys.stderr.write(line)
        tail = (tail + [line])[-5:]
        m = STAGE_LINE.match(line)
        if not m:
            continue
        now, cpu = time.perf_counter(), tree_cpu_seconds(proc.pid)
        if m["what"] == "running":
            current = {"stage": m["name"], "t0": now, "cpu0": cpu}
        elif m["what"] == "reused":
            rows.append({"stage": m["name"], "wall_s": 0.0, "cpu_s": 0.0, "reused": True})
        elif current is not None and current["stage"] == m["name"]:
            rows.append({"stage": m["name"], "wall_s": now - current["t0"], "cpu_s": cpu - current["cpu0"],
                         "reused": False})
            current = None
        cpu_last = cpu
    if proc.stdout is not None:
        proc.stdout.read()
    # the exited child's own time and its children's are in our `waited` counters once it is reaped
    before = os.times()
    code = proc.wait()
    after = os.times()
    if code != 0 and not echo:
        sys.stderr.write("".join(tail))
    cpu_total = max(cpu_last, (after.children_user + after.children_system) - (before.children_user
                                                                                  + before.children_system))
    return rows, time.perf_counter() - t_start, cpu_total, code


def table(rows: list[dict], wall: float, cpu: float) -> str:
    lines = [f"{'stage':<34} {'wall s':>8} {'CPU s':>8} {'cores':>6}"]
    for r in rows:
        cores = r["cpu_s"] / r["wall_s"] if r["wall_s"] > 0 else 0.0
        note = "  (reused)" if r["reused"] else ""
        lines.append(f"{r['stage']:<34} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} {cores:>6.2f}{note}")
    staged = sum(r["wall_s"] for r in rows)
    lines.append(f"{'(between stages: start-up, report)':<34} {wall - staged:>8.1f}")
    lines.append(f"{'total':<34} {wall:>8.1f} {cpu:>8.1f} {cpu / wall if wall else 0:>6.2f}")
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="run this config with `edgenas run` (default: `edgenas demo`)")
    parser.add_argument("--out", help="output folder (default: a new temporary folder, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary output folder")
    parser.add_argument("--echo", action="store_true", help="pass the run's progress lines through")
    parser.add_argument("--force", action="store_true", help="pass --force to `edgenas run` (past the training check)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)

    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.mkdtemp(prefix="edgenas-bench-pipeline-")
        out = str(Path(tmp) / "out")
    command = [sys.executable, "-c", "import sys; from edgenas.cli import entry; sys.argv[0] = 'edgenas'; sys.exit(entry())"]
    command += ["run", args.config, "--out", out] + (["--force"] if args.force else []) if args.config else \
        ["demo", "--out", out]
    signal.signal(signal.SIGTERM, _interrupt)  # a killed benchmark stops its run too, and removes its folder
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        rows, wall, cpu, code = run(command, args.echo)
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    info = {"command": "edgenas " + " ".join(command[3:]), "started": started, "exit_status": code, "cores": os.cpu_count(),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "stages": [{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in rows]}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{info['command']} (exit {code}), started {started} on {os.cpu_count()} cores; load average "
              f"(1, 5, 15 min) before {info['load_before']}, after {info['load_after']}")
        print(table(rows, wall, cpu))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
