"""The benchmark agent: times ONNX or TFLite models on the device it runs on, one JSON line per model.

This single file is copied to a device and run there with Python >= 3.7, numpy and one runtime:
onnxruntime, or a TFLite interpreter from ai_edge_litert, tflite_runtime or tensorflow.lite (tried
in that order). It imports nothing from edgenas. The host keeps it on the device under a name made
of its content hash, so a device never runs a stale copy.

    python3 agent.py info [--runtime onnxruntime|tflite]
    python3 agent.py measure --runtime R [--threads N] [--warmup W] [--runs K] [--pin 0,1]
                             [--max-cv 0.1] [--remeasure 1] [--watch-stdin] MODEL...

Every line on stdout is one JSON object with an "event" key, in this order:
    {"event": "hello", ...}                       the environment (machine, CPU, runtime, versions)
    {"event": "start", "index": i}                before each model
    {"event": "result", "index": i, ...}          after each model: statistics, or "error"
    {"event": "done"}
Anything a runtime prints itself goes to stderr, so stdout carries only these lines.

Each model is loaded, fed inputs of its own shapes and dtypes (dynamic dimensions set to 1), run
`warmup` times untimed, then `runs` times, each timed with a monotonic nanosecond clock. When the
coefficient of variation of a pass is above `--max-cv`, the timed runs are repeated up to
`--remeasure` more times and the steadiest pass is kept; every pass's median and CV is reported.
"""

import argparse
import gc
import json
import os
import platform
import sys
import threading
import time

PROTOCOL = 1
RUNTIMES = ("onnxruntime", "tflite")

# Error codes reported on a model's result line.
RUNTIME_MISSING = "runtime_missing"
BAD_MODEL = "bad_model"
RUNTIME_ERROR = "runtime_error"
BAD_CONFIG = "bad_config"

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


class AgentError(Exception):
    """A failure with an error code, reported on the model's result line."""

    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code


def summarize(samples_ms):
    """Median, mean, std (sample), min, max, p90 and CV of a list of times in milliseconds."""
    import numpy as np

    a = np.asarray(samples_ms, dtype=np.float64)
    n = int(a.size)
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if n > 1 else 0.0
    return {
        "median_ms": float(np.median(a)),
        "mean_ms": mean,
        "std_ms": std,
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
        "p90_ms": float(np.percentile(a, 90)),
        "cv": std / mean if mean > 0 else 0.0,
        "runs": n,
    }


def _read(path, limit=65536):
    try:
        with open(path) as f:
            return f.read(limit)
    except (OSError, ValueError):
        return None


def _cpu_model():
    text = _read("/proc/cpuinfo", 1 << 20) or ""
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or None


def _cpu_quota():
    """The CPU quota of this process's cgroup as a fraction of one CPU, or None when unlimited."""
    text = _read("/proc/self/cgroup") or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, rel = parts[1].split(","), parts[2]
        if "cpu" in controllers:
            for mount in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):
                quota = _read(mount + rel + "/cpu.cfs_quota_us")
                period = _read(mount + rel + "/cpu.cfs_period_us")
                if quota and period:
                    q, p = int(quota), int(period)
                    return round(q / p, 4) if q > 0 and p > 0 else None
        elif parts[1] == "":
            cpu_max = _read("/sys/fs/cgroup" + rel + "/cpu.max")
            if cpu_max:
                q, _, p = cpu_max.strip().partition(" ")
                if q != "max" and p:
                    return round(int(q) / int(p), 4)
    return None


