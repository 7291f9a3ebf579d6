"""Monitor scheduling, stepped deterministically: a fake clock and ``Monitor.tick()`` (one iteration of the
loop) replace sleeps and counting inside time windows. Two tests run the real thread, with event waits."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgeq.errors import ConfigError
from edgeq.sdk.health.monitor import Monitor, MonitorConfig


class Clock:
    """A fake monotonic clock: time moves only when the test (or a canary's cost) moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Canary:
    """Records each canary's reason; each one costs ``cost`` seconds of the fake clock."""

    def __init__(self, clock: Clock, cost: float = 0.0, fail: bool = False) -> None:
        self.clock, self.cost, self.fail = clock, cost, fail
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> None:
        self.clock.now += self.cost
        self.reasons.append(reason)
        if self.fail:
            raise RuntimeError("canary broke")


def _monitor(clock: Clock, canary: Canary, **cfg: object) -> Monitor:
    cfg = {"every_seconds": 0, "check_on_load": False, "clock": clock, **cfg}
    return Monitor(MonitorConfig(**cfg), "m", canary)  # type: ignore[arg-type]


def test_every_requests_triggers_exactly_on_the_nth_request() -> None:
    clock = Clock()
    rec = Canary(clock)
    mon = _monitor(clock, rec, every_requests=10)
    for _ in range(9):
        mon.on_request(0.001)
        assert mon.tick() is None
    assert rec.reasons == [] and mon.pending is None
    mon.on_request(0.001)
    assert mon.pending == "every_requests"
    assert mon.tick() == "every_requests" and rec.reasons == ["every_requests"]
    assert mon.tick() is None  # one canary per trigger
    for _ in range(9):  # the count starts again after a canary
        mon.on_request(0.001)
    assert mon.tick() is None
    mon.on_request(0.001)
    assert mon.tick() == "every_requests" and mon.canaries == 2


def test_overhead_budget_spaces_scheduled_canaries_but_not_urgent_ones() -> None:
    clock = Clock()
    rec = Canary(clock, cost=0.01)  # each canary takes 10 ms → at 5 % the next scheduled one waits 200 ms
    mon = _monitor(clock, rec, every_requests=1, max_overhead=0.05)
    mon.on_request(0.001)
    assert mon.tick() == "every_requests"
    ended = clock.now
    assert mon.seconds_to_next() is None  # nothing asked for: wait for a trigger
    mon.on_request(0.001)
    assert mon.seconds_to_next() == pytest.approx(0.2)  # asked for, held back by the budget
    for step in range(19):  # requests keep asking; the budget holds them back for 200 ms
        clock.now = ended + 0.01 * step
        mon.on_request(0.001)
        assert mon.tick() is None, step
    assert mon.pending == "every_requests"
    # a live anomaly is not delayed by the budget, and takes the place of the pending scheduled canary
    mon.on_finite(False)
    assert mon.tick() == "nonfinite_output" and mon.nonfinite == 1
    assert mon.pending is None
    ended = clock.now
    mon.on_request(0.001)
    clock.now = ended + 0.2 - 1e-6
    assert mon.tick() is None
    clock.now = ended + 0.2
    assert mon.tick() == "every_requests"
    assert rec.reasons == ["every_requests", "nonfinite_output", "every_requests"]


def test_every_seconds_counts_from_the_end_of_the_last_canary() -> None:
    clock = Clock()
    rec = Canary(clock, cost=0.5)
    mon = _monitor(clock, rec, every_requests=0, every_seconds=30.0, max_overhead=1.0)
    start = clock.now
    assert mon.seconds_to_next() == pytest.approx(30.0)
    clock.now = start + 29.999
    assert mon.tick() is None
    clock.now = start + 30.0
    assert mon.tick() == "every_seconds"
    assert mon.seconds_to_next() == pytest.approx(30.0)  # from the canary's end (cost 0.5 s)
    clock.now = start + 60.0
    assert mon.tick() is None
    clock.now = start + 60.5
    assert mon.tick() == "every_seconds" and mon.canaries == 2


def test_nothing_scheduled_waits_for_a_trigger() -> None:
    clock = Clock()
    mon = _monitor(clock, Canary(clock), every_requests=0)
    assert mon.seconds_to_next() is None
    clock.now += 1e6
    assert mon.tick() is None


def test_urgent_reason_replaces_a_pending_scheduled_one_never_the_reverse() -> None:
    clock = Clock()
    mon = _monitor(clock, Canary(clock), every_requests=1)
    mon.trigger("every_requests")
    mon.trigger("version_loaded")
    assert mon.pending == "version_loaded"
    mon.trigger("every_requests")
    mon.trigger("nonfinite_output")  # a second urgent reason does not replace the first
    assert mon.pending == "version_loaded"


def test_online_shift_triggers_a_canary() -> None:
    clock = Clock()
    rec = Canary(clock)
    mon = _monitor(clock, rec, every_requests=0, min_online_samples=8, window=16)
    mon.reset("entropy", {"entropy_mean": 2.0, "entropy_std": 0.1}, online_shift=0.5)
    mon.on_online(np.full(8, 2.2))  # within 50 %
    assert mon.pending is None and mon.tick() is None
    mon.on_online(np.full(8, 3.5))  # window mean (2.2 + 3.5) / 2 = 2.85: still within 50 % of 2.0
    assert mon.pending is None
    mon.on_online(np.full(8, 3.5))  # window (2 x 8 of 3.5) mean 3.5 > 3.0
    assert mon.tick() == "online_entropy_shift" and rec.reasons == ["online_entropy_shift"]
    assert mon.online_summary()["entropy_baseline_mean"] == 2.0
    mon.on_online(np.full(8, np.nan))  # NaN counts as a shift
    assert mon.pending == "online_entropy_shift"


def test_version_load_asks_for_a_canary_when_configured() -> None:
    clock = Clock()
    rec = Canary(clock)
    on = _monitor(clock, rec, check_on_load=True)
    on.reset("entropy", {}, online_shift=0.5)
    assert on.tick() == "version_loaded"
    off = _monitor(clock, rec, check_on_load=False)
    off.reset("entropy", {}, online_shift=0.5)
    assert off.tick() is None


def test_a_failing_canary_is_logged_and_the_monitor_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rec = Canary(clock, fail=True)
    mon = _monitor(clock, rec, every_requests=1, max_overhead=1.0)
    mon.on_request(0.001)
    assert mon.tick() == "every_requests"
    assert "canary check failed unexpectedly" in caplog.text
    mon.on_request(0.001)
    assert mon.tick() == "every_requests" and mon.canaries == 2


def test_latency_percentiles_and_config_checks() -> None:
    mon = Monitor(MonitorConfig(window=64), "m", lambda r: None)
    for i in range(100):
        mon.on_request(i / 1000)
    p = mon.latency_percentiles()
    assert p["p50_ms"] == pytest.approx(67.5, abs=1) and p["p99_ms"] > p["p95_ms"] > p["p50_ms"]
    with pytest.raises(ConfigError):
        MonitorConfig(max_overhead=0)
    with pytest.raises(ConfigError):
        MonitorConfig(min_online_samples=1000, window=16)
    with pytest.raises(ConfigError):
        MonitorConfig(every_seconds=-1)
    with pytest.raises(ConfigError):
        MonitorConfig(clock=1.0)  # type: ignore[arg-type]


# -- the real thread: it calls tick() by itself (event waits with generous timeouts, no sleeps) ----------
def test_background_thread_runs_triggered_and_timed_canaries() -> None:
    seen: list[str] = []
    triggered, timed = threading.Event(), threading.Event()

    def canary(reason: str) -> None:
        seen.append(reason)
        (timed if reason == "every_seconds" else triggered).set()

    # every_seconds small so that the timed path runs too; max_overhead 1.0 lets it run back to back
    mon = Monitor(MonitorConfig(every_requests=3, every_seconds=0.05, check_on_load=False, max_overhead=1.0),
                  "m", canary)
    mon.start()
    try:
        assert mon.running
        for _ in range(3):
            mon.on_request(0.001)
        assert triggered.wait(30), seen
        assert timed.wait(30), seen
        assert "every_requests" in seen and "every_seconds" in seen
    finally:
        mon.stop()
    assert not mon.running


def test_stop_ends_the_thread_and_no_canary_runs_after_it() -> None:
    ran = threading.Event()
    mon = Monitor(MonitorConfig(every_requests=1, every_seconds=0, check_on_load=False), "m", lambda r: ran.set())
    mon.start()
    mon.stop()
    assert not mon.running
    mon.on_request(0.001)  # the trigger is recorded but no thread is left to run it
    assert mon.pending == "every_requests" and not ran.is_set()
    assert mon.tick() == "every_requests" and ran.is_set()  # stepping by hand still works
