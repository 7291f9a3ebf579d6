"""Monitor scheduling: count triggers, the overhead budget, live NaN and shift triggers."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgeq.errors import ConfigError
from edgeq.sdk.health.monitor import MonitorConfig, Monitor


class Recorder:
    def __init__(self, cost: float = 0.0) -> None:
        self.reasons: list[str] = []
        self.cost = cost
        self.event = threading.Event()

    def __call__(self, reason: str) -> None:
        time.sleep(self.cost)
        self.reasons.append(reason)
        self.event.set()


def _until(cond, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.002)
    return False


def test_every_requests_triggers_a_canary() -> None:
    rec = Recorder()
    mon = Monitor(MonitorConfig(every_requests=10, every_seconds=0, check_on_load=False), "m", rec)
    mon.start()
    try:
        for _ in range(9):
            mon.on_request(0.001)
        time.sleep(0.05)
        assert rec.reasons == []
        mon.on_request(0.001)
        assert _until(lambda: rec.reasons == ["every_requests"])
    finally:
        mon.stop()


def test_overhead_budget_spaces_scheduled_canaries() -> None:
    rec = Recorder(cost=0.01)  # each canary takes 10 ms → at 5 % the next waits >= 200 ms
    mon = Monitor(MonitorConfig(every_requests=1, every_seconds=0, check_on_load=False, max_overhead=0.05), "m", rec)
    mon.start()
    try:
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            mon.on_request(0.001)
            time.sleep(0.0005)
        assert 1 <= len(rec.reasons) <= 4, rec.reasons
        # a live anomaly is not delayed by the budget
        n = len(rec.reasons)
        mon.on_finite(False)
        assert _until(lambda: len(rec.reasons) > n and rec.reasons[-1] == "nonfinite_output", timeout=0.15)
        assert mon.nonfinite == 1
    finally:
        mon.stop()


def test_online_shift_triggers_a_canary() -> None:
    rec = Recorder()
    mon = Monitor(MonitorConfig(every_requests=0, every_seconds=0, check_on_load=False, min_online_samples=8,
                                window=16), "m", rec)
    mon.reset("entropy", {"entropy_mean": 2.0, "entropy_std": 0.1}, online_shift=0.5)
    mon.start()
    try:
        mon.on_online(np.full(8, 2.2))  # within 50 %
        time.sleep(0.05)
        assert rec.reasons == []
        mon.on_online(np.full(8, 3.5))
        mon.on_online(np.full(8, 3.5))
        assert _until(lambda: rec.reasons == ["online_entropy_shift"])
        assert mon.online_summary()["entropy_baseline_mean"] == 2.0
    finally:
        mon.stop()


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
