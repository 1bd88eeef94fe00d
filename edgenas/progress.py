"""A dependency-free progress bar (count, rate, ETA and live fields) written to stderr."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO


def _fmt_seconds(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    """`with Progress(total, "phase kernel") as bar: bar.update(1, loss=0.3)`.

    Redraws in place on a terminal (at most 10 times a second); elsewhere (CI logs,
    pipes) prints a line every `log_every` seconds so logs stay short.

    The ETA is never a first-sample extrapolation: the first unit carries one-time costs (imports, building a
    supernet, starting a device's agent, loading models), and extrapolating it put "ETA 1h22m" on a measurement of
    minutes. Until a unit after the first is done the bar shows "ETA ?", unless the work itself told how long
    it should take (`expect(seconds_left)`, e.g. a device's timing plan for its window, which is known before
    any result arrives); afterwards the rate is counted from the first unit's end. Where units arrive in bursts
    (a device's window returns all its results at once), the expectation is kept until the next one.
    """

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        *,
        unit: str = "it",
        stream: TextIO | None = None,
        enabled: bool = True,
        log_every: float = 10.0,
        initial: int = 0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.log_every = log_every
        self.n = initial
        self._start_n = initial
        self.fields: dict[str, Any] = {}
        self._clock = clock
        self._t0 = clock()
        self._first: tuple[float, int] | None = None  # (time, count) when the first unit was done
        self._expected: tuple[float, float] | None = None  # (time said, seconds left said) from `expect`
        self._last_draw = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        return self._clock() - self._t0

    @property
    def rate(self) -> float:
        done = self.n - self._start_n
        return done / self.elapsed if self.elapsed > 0 else 0.0

    def expect(self, seconds_left: float, *, draw: bool = True) -> None:
        """What the work itself expects it still needs (seconds): the ETA until the next `expect`. `draw=False`
        keeps it for the next line without drawing one now (a guess the work will soon replace)."""
        self._expected = (self._clock(), max(float(seconds_left), 0.0))
        if draw:
            self.refresh()

    def refresh(self) -> None:
        """Redraw if it is time to (a sign of life while no unit finishes, e.g. during a device's window)."""
        now = self._clock()
        if now - self._last_draw >= (0.1 if self._tty else self.log_every):
            self._last_draw = now
            self._draw()

    def eta(self) -> float | None:
        """Seconds left: the work's own expectation if it gave one, else the rate since the first unit was done
        (None until a unit after the first is done: the first one carries the one-time costs)."""
        now = self._clock()
        if self.total is None:
            return None
        if self._expected is not None:
            said_at, left = self._expected
            return max(left - (now - said_at), 0.0)
        if self._first is None or self.n <= self._first[1] or now <= self._first[0]:
            return None
        rate = (self.n - self._first[1]) / (now - self._first[0])
        return max(self.total - self.n, 0) / rate

    def update(self, n: int = 1, **fields: Any) -> None:
        self.n += n
        self.fields.update(fields)
        now = self._clock()
        if self._first is None and n > 0:
            self._first = (now, self.n)
        interval = 0.1 if self._tty else self.log_every
        if now - self._last_draw >= interval or (self.total is not None and self.n >= self.total):
            self._last_draw = now
            self._draw()

    def line(self) -> str:
        rate = self.rate
        parts = [self.desc] if self.desc else []
        if self.total:
            frac = min(self.n / self.total, 1.0)
            width = 20
            filled = int(frac * width)
            parts.append(f"[{'#' * filled}{'.' * (width - filled)}] {self.n}/{self.total}")
            eta = self.eta()
            parts.append(f"{rate:.1f} {self.unit}/s ETA {'?' if eta is None else _fmt_seconds(eta)}")
        else:
            parts.append(f"{self.n} {self.unit} {rate:.1f} {self.unit}/s")
        for key, value in self.fields.items():
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        return " ".join(parts)

    def _draw(self) -> None:
        if not self.enabled:
            return
        if self._tty:
            self.stream.write("\r\x1b[2K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tty:
            self._draw()
            self.stream.write("\n")
        else:
            self.stream.write(self.line() + f" done in {_fmt_seconds(self.elapsed)}\n")
        self.stream.flush()


def track(items: Iterable[Any], desc: str = "", total: int | None = None, **kw: Any) -> Iterator[Any]:
    """Iterate with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, **kw) as bar:
        for item in items:
            yield item
            bar.update(1)


MIN_LEFT_S = 0.1  # a window's time left, at the least, where two estimates are averaged (geometrically)


class WindowEta:
    """The ETA of a bar over models a device times in windows (its agent's events: "plan" when a window's models
    are loaded, "tick" about once a second while it times them, "retime" when it times an unsteady window again;
    every result of a window arrives at its end). The ETA is what the device says the window has left, and the
    models after it at the cost per model so far (exports, loads and windows, this window's end included as
    projected).

    A window takes its plan's seconds (its runs) at least and its `max_seconds` at most (waiting for fast moments
    to its cap, then timed again). Where between the two this device's windows ended so far (`share`, 0 at the
    plan, 1 at the most) gives a window's expected length; each tick's `left_s` is the device's estimate from the
    runs it has taken. Early in a window each can be off by 3x or more, in either direction: a 6-subnet window's
    first figure said 12 s on a busy machine, and it took 48; at 224 px another's said 9 s against an expectation
    of 37 s, and it took 20; one int8 bar whose windows all ended early read 3.4x with the expectation as a
    floor. A tick therefore says the geometric mean of the two (the device's figure alone, where no window has
    ended yet to give `share`). A device that remembers where its windows ended (its plan's `share`: every window
    it timed, in this run and earlier ones) says so with each plan, and that rules. The plan's figure is kept but
    not drawn: the first tick, a second later, is (at 224 px a plan drawn from the remembered share said 54 s for
    a bar that took 125 s, its first window timed twice). Replayed on the events of two logged 224 px calibrations
    and an evaluation, the first drawn ETA of every bar came within 0.69-1.37x of the truth this way, and 0.71-1.56x
    with the expectation as a floor (the rule before, which read 3.4x in the int8 bench above).

        eta = WindowEta(bar); device.on_event = eta.on_event   # and eta.window_done() on each result
    """

    def __init__(self, bar: Progress, *, share: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bar = bar
        self.share = share  # where this device's windows ended between their plan (0) and their most (1)
        self.clock = clock
        self.started = clock()
        self.models = 0  # in the window being timed
        self.planned = 0.0  # its plan's seconds
        self.most = 0.0  # the most it may take
        self.since: float | None = None  # when its plan came, until its first result
        self._seen = 0  # windows that gave `share`

    def expected(self) -> float:
        """Seconds the window being timed should take in all, as this device's windows went."""
        return self.planned + (self.share or 0.0) * max(self.most - self.planned, 0.0)

    def _expect(self, left_s: float, draw: bool = True) -> None:
        done = self.bar.n
        per_model = (self.clock() + left_s - self.started) / max(done + self.models, 1)
        after = max((self.bar.total or 0) - done - self.models, 0)
        self.bar.expect(left_s + after * per_model, draw=draw)

    def on_event(self, kind: str, event: dict[str, Any]) -> None:
        if kind == "plan" and event.get("models") and event.get("seconds") is not None:
            self.models, self.planned, self.since = int(event["models"]), float(event["seconds"]), self.clock()
            self.most = float(event.get("max_seconds") or self.planned)
            if event.get("share") is not None:  # the device remembers its windows, these included
                self.share = float(event["share"])
            self._expect(self.expected(), draw=False)
        elif kind == "retime" and self.models and self.since is not None:
            self._expect(max(self.expected() - (self.clock() - self.since), self.planned), draw=False)
        elif kind == "tick" and self.models and event.get("left_s") is not None:
            left = float(event["left_s"])
            if self.share is not None and self.since is not None:
                expected_left = max(self.expected() - (self.clock() - self.since), MIN_LEFT_S)
                left = math.sqrt(max(left, MIN_LEFT_S) * expected_left)
            self._expect(left)
        elif kind == "tick":
            self.bar.refresh()

    def window_done(self) -> None:
        """A result arrived: the first of a window ends it (where it ended between its plan and its most updates
        `share`, a running mean over this device's windows)."""
        if self.since is not None and self.planned > 0:
            took = self.clock() - self.since
            span = self.most - self.planned
            share = min(max((took - self.planned) / span, 0.0), 1.0) if span > 0 else 0.0
            self._seen += 1
            self.share = share if self.share is None else self.share + (share - self.share) / min(self._seen, 4)
            self.since = None
