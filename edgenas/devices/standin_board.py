"""A stand-in microcontroller board: runs a .tflite model in the real TFLite Micro interpreter on the host.

It behaves like the serial output of a TFLite Micro benchmark on a board, so the MCU device kind
can be developed and tested without hardware: it "flashes" (loads) the model into an arena,
runs it `--warmup` times, then prints one line per timed run, `latency_us=...` or, with
`--clock-hz`, `cycles=...` as a cycle counter would. Exit status 1 when the model does not fit or
uses an op TFLite Micro lacks, with the interpreter's message, as a board would report it.

    python3 standin_board.py --model MODEL.tflite [--runs 10] [--warmup 2] [--arena-kb 1024] [--clock-hz HZ]

Needs numpy and `tflite-micro` (pip install --pre tflite-micro). Imports nothing from edgenas.
"""

import argparse
import sys
import time

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(prog="standin_board.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--arena-kb", type=int, default=1024)
    parser.add_argument("--clock-hz", type=float, default=None, help="print cycles at this clock instead of us")
    args = parser.parse_args(argv)

    # deferred: tflite_micro (the [tflite] extra) loads only when this runs, not on import
    from tflite_micro.python.tflite_micro import runtime

    with open(args.model, "rb") as f:
        model = f.read()
    print(f"flash: {len(model)} bytes", flush=True)
    try:
        interpreter = runtime.Interpreter.from_bytes(model, arena_size=args.arena_kb * 1024)
        details = interpreter.get_input_details(0)
        rng = np.random.default_rng(0)
        dtype = np.dtype(details["dtype"])
        shape = [int(x) for x in details["shape"]]
        if dtype.kind == "f":
            data = rng.standard_normal(shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            data = rng.integers(int(info.min), int(info.max) + 1, size=shape).astype(dtype)
        interpreter.set_input(data, 0)
        for _ in range(args.warmup):
            interpreter.invoke()
        for _ in range(args.runs):
            t0 = time.perf_counter_ns()
            interpreter.invoke()
            elapsed_us = (time.perf_counter_ns() - t0) / 1e3
            if args.clock_hz:
                print(f"cycles={int(elapsed_us * args.clock_hz / 1e6)}", flush=True)
            else:
                print(f"latency_us={elapsed_us:.1f}", flush=True)
    except Exception as exc:  # noqa: BLE001 - a board reports any failure on its console
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        return 1
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
