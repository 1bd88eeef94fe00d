"""The progress bar's ETA, on a fake clock: no first-sample extrapolation, and the work's own expectation first."""

from __future__ import annotations

import io

import pytest

from edgenas.progress import Progress, WindowEta


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def bar(total: int, clock: FakeClock) -> Progress:
    return Progress(total, "work", stream=io.StringIO(), clock=clock, log_every=0.0)


def test_the_first_unit_gives_no_eta_its_one_time_costs_would_swamp_it():
    """The first unit took 30 s (imports, a supernet built, an agent started); the others take 1 s each. The
    old bar said 99 x 30 s = 49 min after the first; the truth is 99 s."""
    clock = FakeClock()
    b = bar(100, clock)
    clock.now += 30.0
    b.update(1)
    assert b.eta() is None and "ETA ?" in b.line()
    clock.now += 1.0
    b.update(1)
    assert b.eta() == 98.0  # the rate since the first unit's end: 1 unit/s, 98 left
    assert "ETA 01:38" in b.line()
    for _ in range(48):
        clock.now += 1.0
        b.update(1)
    assert b.eta() == 50.0


def test_the_eta_stays_within_2x_of_the_truth_from_its_first_figure():
    """Units of 2 s after a 60 s first one: every ETA the bar shows is within 2x of the time actually left."""
    clock = FakeClock()
    b = bar(50, clock)
    finish = clock.now + 60.0 + 49 * 2.0
    clock.now += 60.0
    b.update(1)
    shown = []
    for _ in range(49):
        clock.now += 2.0
        b.update(1)
        if b.eta() is not None and b.n < b.total:
            shown.append((b.eta(), finish - clock.now))
    assert shown and all(truth / 2 <= eta <= 2 * truth for eta, truth in shown)


def test_an_expectation_from_the_work_gives_the_eta_before_any_unit_is_done():
    """A device says its window will take 40 s (its timing plan, known once the models are loaded): the ETA counts
    that down, although the window's results all arrive at its end."""
    clock = FakeClock()
    b = bar(300, clock)
    assert b.eta() is None
    b.expect(40.0)
    assert b.eta() == 40.0
    clock.now += 15.0
    assert b.eta() == 25.0 and "ETA 00:25" in b.line()
    clock.now += 30.0
    assert b.eta() == 0.0  # a window that overran its plan says 0, never a negative time
    b.update(300)  # the burst: the expectation still rules (a burst's rate says nothing of the next window)
    assert b.eta() == 0.0


def test_no_total_means_no_eta():
    clock = FakeClock()
    b = Progress(None, "work", stream=io.StringIO(), clock=clock)
    clock.now += 1.0
    b.update(1)
    clock.now += 1.0
    b.update(1)
    assert b.eta() is None and "ETA" not in b.line()


def test_a_devices_windows_give_the_eta_its_plan_first_then_its_ticks():
    """6 models timed 2 a window, each planned at 4 s and 48 s at most. The first plan has no earlier window to say
    where in between this device's windows end, so it is kept but not drawn; the first tick (30 s left: the window
    waits for fast moments) is drawn, and the 4 models after it cost what this window's 2 did, their export and load
    included. Once a window has ended, the next is expected where it ended, and a tick says the geometric mean of
    that expectation and the device's figure."""
    clock = FakeClock()
    stream = io.StringIO()
    b = Progress(6, "measure", stream=stream, clock=clock, log_every=0.0)
    eta = WindowEta(b, clock=clock)
    clock.now += 5.0  # exports and loads
    eta.on_event("plan", {"models": 2, "seconds": 4.0, "max_seconds": 48.0})
    assert stream.getvalue() == "" and b.eta() == pytest.approx(4.0 + 4 * (9.0 / 2))
    clock.now += 1.0
    eta.on_event("tick", {"left_s": 30.0, "elapsed_s": 1.0})
    assert b.eta() == pytest.approx(30.0 + 4 * (36.0 / 2)) and stream.getvalue().rstrip().endswith("ETA 01:42")
    clock.now += 24.0
    eta.window_done()
    b.update(2)
    assert eta.share == pytest.approx(21.0 / 44.0)  # 25 s: 21 of the 44 s its plan left open
    clock.now += 1.0
    eta.on_event("plan", {"models": 2, "seconds": 4.0, "max_seconds": 48.0})  # 25 s, as the last one took
    assert b.eta() == pytest.approx(25.0 + 2 * ((31.0 + 25.0) / 4))
    eta.on_event("retime", {"reason": "unsteady"})
    assert b.eta() == pytest.approx(25.0 + 2 * ((31.0 + 25.0) / 4))  # as long again, from now
    eta.on_event("tick", {"rounds": 3})  # a tick without an estimate (an older agent) only redraws
    assert b.eta() == pytest.approx(25.0 + 2 * ((31.0 + 25.0) / 4))
    clock.now += 5.0
    eta.on_event("tick", {"left_s": 2.0})  # the runs so far say 2 s; windows here took 25 s, so 20 s left: 6.3 s
    assert b.eta() == pytest.approx(40 ** 0.5 + 2 * ((36.0 + 40 ** 0.5) / 4))
    eta.on_event("tick", {"left_s": 45.0})  # a slow spell: more than the windows before took (30 s between)
    assert b.eta() == pytest.approx(30.0 + 2 * ((36.0 + 30.0) / 4))


def test_an_expectation_and_a_refresh_draw_the_bar_before_any_unit_is_done():
    """A log shows the plan's ETA while the device times its window, not only when its results arrive."""
    clock = FakeClock()
    stream = io.StringIO()
    b = Progress(300, "measure", stream=stream, clock=clock, log_every=10.0)
    b.expect(40.0)
    assert stream.getvalue().splitlines()[-1].endswith("ETA 00:40")
    clock.now += 5.0
    b.refresh()  # within log_every of the last line: nothing new
    assert len(stream.getvalue().splitlines()) == 1
    clock.now += 6.0
    b.refresh()
    assert stream.getvalue().splitlines()[-1].endswith("ETA 00:29")


def test_a_device_that_remembers_its_windows_gives_the_first_plan_its_eta():
    """A device whose windows ended half-way between plan and most before (its plan's `share`): the first plan of a
    new run expects 4 + 0.5 x 44 = 26 s for its window, kept but not drawn; the first tick, a second later, draws
    the geometric mean of the 25 s that expectation still says and the 12 s its runs tell: 17 s."""
    clock = FakeClock()
    stream = io.StringIO()
    b = Progress(2, "measure", stream=stream, clock=clock, log_every=0.0)
    eta = WindowEta(b, clock=clock)
    eta.on_event("plan", {"models": 2, "seconds": 4.0, "max_seconds": 48.0, "share": 0.5})
    assert b.eta() == pytest.approx(26.0) and stream.getvalue() == ""
    clock.now += 1.0
    eta.on_event("tick", {"left_s": 12.0, "elapsed_s": 1.0})
    assert b.eta() == pytest.approx(300 ** 0.5) and stream.getvalue().rstrip().endswith("ETA 00:17")
    own = WindowEta(b, share=0.1, clock=clock)  # what this run's host saw gives way to the device's memory
    own.on_event("plan", {"models": 2, "seconds": 4.0, "max_seconds": 48.0, "share": 0.5})
    assert own.share == 0.5 and b.eta() == pytest.approx(26.0)
