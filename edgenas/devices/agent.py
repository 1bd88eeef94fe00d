"""The benchmark agent: times ONNX or TFLite models on the device it runs on, one JSON line per model.

This single file is copied to a device and run there with Python >= 3.7, numpy and one runtime:
onnxruntime, or a TFLite interpreter from ai_edge_litert, tflite_runtime or tensorflow.lite (tried
in that order). It imports nothing from edgenas. The host keeps it on the device under a name made
of its content hash, so a device never runs a stale copy.

    python3 agent.py info [--runtime onnxruntime|tflite]
    python3 agent.py measure --runtime R [--threads N] [--warmup W] [--runs K] [--window S] [--retime 1]
                             [--probe-file F] [--max-group-mb M] [--pin 0,1] [--watch-stdin] MODEL...

Every line on stdout is one JSON object with an "event" key:
    {"event": "hello", ...}                       the environment (machine, CPU, runtime, versions)
    {"event": "start", "index": i}                before loading each model
    {"event": "loaded", "index": i, ...}          the model loaded and warmed up
    {"event": "plan", "models": n, "seconds": s, "max_seconds": m, "share": f}  a window's models are loaded:
                                                  what timing them should take, the most it may (to the cap, timed
                                                  again), and where this device's windows ended between the two
    {"event": "tick", "left_s": s, ...}           about once a second while timing, with the window's time left
    {"event": "retime", "reason": ...}            the window was unsteady and is timed again
    {"event": "result", "index": i, ...}          figures, or "error" (load failures come at once)
    {"event": "done"}
Anything a runtime prints itself goes to stderr, so stdout carries only these lines.

Models are timed interleaved. A device's speed changes every second or so (DVFS, thermal limits, a
neighbour on the same core), so a model timed in one burst lands wholly in one speed state, and two
bursts of the same model seconds apart can differ by 40 %. The agent loads every model of the batch
(in groups of at most --max-group-mb of files), warms each up, then times rounds of one run of each
model (after --hot-runs untimed runs of it, so the timed run finds the model in cache however many
others share the window), in a fresh random order each round, for at least --window seconds and --runs
rounds. Before each run a speed probe (a fixed integer loop) is timed, and each run keeps its time
stamp and the runner thread's CPU time. Every model thus sees the same mixture of speed states; the
figure taken from its runs is described in `window_stats`, how far to trust the window in
`window_summary`.
"""

import argparse
import gc
import json
import os
import platform
import sys
import threading
import time

import numpy as np

PROTOCOL = 1
RUNTIMES = ("onnxruntime", "tflite")

# Error codes reported on a model's result line.
RUNTIME_MISSING = "runtime_missing"
BAD_MODEL = "bad_model"
RUNTIME_ERROR = "runtime_error"
BAD_CONFIG = "bad_config"
TIMEOUT = "timeout"

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
    for path in _cgroup_cpu_files("cpu.max"):  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
        q, _, p = (_read(path) or "").strip().partition(" ")
        if q and q != "max" and p:
            return round(int(q) / int(p), 4)
    for path in _cgroup_cpu_files("cpu.cfs_quota_us"):  # cgroup v1
        quota, period = _read(path), _read(path[: -len("cpu.cfs_quota_us")] + "cpu.cfs_period_us")
        if quota and period:
            q, p = int(quota), int(period)
            return round(q / p, 4) if q > 0 and p > 0 else None
    return None