def machine_info():
    """What is needed to judge a measurement later: machine, CPU, load, quota, clock and temperature."""
    info = {
        "machine": platform.machine(),
        "system": platform.system(),
        "release": platform.release(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "clock": "time.perf_counter_ns",
    }
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:
        info["numpy"] = None
    if hasattr(os, "sched_getaffinity"):
        info["cpu_affinity"] = sorted(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        try:
            info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            pass
    info["cpu_quota"] = _cpu_quota()
    cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq/"
    governor = _read(cpufreq + "scaling_governor")
    if governor:
        info["cpu_governor"] = governor.strip()
    freq = _read(cpufreq + "scaling_cur_freq")
    if freq and freq.strip().isdigit():
        info["cpu_mhz"] = int(freq) // 1000
    temp = _read("/sys/class/thermal/thermal_zone0/temp")
    if temp and temp.strip().lstrip("-").isdigit():
        info["temperature_c"] = int(temp) / 1000.0
    return info


def _load_tflite_interpreter():
    """The first TFLite interpreter class that imports: ai_edge_litert, tflite_runtime, tensorflow.lite."""
    problems = []
    try:
        import ai_edge_litert
        from ai_edge_litert import interpreter as mod

        return mod.Interpreter, "ai_edge_litert", getattr(ai_edge_litert, "__version__", "unknown")
    except Exception as exc:  # noqa: BLE001 - any import failure means "try the next one"
        problems.append(f"ai_edge_litert: {exc}")
    try:
        import tflite_runtime
        from tflite_runtime import interpreter as mod

        return mod.Interpreter, "tflite_runtime", getattr(tflite_runtime, "__version__", "unknown")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"tflite_runtime: {exc}")
    try:
        import tensorflow as tf

        return tf.lite.Interpreter, "tensorflow", tf.__version__
    except Exception as exc:  # noqa: BLE001
        problems.append(f"tensorflow: {exc}")
    raise AgentError(RUNTIME_MISSING, "no TFLite interpreter importable ({})".format("; ".join(problems)))


def load_runtime(name):
    """Import a runtime: returns (module or Interpreter class, package name, version)."""
    if name == "onnxruntime":
        try:
            import onnxruntime
        except Exception as exc:  # noqa: BLE001
            raise AgentError(RUNTIME_MISSING, f"onnxruntime is not importable: {exc}") from exc
        return onnxruntime, "onnxruntime", onnxruntime.__version__
    if name == "tflite":
        return _load_tflite_interpreter()
    raise AgentError(BAD_CONFIG, "unknown runtime {!r}: choose from {}".format(name, ", ".join(RUNTIMES)))


def _random_input(rng, shape, dtype):
    import numpy as np

    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.itemsize == 1:  # quantized int8/uint8 inputs: the whole range
        info = np.iinfo(dtype)
        return rng.integers(int(info.min), int(info.max) + 1, size=shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)  # indices and counts: zero is always in range


class OnnxModel:
    def __init__(self, ort, path, threads, rng):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001
            raise AgentError(BAD_MODEL, f"onnxruntime could not load the model: {exc}") from exc
        self.feeds = {}
        self.inputs = []
        for arg in self.session.get_inputs():
            dtype = _ORT_DTYPES.get(arg.type)
            if dtype is None:
                raise AgentError(BAD_MODEL, f"input {arg.name!r} has type {arg.type}, which the agent cannot feed")
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in (arg.shape or [])]
            self.feeds[arg.name] = _random_input(rng, shape, dtype)
            self.inputs.append({"name": arg.name, "shape": shape, "dtype": dtype})

    def run(self):
        self.session.run(None, self.feeds)


class TFLiteModel:
    def __init__(self, interpreter_cls, path, threads, rng):
        try:
            self.interpreter = interpreter_cls(model_path=path, num_threads=threads)
            details = self.interpreter.get_input_details()
            for d in details:
                signature = d.get("shape_signature")
                if signature is not None and any(int(x) < 0 for x in signature):
                    fixed = [int(x) if int(x) > 0 else 1 for x in signature]
                    self.interpreter.resize_tensor_input(d["index"], fixed)
            self.interpreter.allocate_tensors()
        except Exception as exc:  # noqa: BLE001
            raise AgentError(BAD_MODEL, f"the TFLite interpreter could not load the model: {exc}") from exc
        self.inputs = []
        for d in self.interpreter.get_input_details():
            shape = [int(x) for x in d["shape"]]
            value = _random_input(rng, shape, d["dtype"])
            self.interpreter.set_tensor(d["index"], value)
            self.inputs.append({"name": d["name"], "shape": shape, "dtype": str(value.dtype)})

    def run(self):
        self.interpreter.invoke()


