"""Time the test suite: the wall time, the slowest tests, and `tests/durations.json` (seconds per test file, which
tests/scheduling.py uses to start the longest files first).

    python3 tools/test_durations.py                    # run the suite as README says (three workers), write the file
    python3 tools/test_durations.py --from report.xml  # read a JUnit report of a run made before
    python3 tools/test_durations.py --top 20 --no-write -- -n 0 tests/cli/test_main.py   # extra pytest arguments after --

State the machine's load with the figures: it prints the load average before and after the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET  # noqa: S405 - our own pytest's report
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read_report(path: Path) -> list[tuple[str, str, float]]:
    """(file, test id, seconds) of every test case in a JUnit report, setup and teardown included."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314 - a file this tool had pytest write
        module = case.get("classname", "")
        parts = module.split(".")
        # classname is "tests.test_x" or "tests.test_x.TestClass"
        n = next((i for i in range(len(parts), 0, -1) if (ROOT / Path(*parts[:i])).with_suffix(".py").is_file()), 0)
        file = str(Path(*parts[:n]).with_suffix(".py")) if n else module
        cases.append((file, f"{file}::{case.get('name')}", float(case.get("time", 0.0))))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="report", type=Path, help="a JUnit XML report of a finished run")
    parser.add_argument("--top", type=int, default=10, help="slowest tests to print (default 10)")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite tests/durations.json")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    wall = None
    load_before = os.getloadavg()
    if args.report is None:
        report = Path(tempfile.mkdtemp(prefix="edgenas-durations-")) / "report.xml"
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                              *args.pytest_args], cwd=ROOT)
        wall = time.perf_counter() - t0
        if not report.is_file():
            print(f"test_durations: pytest wrote no report (exit {rc})", file=sys.stderr)
            return 1
    else:
        report, rc = args.report, 0
    cases = read_report(report)
    per_file: dict[str, float] = defaultdict(float)
    for file, _, seconds in cases:
        per_file[file] += seconds
    print(f"\n{len(cases)} tests in {len(per_file)} files; {sum(per_file.values()):.0f} test-seconds"
          + (f"; wall {wall:.0f} s ({wall / 60:.1f} min), pytest exit {rc}" if wall is not None else ""))
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (2-core machine: 2.0 is full)")
    print(f"\n{args.top} slowest tests (setup and teardown included; seconds on a worker):")
    for _, test, seconds in sorted(cases, key=lambda c: -c[2])[: args.top]:
        print(f"  {seconds:7.1f}  {test}")
    print("\nslowest files:")
    for file, seconds in sorted(per_file.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {seconds:7.1f}  {file}")
    if not args.no_write and (args.report is not None or rc == 0) and not args.pytest_args:
        target = ROOT / "tests" / "durations.json"
        target.write_text(json.dumps({f: round(s, 1) for f, s in sorted(per_file.items())}, indent=1) + "\n")
        print(f"\nwrote {target.relative_to(ROOT)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