def _cgroup_cpu_files(name):
    """Paths of `name` (like cpu.stat) in this process's cpu cgroup, v1 and v2 layouts, that exist."""
    text = _read("/proc/self/cgroup") or ""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, rel = parts[1].split(","), parts[2]
        if "cpu" in controllers:
            out += [m + rel + "/" + name for m in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct")]
        elif parts[1] == "":
            out.append("/sys/fs/cgroup" + rel + "/" + name)
    return [p for p in out if os.path.isfile(p)]


def throttled_ns():
    """Nanoseconds this process's cgroup has been held back by its CPU quota so far, or None when unknown."""
    for path in _cgroup_cpu_files("cpu.stat"):
        for line in (_read(path) or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "throttled_time" and value.strip().isdigit():  # cgroup v1: nanoseconds
                return int(value)
            if key == "throttled_usec" and value.strip().isdigit():  # cgroup v2: microseconds
                return int(value) * 1000
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
        # deferred: numpy may be missing on a device; the agent reports None instead of failing to start
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
        # deferred: ai_edge_litert (the [tflite] extra) loads only when this runs, not on import
        import ai_edge_litert
        from ai_edge_litert import interpreter as mod

        return mod.Interpreter, "ai_edge_litert", getattr(ai_edge_litert, "__version__", "unknown")
    except Exception as exc:  # noqa: BLE001 - any import failure means "try the next one"
        problems.append(f"ai_edge_litert: {exc}")
    try:
        # deferred: tflite_runtime (not a dependency) loads only when this runs, not on import
        import tflite_runtime
        from tflite_runtime import interpreter as mod

        return mod.Interpreter, "tflite_runtime", getattr(tflite_runtime, "__version__", "unknown")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"tflite_runtime: {exc}")
    try:
        # deferred: tensorflow (not a dependency) loads only when this runs, not on import
        import tensorflow as tf

        return tf.lite.Interpreter, "tensorflow", tf.__version__
    except Exception as exc:  # noqa: BLE001
        problems.append(f"tensorflow: {exc}")
    raise AgentError(RUNTIME_MISSING, "no TFLite interpreter importable ({})".format("; ".join(problems)))


def load_runtime(name):
    """Import a runtime: returns (module or Interpreter class, package name, version)."""
    if name == "onnxruntime":
        try:
            # deferred: onnxruntime loads only when this runs, not on import
            import onnxruntime
        except Exception as exc:  # noqa: BLE001
            raise AgentError(RUNTIME_MISSING, f"onnxruntime is not importable: {exc}") from exc
        return onnxruntime, "onnxruntime", onnxruntime.__version__
    if name == "tflite":
        return _load_tflite_interpreter()
    raise AgentError(BAD_CONFIG, "unknown runtime {!r}: choose from {}".format(name, ", ".join(RUNTIMES)))


def _random_input(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.itemsize == 1:  # quantized int8/uint8 inputs: the whole range
        info = np.iinfo(dtype)
        return rng.integers(int(info.min), int(info.max) + 1, size=shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)  # indices and counts: zero is always in range


_ORT_POOL = {}


def _shared_ort_pool(ort, threads):
    """Make onnxruntime's global thread pool (`threads` intra-op threads) once; False when this version cannot."""
    if "threads" not in _ORT_POOL:
        try:
            ort.set_global_thread_pool_sizes(threads, 1)
            _ORT_POOL["threads"] = threads
        except Exception:  # noqa: BLE001 - older onnxruntime, or the environment already exists
            _ORT_POOL["threads"] = None
    return _ORT_POOL["threads"] == threads


class OnnxModel:
    def __init__(self, ort, path, threads, rng):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads > 1:
            # Every session has its own thread pool by default, whose workers spin for a while after each run; with a
            # batch of sessions timed interleaved, the spinning workers of the others take the cores (measured here:
            # 2-thread figures 26x too slow, no two windows alike). All sessions share one pool instead, as the
            # sessions of one app would; an onnxruntime too old for that gets workers that sleep when idle.
            if _shared_ort_pool(ort, threads):
                options.use_per_session_threads = False
            else:
                try:
                    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                except Exception:  # noqa: BLE001 - too old to know the setting either
                    pass
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


PROBE_LOOPS = 2000  # the speed probe: a fixed pure-Python integer loop, a few tens of microseconds


def probe():
    """Time a fixed integer loop (milliseconds): how fast the CPU runs this process right now."""
    t0 = time.perf_counter_ns()
    x = 0
    for i in range(PROBE_LOOPS):
        x += i
    return (time.perf_counter_ns() - t0) / 1e6


def load_model(runtime, loaded, path, threads, rng):
    """Load one model for timing; raises AgentError (bad_model) when the runtime cannot load it."""
    impl = loaded[0]
    if not os.path.isfile(path):
        raise AgentError(BAD_MODEL, f"no model file at {path} on the device")
    if runtime == "onnxruntime":
        return OnnxModel(impl, path, threads, rng)
    return TFLiteModel(impl, path, threads, rng)


def _run(model):
    try:
        model.run()
    except Exception as exc:  # noqa: BLE001
        raise AgentError(RUNTIME_ERROR, f"running the model failed: {exc}") from exc


MAX_WINDOW_FACTOR = 6  # a window waits for fast moments at most this many times its length


def fast_level(probe_fast_ms, probe_ref=None):
    """The probe reading of the device's fast state: the window's fastest readings, or the device's reference
    (the fastest it has read in earlier windows) when the window never came down to it.

    Judged by the window alone, a window spent wholly in a slow spell finds its own slow readings "fast": the
    demo's calibration once stopped such a window after 4 s (every run counted as fast at the half-way check),
    and its 21 subnets measured 1.24x their held-out figures; their runs taken within 1.2x of the reference
    were 0.80x of what was recorded."""
    if probe_ref and probe_fast_ms:
        return min(probe_fast_ms, probe_ref)
    return probe_fast_ms or probe_ref


def _enough_fast_runs(samples, wanted, probe_ref=None):
    """Whether every model has its `wanted` (index -> count) runs taken in fast moments (probe within FAST_PROBE of
    the device's fast level: the fastest readings so far, or the device's reference when lower; see `fast_level`)."""
    if not isinstance(wanted, dict):
        wanted = {i: wanted for i in samples}
    probes = [p for rows in samples.values() for _, p, _, _ in rows]
    if not probes:
        return True
    fast = FAST_PROBE * fast_level(_percentile(probes, 5), probe_ref)
    return all(sum(1 for _, p, _, _ in rows if p <= fast) >= wanted[i] for i, rows in samples.items())


# Models slower than this (per run) are timed in fewer rounds of the window, in proportion (a 3 ms model in every
# third round: 20 runs, not 60), with one untimed run before each timed one, not --hot-runs: a run that long has
# its own weights in cache after one run, and its figure moves less from run to run than a 0.2 ms piece's. A
# 224 px MobileNetV3 subnet (3 ms here) then costs 6 runs' time per timed run of 20, not 4 of 60: seconds a
# window, not minutes, and every model still spans the whole window (interleaved). 0 turns this off.
SCALE_RUNS_MS = 1.0
MIN_SCALED_RUNS = 20


def timing_plan(run_ms, runs, hot_runs, min_fast_runs, window_s, scale_ms=SCALE_RUNS_MS):
    """How each model of a window is timed, from its warm-up cost `run_ms` (index -> ms): {index: (every, hot)}
    (it takes part in every `every`-th round, after `hot` untimed runs), its timed runs and fast runs wanted, and
    the window's expected seconds (what the host shows as the ETA before any result arrives)."""
    plan, wanted, cost_ms = {}, {}, 0.0
    for i, ms in run_ms.items():
        every, hot = 1, hot_runs
        if scale_ms and ms > scale_ms:
            every = max(1, min(int(ms / scale_ms), runs // min(MIN_SCALED_RUNS, runs)))
            hot = min(hot_runs, 1)
        n = -(-runs // every)
        plan[i] = (every, hot)
        wanted[i] = min(min_fast_runs, max(n // 2, 1)) if every > 1 else min_fast_runs
        cost_ms += n * ms * (1 + hot)
    return plan, wanted, max(window_s, cost_ms / 1e3)


def window_left_s(samples, wanted, rounds, elapsed, args, probe_ref=None):
    """Seconds this window still needs, as far as its runs so far tell (sent with each tick: the host's ETA). The
    window ends once it has lasted --window seconds, run --runs rounds and every model has its fast-moment runs
    (see `time_window`), so the time left is the longest of: the window's rest, its rounds still to run at this
    window's pace, and, for the model furthest from its fast-moment runs, those still wanted at the rate it has
    gathered them (a device in a slow spell gathers none: the window then runs to its cap). Never beyond the cap:
    MAX_WINDOW_FACTOR windows once the rounds are run, --max-rounds rounds.

    A timing plan counts runs only; on a busy machine a window of 224 px subnets waited for fast moments 3-8x as
    long as its plan said, which only the runs themselves show."""
    if rounds <= 0 or elapsed <= 0:
        return max(float(args.window) - elapsed, 0.0)
    per_round = elapsed / rounds
    rounds_left = max(args.runs - rounds, 0) * per_round
    left = max(args.window - elapsed, rounds_left)
    probes = [p for rows in samples.values() for _, p, _, _ in rows]
    if args.min_fast_runs > 0 and probes:
        fast = FAST_PROBE * fast_level(_percentile(probes, 5), probe_ref)
        for i, rows in samples.items():
            have = sum(1 for _, p, _, _ in rows if p <= fast)
            need = wanted[i] - have
            if need > 0:
                left = max(left, need * elapsed / have if have else float("inf"))
    cap = min(max(args.window * MAX_WINDOW_FACTOR - elapsed, rounds_left), max(args.max_rounds - rounds, 0) * per_round)
    return max(min(left, cap), 0.0)


def time_window(models, args, out, rng, probe_ref=None, plan=None, wanted=None, retimes_left=0, has_cpu_clock=False,
                quota=None):
    """Time every model of `models` (index -> model) interleaved: rounds of one timed run of each model (after
    `args.hot_runs` untimed ones, so its weights are in cache whatever else the window holds: without them a
    model timed among 40 others measured 30 % slower than among 4, with 1 13 %, with 3 3 %), in a fresh random
    order each round, until the window has lasted `args.window` seconds, every model has `args.runs`
    runs and `args.min_fast_runs` of them in fast moments (checked a few times a second; at most MAX_WINDOW_FACTOR
    windows and `args.max_rounds` rounds; fast as the device's reference `probe_ref` knows it, see `fast_level`).
    Before each run the speed probe is timed. `plan` (see `timing_plan`) times a slow model in every few rounds
    only, with fewer untimed runs, and `wanted` its fast runs. Each tick says what the window has left (see
    `window_left_s`), twice that while the window so far is unsteady (`window_summary`, with `has_cpu_clock` and
    `quota`) and `retimes_left` it may be timed again.

    Returns index -> list of (time since the window began in s, probe ms, run ms), or index -> AgentError for a
    model that failed in the window."""
    clock = time.perf_counter_ns
    cpu_clock = getattr(time, "thread_time_ns", None) or (lambda: 0)  # the runner thread's own CPU time
    plan = plan or {i: (1, args.hot_runs) for i in models}
    wanted = wanted or {i: args.min_fast_runs for i in models}
    samples = {i: [] for i in models}
    failed = {}
    order = list(models)
    throttled_start = throttled_ns()
    enough_fast = args.min_fast_runs <= 0
    t_start = clock()
    last_tick = last_check = t_start
    rounds = 0
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while order:
            elapsed = (clock() - t_start) / 1e9
            if rounds >= args.max_rounds or (elapsed >= args.window * MAX_WINDOW_FACTOR and rounds >= args.runs):
                break
            if rounds >= args.runs and elapsed >= args.window and enough_fast:
                break
            rng.shuffle(order)
            for i in list(order):
                every, hot = plan[i]
                if (rounds + i) % every:
                    continue
                p = probe()
                try:  # untimed runs first: the timed one finds its weights in cache, however many models share
                    for _ in range(hot):  # the window (else a model's figure depends on its batch's size)
                        _run(models[i])
                    t0 = clock()
                    c0 = cpu_clock()  # inside the wall interval: a quota's stall caught at this system call is seen
                    _run(models[i])
                    c1 = cpu_clock()
                    t1 = clock()
                except AgentError as exc:
                    failed[i] = exc
                    order.remove(i)
                    continue
                samples[i].append(((t0 - t_start) / 1e9, p, (t1 - t0) / 1e6, (c1 - c0) / 1e6))
            rounds += 1
            now = clock()
            if now - last_tick > 1e9:  # a sign of life for the host, about once a second, with the time left
                elapsed = (now - t_start) / 1e9
                left = window_left_s(samples, wanted, rounds, elapsed, args, probe_ref)
                if retimes_left and window_summary(samples, has_cpu_clock, probe_ref, quota).get("unsteady"):
                    left += elapsed + left  # unsteady so far: it will be timed again, as long again
                out.emit("tick", rounds=rounds, elapsed_s=round(elapsed, 3), left_s=round(left, 3))
                last_tick = now
            if not enough_fast and now - last_check > 0.25e9 and now - t_start > 0.5 * args.window * 1e9:
                enough_fast = _enough_fast_runs(samples, wanted, probe_ref)
                last_check = now
    finally:
        if gc_was_enabled:
            gc.enable()
    result = dict(samples)
    result.update(failed)
    throttled_end = throttled_ns()
    elapsed_ns = clock() - t_start
    if throttled_start is not None and throttled_end is not None and elapsed_ns > 0:
        result["throttled_share"] = min(max((throttled_end - throttled_start) / float(elapsed_ns), 0.0), 0.95)
    return result


LATENCY_QUANTILE = 10  # percent: the quantile of a model's fast-moment runs (docs/decisions.md compares the choices)
FAST_PROBE = 1.2  # a run whose probe read within this factor of the device's fast level ran in a fast moment
MIN_FAST_RUNS = 10  # fewer fast-moment runs than this: the quantile is taken over the runs of the fastest moments
SLOW_PROBE = 1.25  # a probe reading this much above the window's fastest readings marks a slow moment


def _percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def window_stats(rows, has_cpu_clock, quota=None, threads=1, probe_fast_ms=None):
    """Figures of one model's interleaved runs [(t_s, probe_ms, wall_ms, cpu_ms)] over a window (times in ms).

    The machine moves between speed states every second or so (DVFS, a neighbour on the same core, a
    migrating big.LITTLE thread); which share of a window each state takes changes from window to window,
    so a median or a mean of the runs, or even a low quantile of all of them, moves with it. `latency_ms`
    is the figure a latency is judged by:

        latency = P10(fast-moment runs without their stalls) x threads / CPU quota (when the quota is smaller)

    A fast-moment run is one whose speed probe, timed just before it, read within 1.2x of the device's fast
    level (`probe_fast_ms`: the window's fastest readings, or the device's reference when lower, see
    `fast_level`); a window waits for enough of them, and their quantile does not depend on how much of the
    window was slow. With fewer than MIN_FAST_RUNS, the runs of the window's fastest moments stand in. A stall
    is time the runner thread spent off the CPU within a run (wall time beyond its own CPU time, above the
    smallest such wait of the model's runs): another process taking the core, or the quota. A CPU quota (the
    process's cgroup limit, in CPUs) smaller than the runtime's threads makes a device steadily slower, so it
    stays in the figure: at 50 % of a CPU, twice the cost. (The cgroup's throttled time over a window, reported
    as `throttled_share`, varied from window to window: 0.49 then 0.44 for the same 100 subnets, so the
    configured quota is used.) Other processes taking the core do not (they come and go); window_summary flags a
    window where they did. Without a thread CPU clock (or with more than one thread) no stalls are removed.
    """
    a = np.asarray(rows, dtype=np.float64)
    t, probes, wall, cpu = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
    stats = summarize(wall)
    if has_cpu_clock:
        off = wall - cpu
        stall = np.maximum(off - float(np.percentile(off, 5)), 0.0)
    else:
        stall = np.zeros_like(wall)
    clean = wall - stall
    fast_moment = probes <= FAST_PROBE * probe_fast_ms if probe_fast_ms else np.ones(len(wall), dtype=bool)
    if int(fast_moment.sum()) < MIN_FAST_RUNS:  # the runs of the fastest moments there were (not all of them: in a
        fast_moment = np.zeros(len(wall), dtype=bool)  # slow spell their P10 is the slow state's figure)
        fast_moment[np.argsort(probes, kind="stable")[:MIN_FAST_RUNS]] = True
    fast = float(np.percentile(clean[fast_moment], LATENCY_QUANTILE))
    quota_factor = max(1.0, threads / quota) if quota else 1.0
    stats["latency_ms"] = fast * quota_factor
    stats["fast_ms"] = fast
    stats["fast_runs"] = int(fast_moment.sum())
    stats["stall_ms"] = float(stall.mean())
    stats["quota_factor"] = quota_factor
    stats["p10_ms"] = float(np.percentile(wall, 10))
    q1, q3 = np.percentile(wall, [25, 75])
    stats["spread"] = float((q3 - q1) / stats["median_ms"]) if stats["median_ms"] > 0 else 0.0
    stats["window_s"] = float(t[-1] - t[0]) if len(t) > 1 else 0.0
    return stats


def thin(samples, keep):
    """At most `keep` samples, evenly spread over the window (all of them when there are fewer)."""
    if len(samples) <= keep:
        return list(samples)
    step = len(samples) / float(keep)
    return [samples[int(k * step)] for k in range(keep)]


def window_summary(window, has_cpu_clock, probe_ref, quota=None):
    """What the window saw of the device: the probe's fastest readings and the share of slow moments, the
    share of time the runner spent off the CPU in each half, and whether to trust it (`unsteady` says why not).

    A window is unsteady when its probe never reached the device's known fast level (`probe_ref`, the
    fastest this device's probe has read, within 15 %: the whole window was slow), when the share of
    time off the CPU differs between its halves by more than 10 points (something else took the core
    for part of it), or when more than 10 % of it went to other work although no CPU quota (`quota`)
    throttles this process: a figure taken then includes someone else's work.
    A CPU quota takes a steady share, which stays in the figures."""
    rows = [r for r in window.values() if isinstance(r, list) and r]
    if not rows:
        return {"unsteady": None}
    a = np.asarray([x for r in rows for x in r], dtype=np.float64)
    a = a[np.argsort(a[:, 0])]
    probes = a[:, 1]
    fast = _percentile(probes, 5)
    slow = probes > SLOW_PROBE * fast
    out = {"probe_fast_ms": fast, "probe_ref_ms": probe_ref, "throttled_share": window.get("throttled_share"),
           "probe_ratio": float(np.median(probes[slow]) / fast) if slow.any() else 1.0,
           "slow_share": float(slow.mean()), "rounds": max(len(r) for r in rows),
           "seconds": float(a[-1, 0] - a[0, 0])}
    half = len(a) // 2
    shares = []
    for part in (a[:half], a[half:]):  # the share of wall time the runner spent off the CPU
        wall = part[:, 2].sum()
        shares.append(float(np.maximum(part[:, 2] - part[:, 3], 0).sum() / wall) if has_cpu_clock and wall > 0 else 0.0)
    out["off_cpu_share"] = [round(s, 4) for s in shares]
    reasons = []
    if probe_ref and fast > 1.15 * probe_ref:
        reasons.append(f"the probe never read the device's fast level ({fast:.4f} ms against {probe_ref:.4f} ms)")
    if abs(shares[0] - shares[1]) > 0.10:
        reasons.append(f"the time taken by other work changed during the window ({shares[0]:.0%} then "
                       f"{shares[1]:.0%} off the CPU)")
    elif not quota and min(shares) > 0.10:
        reasons.append(f"other work took {min(shares):.0%} of the core (no CPU quota limits this process)")
    out["unsteady"] = "; ".join(reasons) or None
    return out


def _device_file(path):
    """What the device's probe file holds (a dict; empty when there is none or it cannot be read)."""
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}


def _update_device_file(path, **fields):
    """Set `fields` in the device's probe file (atomically); nothing happens when it cannot be written."""
    if not path:
        return
    try:
        data = _device_file(path)
        data.update(fields, probe_loops=PROBE_LOOPS)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            os.makedirs(folder)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass


def read_probe_ref(path):
    """The fastest probe reading stored in `path` (None when there is none yet)."""
    if not path:
        return None
    try:
        value = float(_device_file(path)["probe_fast_ms"])
        return value if value > 0 else None
    except (ValueError, KeyError, TypeError):
        return None


def write_probe_ref(path, value):
    """Keep the fastest probe level seen in `path` (atomically); nothing happens when it cannot be written."""
    if value:
        _update_device_file(path, probe_fast_ms=value)


def read_window_share(path):
    """Where this device's windows have ended between their plan (0) and their most (1), as `path` remembers
    (None before any): the host's expectation of a window before its first tick."""
    try:
        value = float(_device_file(path)["window_share"]) if path else None
    except (ValueError, KeyError, TypeError):
        return None
    return min(max(value, 0.0), 1.0) if value is not None else None


def write_window_share(path, planned, most, took):
    """Remember where a window that took `took` s ended between `planned` and `most` (a running mean, a quarter
    for the newest)."""
    if not path or most <= planned:
        return
    share = min(max((took - planned) / (most - planned), 0.0), 1.0)
    before = read_window_share(path)
    _update_device_file(path, window_share=round(share if before is None else before + (share - before) / 4, 4))


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


def _groups(paths, max_mb):
    """Consecutive groups of model indices whose files add up to at most `max_mb` (at least one model each):
    the models of a group are loaded together and timed interleaved."""
    groups, current, size = [], [], 0.0
    for index, path in enumerate(paths):
        mb = os.path.getsize(path) / 1e6 if os.path.isfile(path) else 0.0
        if current and size + mb > max_mb:
            groups.append(current)
            current, size = [], 0.0
        current.append(index)
        size += mb
    if current:
        groups.append(current)
    return groups


def _load_and_warm(runtime, loaded, paths, group, args, out, rng):
    """Load and warm up each model of `group` (at least 3 runs, which also tell what a run costs); a model that
    fails, or whose timed runs would take longer than --model-timeout, gets its error result now."""
    models, facts = {}, {}
    for index in group:
        out.emit("start", index=index)
        try:
            t0 = time.perf_counter_ns()
            model = load_model(runtime, loaded, paths[index], args.threads, rng)
            load_ms = (time.perf_counter_ns() - t0) / 1e6
            runs_ms = []
            for _ in range(max(3, args.warmup)):  # the fastest of at least 3 runs estimates a run's cost
                t0 = time.perf_counter_ns()
                _run(model)
                runs_ms.append((time.perf_counter_ns() - t0) / 1e6)
            if args.model_timeout and min(runs_ms) * args.runs / 1e3 > args.model_timeout:
                fastest = min(runs_ms)
                raise AgentError(TIMEOUT, f"one run takes {fastest:.4g} ms, so {args.runs} timed runs would take longer "
                                          f"than the {args.model_timeout:g} s allowed per model (raise [timeouts] model "
                                          "for big models)")
        except AgentError as exc:
            out.emit("result", index=index, error=exc.code, error_message=str(exc))
            continue
        models[index] = model
        facts[index] = {"load_ms": load_ms, "first_run_ms": runs_ms[0], "run_ms": min(runs_ms), "inputs": model.inputs}
        out.emit("loaded", index=index, load_ms=load_ms, run_ms=min(runs_ms))
    return models, facts


def _time_group(models, facts, args, out, rng, has_cpu_clock):
    """Time a group in windows: an unsteady window (see window_summary) is timed again, up to `args.retime` more
    times, and the steadiest is kept. Returns (window, its summary, every window's summary)."""
    summaries, best = [], None
    plan, wanted, seconds = timing_plan({i: facts[i]["run_ms"] for i in models}, args.runs, args.hot_runs,
                                        args.min_fast_runs, args.window, args.scale_runs_ms)
    most = (1 + args.retime) * max(seconds, args.window * MAX_WINDOW_FACTOR)  # waiting to its cap, timed again
    out.emit("plan", models=len(models), seconds=round(seconds, 3), max_seconds=round(most, 3),
             share=read_window_share(args.probe_file),
             runs={str(i): -(-args.runs // every) for i, (every, _) in plan.items()})
    t0 = time.perf_counter()
    for attempt in range(1 + args.retime):
        probe_ref = read_probe_ref(args.probe_file)
        quota = _cpu_quota()
        window = time_window(models, args, out, rng, probe_ref, plan, wanted, retimes_left=args.retime - attempt,
                             has_cpu_clock=has_cpu_clock, quota=quota)
        summary = window_summary(window, has_cpu_clock, probe_ref, quota)
        if summary.get("probe_fast_ms") and (probe_ref is None or summary["probe_fast_ms"] < probe_ref):
            write_probe_ref(args.probe_file, summary["probe_fast_ms"])
        summaries.append(summary)
        if best is None or (best[1].get("unsteady") and not summary.get("unsteady")):
            best = (window, summary)
        if not summary.get("unsteady"):
            break
        if attempt < args.retime:
            out.emit("retime", reason=summary["unsteady"])
    write_window_share(args.probe_file, seconds, most, time.perf_counter() - t0)
    return best[0], best[1], summaries


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
    hello = {"protocol": PROTOCOL, "pid": os.getpid(), "runtime": args.runtime, "threads": args.threads,
             "timing": "interleaved"}
    hello["runtime_package"], hello["runtime_version"] = loaded[1], loaded[2]
    hello["machine"] = machine_info()
    out.emit("hello", **hello)
    if setup_error is not None:
        for index in range(len(args.models)):
            out.emit("start", index=index)
            out.emit("result", index=index, error=setup_error.code, error_message=str(setup_error))
        out.emit("done")
        return 0
    rng = np.random.default_rng(0)
    # Off-CPU time within a run means a stall only when the run is the runner thread's alone: with more threads
    # it also waits for its workers, as a multi-threaded run does, so the runs are taken whole.
    has_cpu_clock = hasattr(time, "thread_time_ns") and args.threads == 1
    quota = _cpu_quota()
    for group in _groups(args.models, args.max_group_mb):
        models, facts = _load_and_warm(args.runtime, loaded, args.models, group, args, out, rng)
        if not models:
            continue
        window, summary, summaries = _time_group(models, facts, args, out, rng, has_cpu_clock)
        for index in group:
            rows = window.get(index)
            if rows is None:
                continue  # failed to load: reported already
            if isinstance(rows, AgentError):
                out.emit("result", index=index, error=rows.code, error_message=str(rows))
                continue
            result = window_stats(rows, has_cpu_clock, quota, args.threads,
                                  fast_level(summary.get("probe_fast_ms"), summary.get("probe_ref_ms")))
            kept = thin(rows, args.keep_samples)
            result.update(facts[index])
            result.update({
                "samples_ms": [round(r[2], 6) for r in kept],
                "sample_t_s": [round(r[0], 6) for r in kept],
                "sample_probe_ms": [round(r[1], 6) for r in kept],
                "sample_cpu_ms": [round(r[3], 6) for r in kept] if has_cpu_clock else [],
                "warmup": args.warmup,
                "noisy": bool(summary.get("unsteady")),
                "timing": {"method": "interleaved", "models": len(models), "retimed": len(summaries) - 1,
                           "window": summary, "windows": len(summaries)},
            })
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
    measure = sub.add_parser("measure", help="time models interleaved, one JSON line per model")
    measure.add_argument("--runtime", choices=RUNTIMES, required=True)
    measure.add_argument("--threads", type=int, default=1)
    measure.add_argument("--warmup", type=int, default=5, help="untimed runs of each model after loading it")
    measure.add_argument("--runs", type=int, default=60, help="timed runs of each model at least")
    measure.add_argument("--window", type=float, default=10.0, help="seconds the timing rounds last at least")
    measure.add_argument("--max-rounds", type=int, default=100000, help="timing rounds at most")
    measure.add_argument("--min-fast-runs", type=int, default=30,
                         help="runs of each model in fast moments the window waits for (at most 6x --window)")
    measure.add_argument("--retime", type=int, default=1, help="how many times an unsteady window is timed again")
    measure.add_argument("--hot-runs", type=int, default=3, help="untimed runs of a model before each timed one")
    measure.add_argument("--scale-runs-ms", type=float, default=SCALE_RUNS_MS,
                         help="models slower than this per run are timed in fewer rounds, in proportion, at least "
                              f"{MIN_SCALED_RUNS} (0: every model in every round)")
    measure.add_argument("--model-timeout", type=float, default=0.0,
                         help="seconds one model's timed runs may take at most (0: no limit)")
    measure.add_argument("--probe-file", default=None,
                         help="a file on the device keeping the fastest speed-probe level seen (the reference)")
    measure.add_argument("--max-group-mb", type=float, default=1024.0,
                         help="models loaded and timed together at most (MB of model files)")
    measure.add_argument("--keep-samples", type=int, default=200, help="samples per model reported, at most")
    measure.add_argument("--pin", type=_cpu_list, default=None, help="CPU numbers to pin to, like 0,1")
    measure.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes")
    measure.add_argument("models", nargs="+")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    if args.command == "measure" and (args.runs < 1 or args.warmup < 0 or args.threads < 1 or args.window < 0
                                       or args.hot_runs < 0 or args.scale_runs_ms < 0
                                       or args.max_rounds < 1 or args.retime < 0 or args.keep_samples < 1
                                       or args.min_fast_runs < 0):
        sys.stderr.write("agent.py: --runs, --threads, --max-rounds and --keep-samples must be >= 1, "
                         "--warmup, --window, --hot-runs, --scale-runs-ms, --retime and --min-fast-runs >= 0\n")
        return 2
    out = _Output()
    status = cmd_info(args, out) if args.command == "info" else cmd_measure(args, out)
    out.stream.flush()
    sys.stderr.flush()
    os._exit(status)  # skip unloading the runtime at shutdown: nothing is left to do, and it takes time


if __name__ == "__main__":
    sys.exit(main())