def _time_runs(model, runs):
    clock = time.perf_counter_ns
    samples = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(runs):
            t0 = clock()
            model.run()
            samples.append((clock() - t0) / 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def measure_model(runtime, loaded, path, args):
    """Load one model, warm it up and time it; returns the result fields (stats or raises AgentError)."""
    import numpy as np

    impl, _, _ = loaded
    rng = np.random.default_rng(0)
    if not os.path.isfile(path):
        raise AgentError(BAD_MODEL, f"no model file at {path} on the device")
    t0 = time.perf_counter_ns()
    if runtime == "onnxruntime":
        model = OnnxModel(impl, path, args.threads, rng)
    else:
        model = TFLiteModel(impl, path, args.threads, rng)
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    try:
        first_run_ms = None
        for i in range(args.warmup):
            t0 = time.perf_counter_ns()
            model.run()
            if i == 0:
                first_run_ms = (time.perf_counter_ns() - t0) / 1e6
        passes = []
        best = None
        for _ in range(1 + args.remeasure):
            samples = _time_runs(model, args.runs)
            stats = summarize(samples)
            passes.append({"median_ms": stats["median_ms"], "cv": stats["cv"]})
            if best is None or stats["cv"] < best[0]["cv"]:
                best = (stats, samples)
            if stats["cv"] <= args.max_cv:
                break
    except AgentError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise AgentError(RUNTIME_ERROR, f"running the model failed: {exc}") from exc
    stats, samples = best
    result = dict(stats)
    result.update(
        {
            "samples_ms": [round(s, 6) for s in samples],
            "passes": passes,
            "noisy": stats["cv"] > args.max_cv,
            "warmup": args.warmup,
            "load_ms": load_ms,
            "first_run_ms": first_run_ms,
            "inputs": model.inputs,
        }
    )
    return result


class _Output:
    """JSON lines on the real stdout; fd 1 is pointed at stderr so runtimes' own prints stay out."""

    def __init__(self):
        sys.stdout.flush()
        self.stream = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def emit(self, event, **fields):
        fields["event"] = event
        self.stream.write(json.dumps(fields, sort_keys=True) + "\n")
        self.stream.flush()


def _exit_when_stdin_closes():
    """The host holds stdin open; when the link or the host goes away, stop instead of running on."""
    try:  # os.read, not sys.stdin: a thread blocked inside sys.stdin holds a lock that stalls exit
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    os._exit(75)


def _pin(cpus):
    if not cpus:
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise AgentError(BAD_CONFIG, "CPU pinning is not supported on this system")
    try:
        os.sched_setaffinity(0, cpus)
    except (OSError, ValueError) as exc:
        raise AgentError(BAD_CONFIG, f"cannot pin to CPUs {sorted(cpus)}: {exc}") from exc
    return sorted(os.sched_getaffinity(0))


def cmd_measure(args, out):
    if args.watch_stdin:
        threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    setup_error = None
    loaded = (None, None, None)
    try:
        _pin(args.pin)
        loaded = load_runtime(args.runtime)
    except AgentError as exc:
        setup_error = exc
    hello = {"protocol": PROTOCOL, "pid": os.getpid(), "runtime": args.runtime, "threads": args.threads}
    hello["runtime_package"], hello["runtime_version"] = loaded[1], loaded[2]
    hello["machine"] = machine_info()
    out.emit("hello", **hello)
    for index, path in enumerate(args.models):
        out.emit("start", index=index)
        if setup_error is not None:
            out.emit("result", index=index, error=setup_error.code, error_message=str(setup_error))
            continue
        try:
            result = measure_model(args.runtime, loaded, path, args)
        except AgentError as exc:
            out.emit("result", index=index, error=exc.code, error_message=str(exc))
            continue
        out.emit("result", index=index, error=None, **result)
    out.emit("done")
    return 0


def cmd_info(args, out):
    info = {"protocol": PROTOCOL, "pid": os.getpid(), "machine": machine_info(), "runtimes": {}}
    for name in [args.runtime] if args.runtime else RUNTIMES:
        try:
            _, package, version = load_runtime(name)
            info["runtimes"][name] = {"package": package, "version": version}
        except AgentError as exc:
            info["runtimes"][name] = {"error": exc.code, "error_message": str(exc)}
    out.emit("info", **info)
    return 0


def _cpu_list(text):
    try:
        return {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError("expected CPU numbers separated by commas, like 0,1") from None


def build_parser():
    parser = argparse.ArgumentParser(prog="agent.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    info = sub.add_parser("info", help="print the environment and the runtimes that import")
    info.add_argument("--runtime", choices=RUNTIMES)
    measure = sub.add_parser("measure", help="time models, one JSON line per model")
    measure.add_argument("--runtime", choices=RUNTIMES, required=True)
    measure.add_argument("--threads", type=int, default=1)
    measure.add_argument("--warmup", type=int, default=5)
    measure.add_argument("--runs", type=int, default=30)
    measure.add_argument("--pin", type=_cpu_list, default=None, help="CPU numbers to pin to, like 0,1")
    measure.add_argument("--max-cv", type=float, default=0.1)
    measure.add_argument("--remeasure", type=int, default=1)
    measure.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes")
    measure.add_argument("models", nargs="+")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    if getattr(args, "runs", 1) < 1 or getattr(args, "warmup", 0) < 0 or getattr(args, "threads", 1) < 1:
        sys.stderr.write("agent.py: --runs and --threads must be >= 1 and --warmup >= 0\n")
        return 2
    out = _Output()
    status = cmd_info(args, out) if args.command == "info" else cmd_measure(args, out)
    out.stream.flush()
    sys.stderr.flush()
    os._exit(status)  # skip unloading the runtime at shutdown: nothing is left to do, and it takes time


if __name__ == "__main__":
    sys.exit(main())
