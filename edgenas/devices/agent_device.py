"""AgentDevice: measures models by running the benchmark agent on the device (this machine or over SSH)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from edgenas.devices.measurement import AGENT_ERROR, RUNTIME_ERROR, TIMEOUT, Measurement
from edgenas.devices.protocol import ConnectionLost, Device, ModelFile, Process

# Result fields the agent reports that map onto Measurement fields one to one.
_FIGURES = ("latency_ms", "median_ms", "mean_ms", "std_ms", "min_ms", "p90_ms", "runs", "warmup", "cv", "noisy",
            "load_ms", "timing")
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
                "--warmup", str(m.warmup), "--runs", str(m.runs), "--window", repr(m.window_s),
                "--retime", str(m.retime), "--min-fast-runs", str(m.min_fast_runs),
                "--model-timeout", repr(c.timeouts.model), "--watch-stdin", "--scale-runs-ms", repr(m.scale_runs_ms)]
        probe_file = self.transport.probe_file()
        if probe_file:
            argv += ["--probe-file", probe_file]
        if m.cpu_affinity:
            argv += ["--pin", ",".join(str(cpu) for cpu in m.cpu_affinity)]
        return argv + ["--", *paths]

    def _from_result(self, model: ModelFile, hello: dict[str, Any], result: dict[str, Any]) -> Measurement:
        fields: dict[str, Any] = {
            "runtime_version": hello.get("runtime_version"),
            "machine": dict(hello.get("machine") or {}),
        }
        extra = {"runtime_package": hello.get("runtime_package"), "window_s": self.config.measure.window_s,
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
        """Read the agent's events: models are loaded one by one ("start", then "loaded" or an error "result"),
        timed together in rounds ("tick" about once a second, "retime" when a window was unsteady), and their
        results arrive at the end, each naming its model by index."""
        hello: dict[str, Any] | None = None
        loading: int | None = None  # the model being loaded and warmed up, if any
        finished: set[int] = set()
        round_s = 0.0  # one run of every loaded model: how long a timing round lasts, about
        while True:
            limit = self.config.timeouts.start
            if hello is not None:  # while timing, output comes after each round (ticks, about once a second)
                limit = self.config.timeouts.model if loading is not None else max(self.config.timeouts.model,
                                                                                   3 * round_s + 5)
            line = proc.readline(limit)
            if line is None:
                proc.kill(hello.get("pid") if hello else None)
                m = self.config.measure
                if loading is not None:
                    yield loading, self.error(
                        models[loading], TIMEOUT,
                        f"no result within {limit:g} s (load and {m.warmup} warm-up runs); "
                        "the agent was stopped (raise [timeouts] model for big models)",
                    )
                    return
                if hello is None:
                    message = f"the agent did not start within {limit:g} s"
                else:
                    message = (f"the agent stopped answering for {limit:g} s while timing the batch (one round of "
                               "every model must finish within [timeouts] model)")
                for i in indices:
                    if i not in finished:
                        yield i, self.error(models[i], TIMEOUT if hello else AGENT_ERROR, message)
                return
            if line == "":
                break
            event = parse_event(line)
            if event is None:
                continue
            kind = event["event"]
            index = event.get("index")
            slot = indices[index] if isinstance(index, int) and 0 <= index < len(indices) else None
            if kind == "hello":
                hello = event
            elif kind == "start" and slot is not None:
                loading = slot
            elif kind == "loaded":
                loading = None
                round_s += float(event.get("run_ms") or 0.0) / 1e3
            elif kind in ("retime", "plan", "tick") and self.on_event is not None:
                self.on_event(kind, event)
            elif kind == "result" and slot is not None and hello is not None and slot not in finished:
                loading = None
                finished.add(slot)
                yield slot, self._from_result(models[slot], hello, event)
        status = proc.wait(10.0)
        if hello is None:
            python = " ".join(self.config.python_argv)
            message = f"the agent did not start with {python} (exit status {status}): {tail(proc.stderr_tail())}"
            for i in indices:
                yield i, self.error(models[i], AGENT_ERROR, message)
            return
        died = f"the agent died while running the model (exit status {status}): {tail(proc.stderr_tail())}"
        if loading is not None and loading not in finished:
            finished.add(loading)
            yield loading, self.error(models[loading], RUNTIME_ERROR, died)
        for i in indices:  # the batch died while timing: every model left is without a figure
            if i not in finished:
                yield i, self.error(models[i], RUNTIME_ERROR,
                                    f"the agent died while timing the batch (exit status {status}): "
                                    f"{tail(proc.stderr_tail())}")

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
