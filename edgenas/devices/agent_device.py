"""AgentDevice: measures models by running the benchmark agent on the device (this machine or over SSH)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from edgenas.devices.base import ConnectionLost, Device, ModelFile, Process
from edgenas.devices.measurement import AGENT_ERROR, RUNTIME_ERROR, TIMEOUT, Measurement

# Result fields the agent reports that map onto Measurement fields one to one.
_FIGURES = ("median_ms", "mean_ms", "std_ms", "min_ms", "p90_ms", "runs", "warmup", "cv", "noisy", "load_ms")
_TUPLES = ("samples_ms", "passes", "inputs")
_PROTOCOL_KEYS = {"event", "index", "error", "error_message"}

INSTALL_HINTS = {
    "onnxruntime": "pip install onnxruntime",
    "tflite": "pip install ai-edge-litert (or tflite-runtime on Python <= 3.11 with numpy < 2)",
}


def parse_event(line: str) -> dict[str, Any] | None:
    """One agent output line as a dict, or None for anything that is not an agent event."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def tail(text: str, limit: int = 400) -> str:
    """The end of a process's output on one line, for an error message."""
    text = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return text if len(text) <= limit else "..." + text[-limit:]


class AgentDevice(Device):
    """A device that runs `agent.py measure` on batches of models and reads one JSON line per model."""

    def agent_argv(self, agent: str, paths: list[str]) -> list[str]:
        c, m = self.config, self.config.measure
        argv = [*c.python_argv, agent, "measure", "--runtime", c.runtime, "--threads", str(c.threads),
                "--warmup", str(m.warmup), "--runs", str(m.runs), "--max-cv", repr(m.max_cv),
                "--remeasure", str(m.remeasure), "--watch-stdin"]
        if m.cpu_affinity:
            argv += ["--pin", ",".join(str(cpu) for cpu in m.cpu_affinity)]
        return argv + ["--", *paths]

    def _from_result(self, model: ModelFile, hello: dict[str, Any], result: dict[str, Any]) -> Measurement:
        fields: dict[str, Any] = {
            "runtime_version": hello.get("runtime_version"),
            "machine": dict(hello.get("machine") or {}),
        }
        extra = {"runtime_package": hello.get("runtime_package"), "max_cv": self.config.measure.max_cv,
                 "agent_pid": hello.get("pid")}
        if result.get("error"):
            fields["error"] = str(result["error"])
            fields["error_message"] = str(result.get("error_message") or "")
        else:
            for key, value in result.items():
                if key in _FIGURES:
                    fields[key] = value
                elif key in _TUPLES:
                    fields[key] = tuple(value or ())
                elif key not in _PROTOCOL_KEYS:
                    extra[key] = value
        return replace(self.template(model), **fields, extra=extra)

    def _run_batch(self, models: list[ModelFile], indices: list[int]) -> Iterator[tuple[int, Measurement]]:
        agent = self.transport.stage_agent()
        with self.staged([models[i] for i in indices]) as paths:
            proc = self.transport.spawn(self.agent_argv(agent, paths))
            try:
                yield from self._read_agent(proc, models, indices)
            finally:  # also when the caller stops early (an exception in on_result, Ctrl-C)
                proc.kill()

    def _read_agent(self, proc: Process, models: list[ModelFile], indices: list[int]) -> Iterator[tuple[int, Measurement]]:
        hello: dict[str, Any] | None = None
        current: int | None = None
        finished: set[int] = set()
        while True:
            limit = self.config.timeouts.model if hello else self.config.timeouts.start
            line = proc.readline(limit)
            if line is None:
                proc.kill(hello.get("pid") if hello else None)
                if current is not None:
                    m = self.config.measure
                    yield current, self.error(
                        models[current], TIMEOUT,
                        f"no result within {limit:g} s (load, {m.warmup} warm-up and {m.runs} timed runs); "
                        "the agent was stopped (raise [timeouts] model for big models)",
                    )
                    return
                reason = "did not start" if hello is None else "stopped answering"
                for i in indices:
                    if i not in finished:
                        yield i, self.error(models[i], AGENT_ERROR, f"the agent {reason} within {limit:g} s")
                return
            if line == "":
                break
            event = parse_event(line)
            if event is None:
                continue
            kind = event["event"]
            if kind == "hello":
                hello = event
            elif kind == "start" and isinstance(event.get("index"), int) and 0 <= event["index"] < len(indices):
                current = indices[event["index"]]
            elif kind == "result" and current is not None and hello is not None:
                yield current, self._from_result(models[current], hello, event)
                finished.add(current)
                current = None
        status = proc.wait(10.0)
        if current is not None:
            yield current, self.error(
                models[current], RUNTIME_ERROR,
                f"the agent died while running the model (exit status {status}): {tail(proc.stderr_tail())}",
            )
        elif hello is None:
            python = " ".join(self.config.python_argv)
            message = f"the agent did not start with {python} (exit status {status}): {tail(proc.stderr_tail())}"
            for i in indices:
                yield i, self.error(models[i], AGENT_ERROR, message)

    def check(self) -> dict[str, Any]:
        c = self.config
        report: dict[str, Any] = {"name": c.name, "kind": c.kind, "runtime": c.runtime, "threads": c.threads}
        report.update(self.transport.describe())
        problems: list[str] = []
        try:
            report.update(self.transport.connect())
            agent = self.transport.stage_agent()
            argv = [*c.python_argv, agent, "info", "--runtime", c.runtime]
            status, out, err = self.transport.run(argv, c.timeouts.model)
        except ConnectionLost as exc:
            problems.append(f"unreachable: {exc}")
        else:
            info = next((e for e in map(parse_event, out.splitlines()) if e and e["event"] == "info"), None)
            if status != 0 or info is None:
                problems.append(
                    f"the device's Python ({' '.join(c.python_argv)}) could not run the agent "
                    f"(exit status {status}): {tail(err or out)}; set python in {c.path or 'the device file'}"
                )
            else:
                machine = info.get("machine") or {}
                report["python"] = machine.get("python")
                report["numpy"] = machine.get("numpy")
                report["machine"] = machine
                report["agent_version"] = self.describe()["agent_version"]
                rt = (info.get("runtimes") or {}).get(c.runtime) or {}
                if "error" in rt:
                    problems.append(f"{rt.get('error_message')}: install it on the device ({INSTALL_HINTS[c.runtime]})")
                else:
                    report["runtime_package"] = rt.get("package")
                    report["runtime_version"] = rt.get("version")
        report["problems"] = problems
        report["ok"] = not problems
        return report
