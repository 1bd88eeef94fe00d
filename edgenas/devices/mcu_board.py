"""MCUDevice: a microcontroller board reached through its host over SSH.

The device file's [mcu] command flashes a model onto the board and runs it (whatever tool the
board needs: a vendor flasher, `idf.py`, a serial script); latency_pattern reads the latency
from what it prints, e.g. a TFLite Micro benchmark printing `latency_us=1234` per run over
serial. Every match is one timed run. In the command, `{model}` becomes the model's path on the
host, and `{runs}`, `{warmup}`, `{threads}`, `{work_dir}` the device's settings; each argument is
passed quoted, so nothing in a path reaches the shell.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from edgenas.devices.agent import summarize
from edgenas.devices.agent_device import tail
from edgenas.devices.device_files import MCU_UNITS
from edgenas.devices.measurement import PARSE_ERROR, RUNTIME_ERROR, TIMEOUT, Measurement
from edgenas.devices.protocol import ConnectionLost, Device, ModelFile

BOARD_MAX_CV = 0.05  # a board's runs vary less than this unless something else runs on it
_PLACEHOLDER = re.compile(r"\{(model|runs|warmup|threads|work_dir)\}")


def fill_command(command: tuple[str, ...], values: dict[str, str]) -> list[str]:
    """Replace the known {placeholders} in each argument; other braces are left alone."""
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in command]


class MCUDevice(Device):
    """Measures by running the device's flash-and-run command on the board's host, one model at a time."""

    def latencies_ms(self, output: str) -> list[float]:
        mcu = self.config.mcu
        assert mcu is not None
        pattern = re.compile(mcu.latency_pattern)
        group: int | str = "value" if "value" in pattern.groupindex else 1
        scale = MCU_UNITS[mcu.unit]
        values = []
        for match in pattern.finditer(output):
            try:
                value = float(match.group(group))
            except (TypeError, ValueError):
                continue
            values.append(value * scale if scale is not None else value / float(mcu.clock_hz or 1) * 1e3)
        return values

    def _measure_one(self, model: ModelFile, remote: str) -> Measurement:
        c, mcu = self.config, self.config.mcu
        assert mcu is not None
        argv = fill_command(mcu.command, {
            "model": remote, "runs": str(c.measure.runs), "warmup": str(c.measure.warmup),
            "threads": str(c.threads), "work_dir": self.transport.work_dir(),
        })
        # A board runs one program with nothing else on it and counts cycles: its runs agree with each other,
        # so one command's runs are the measurement, and their median is the figure.
        status, out, err = self.transport.run(argv, mcu.timeout)
        if status is None:
            return self.error(model, TIMEOUT, f"the board command gave no result within {mcu.timeout:g} s "
                                              "and was stopped (raise [mcu] timeout)")
        if status != 0:
            return self.error(model, RUNTIME_ERROR, f"the board command exited with status {status}: {tail(err or out)}")
        values = self.latencies_ms(out)
        if not values:
            return self.error(model, PARSE_ERROR, f"no match for latency_pattern {mcu.latency_pattern!r} in "
                                                  f"the board command's output: {tail(out) or '(no output)'}")
        stats = summarize(values)
        unsteady = (f"the board's runs vary by {stats['cv']:.0%} (coefficient of variation): check that nothing "
                    "else runs on it" if stats["cv"] > BOARD_MAX_CV else None)
        return replace(
            self.template(model),
            runtime_version=mcu.runtime_version, latency_ms=stats["median_ms"],
            median_ms=stats["median_ms"], mean_ms=stats["mean_ms"], std_ms=stats["std_ms"],
            min_ms=stats["min_ms"], p90_ms=stats["p90_ms"], cv=stats["cv"], runs=stats["runs"],
            noisy=unsteady is not None, samples_ms=tuple(values),
            timing={"method": "board", "window": {"unsteady": unsteady}, "retimed": 0},
            machine={"board": c.description or c.name, "clock_hz": mcu.clock_hz, "host": self.transport.describe()},
            extra={"unit": mcu.unit, "max_ms": stats["max_ms"]},
        )

    def _run_batch(self, models: list[ModelFile], indices: list[int]) -> Iterator[tuple[int, Measurement]]:
        batch = [models[i] for i in indices]
        with self.staged(batch) as paths:
            for index, model, remote in zip(indices, batch, paths):
                yield index, self._measure_one(model, remote)

    def check(self) -> dict[str, Any]:
        c, mcu = self.config, self.config.mcu
        assert mcu is not None
        report: dict[str, Any] = {"name": c.name, "kind": c.kind, "runtime": c.runtime,
                                  "runtime_version": mcu.runtime_version, **self.transport.describe()}
        problems: list[str] = []
        try:
            report.update(self.transport.connect())
            if mcu.check_command:
                status, out, err = self.transport.run(list(mcu.check_command), mcu.timeout)
                report["check_output"] = tail(out + err)
                if status != 0:
                    problems.append(f"[mcu] check_command exited with status {status}: {tail(err or out)}")
        except ConnectionLost as exc:
            problems.append(f"unreachable: {exc}")
        report["problems"] = problems
        report["ok"] = not problems
        return report
