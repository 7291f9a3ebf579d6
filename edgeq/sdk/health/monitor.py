"""The health monitor: canary checks on a schedule in a background thread, and cheap live statistics.

Requests only bump counters and write into preallocated ring buffers; the canary itself runs in the
monitor thread, concurrently with requests (a backend session serves several threads), so no request
waits longer than one canary inference. Live statistics never roll back on their own — live traffic
differs from the canaries — they trigger an immediate canary, and the canary decides:

- a NaN/Inf in a live output → canary now;
- the live mean entropy (LMs) or embedding norm drifting from its build-time baseline by more than
  ``thresholds.online_shift`` (relative) → canary now;
- every ``every_requests`` requests or ``every_seconds`` seconds → canary.

A canary breach (quality down more than the allowed drop, drift, NaN/Inf, or the canary raising) is
handed to the runtime, which falls back to the previous version.

The schedule is one deterministic step, ``Monitor.tick()``, that reads time only from an injectable
clock; the background thread repeats it and sleeps in between, so tests step it without sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeq.errors import ConfigError
from edgeq.sdk.bundle.health import Thresholds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorConfig:
    """Monitor schedule and app overrides.

    Args:
        enabled: run the background monitor thread. Off, nothing runs canaries unless the app calls
            ``Monitor.tick()`` (or ``Runtime.check_health()``); counters and triggers still work.
        every_requests: run a canary after this many requests (0 = never by count).
        every_seconds: ... or after this many seconds, whichever comes first (0 = never by time).
        stats_every: compute live output statistics on one request (or decode step) in this many.
        window: live samples kept (latency percentiles, entropy/norm mean); rounded up to a power of two.
        min_online_samples: live statistics judged only once this many samples are in the window.
        thresholds: the app's thresholds instead of the bundle's (None = the bundle's).
        check_on_load: run a canary as soon as a version starts serving.
        max_overhead: scheduled canaries use at most this fraction of wall time: after a canary that
            took c seconds the next scheduled one waits at least c / max_overhead (a small model's
            canary batch costs ~10 requests, so "every 200 requests" alone could cost 5 %).
            Canaries triggered by a live NaN or shift are not delayed.
        clock: the monitor's only source of time (schedule, overhead budget, canary cost), in seconds;
            default ``time.monotonic``. A test passes a fake one and steps the monitor with ``tick()``.
    """

    enabled: bool = True
    every_requests: int = 200
    every_seconds: float = 30.0
    stats_every: int = 16
    window: int = 512
    min_online_samples: int = 32
    thresholds: Thresholds | None = None
    check_on_load: bool = True
    max_overhead: float = 0.01
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.max_overhead <= 1.0:
            raise ConfigError(f"max_overhead must be in (0, 1], got {self.max_overhead}")
        if self.every_requests < 0 or self.every_seconds < 0:
            raise ConfigError("every_requests and every_seconds must be >= 0")
        if self.stats_every < 1 or self.window < 8 or self.min_online_samples < 1:
            raise ConfigError("stats_every >= 1, window >= 8 and min_online_samples >= 1 are required")
        if self.min_online_samples > self.window:
            raise ConfigError("min_online_samples cannot exceed window")
        if not callable(self.clock):
            raise ConfigError(f"clock must be a callable returning seconds, got {self.clock!r}")


class Ring:
    """A fixed-size float ring buffer (no allocation per sample)."""

    def __init__(self, size: int) -> None:
        n = 1 << max(int(size) - 1, 1).bit_length()
        self.buf = np.zeros(n, np.float64)
        self.mask = n - 1
        self.count = 0

    def add(self, value: float) -> None:
        self.buf[self.count & self.mask] = value
        self.count += 1

    def values(self) -> np.ndarray:
        return self.buf[: min(self.count, self.mask + 1)].copy()

    def reset(self) -> None:
        self.count = 0


#: Canary reasons that the overhead budget may delay (live anomalies and version loads are never delayed).
SCHEDULED = ("every_requests", "every_seconds")


class Monitor:
    """Schedules canaries and keeps live statistics for one runtime.

    ``run_canary(reason)`` is the runtime's: it runs the canary on the serving version and handles a
    breach. Time comes only from ``cfg.clock``: the schedule, the overhead budget and canary costs are
    read from it, so a test can step the monitor with a fake clock.

    One step of the schedule is ``tick()``: it runs the canary that is due now, if any. The background
    thread (``start``) only calls ``tick`` in a loop and sleeps until the next canary can be due or a
    trigger wakes it; an app (or a test) that wants no thread leaves ``enabled`` off and calls ``tick``.
    """

    def __init__(self, cfg: MonitorConfig, name: str, run_canary: Callable[[str], Any],
                 nonfinite_counter: Any = None) -> None:
        self.cfg = cfg
        self._run_canary = run_canary
        self._nonfinite_counter = nonfinite_counter
        self._clock = clock = cfg.clock
        self.latency: deque[float] = deque(maxlen=cfg.window)  # append is atomic and allocation-free
        self.online = Ring(cfg.window)
        self.online_key = ""  # "entropy" or "norm"
        self.online_base: tuple[float, float] | None = None
        self._shift = Thresholds().online_shift
        self.nonfinite = 0
        self.canaries = 0
        self._since = 0
        self._tick = 0
        self._online_judged_at = 0
        self._reason: str | None = None
        self._reason_lock = threading.Lock()  # trigger() runs on request threads, tick() on the monitor's
        self._tick_lock = threading.Lock()  # one canary at a time, whoever steps the loop
        self._wake = threading.Event()
        self._not_before = clock()  # the overhead budget: no scheduled canary before this
        self._next_timed = clock() + cfg.every_seconds if cfg.every_seconds else None
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name=f"edgeq-monitor-{name}", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self.cfg.enabled:
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop = True
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the background thread is alive."""
        return self._thread.is_alive()

    def reset(self, online_key: str, baseline: dict[str, float], online_shift: float) -> None:
        """A new version serves: judge live statistics against its baseline (and shift limit) from scratch."""
        self.online_key = online_key
        self._shift = online_shift
        mean, std = baseline.get(f"{online_key}_mean"), baseline.get(f"{online_key}_std")
        self.online_base = (float(mean), float(std or 0.0)) if mean is not None else None
        self.online.reset()
        self._online_judged_at = 0
        if self.cfg.check_on_load:
            self.trigger("version_loaded")

    def trigger(self, reason: str) -> None:
        """Ask for a canary as soon as the monitor is free (cheap; callable from any thread).

        An urgent reason (anything not in SCHEDULED) replaces a pending scheduled one and is not held
        back by the overhead budget."""
        with self._reason_lock:
            if self._reason is None or (reason not in SCHEDULED and self._reason in SCHEDULED):
                self._reason = reason
            else:
                return
        self._wake.set()

    @property
    def pending(self) -> str | None:
        """The triggered canary not run yet (None: nothing asked for)."""
        return self._reason

    # -- hot path --------------------------------------------------------------------------------
    def on_request(self, seconds: float) -> None:
        self.latency.append(seconds)
        self._since += 1
        if self._since >= self.cfg.every_requests > 0:
            self.trigger("every_requests")

    def want_stats(self) -> bool:
        """True on one call in ``stats_every`` (which requests/steps pay for live statistics)."""
        self._tick += 1
        return self._tick % self.cfg.stats_every == 0

    def on_finite(self, finite: bool) -> None:
        if not finite:
            self.nonfinite += 1
            if self._nonfinite_counter is not None:
                self._nonfinite_counter.inc()
            self.trigger("nonfinite_output")

    def on_online(self, values: np.ndarray) -> None:
        """Live entropy or norm samples; a shift from the baseline triggers a canary."""
        for v in np.ravel(values)[:8]:
            self.online.add(float(v))
        if self.online_base is None or self.online.count - self._online_judged_at < self.cfg.min_online_samples:
            return
        self._online_judged_at = self.online.count
        mean = float(self.online.values().mean())
        base = self.online_base[0]
        limit = self._shift * max(abs(base), 1e-6)
        if not abs(mean - base) <= limit:  # NaN counts as a shift
            self.trigger(f"online_{self.online_key}_shift")

    # -- reporting --------------------------------------------------------------------------------
    def latency_percentiles(self) -> dict[str, float]:
        v = np.fromiter(tuple(self.latency), np.float64)
        if v.size == 0:
            return {}
        p50, p95, p99 = np.percentile(v, [50, 95, 99])
        return {"p50_ms": float(1e3 * p50), "p95_ms": float(1e3 * p95), "p99_ms": float(1e3 * p99)}

    def online_summary(self) -> dict[str, float]:
        v = self.online.values()
        out = {f"{self.online_key}_live_mean": float(v.mean())} if v.size else {}
        if self.online_base is not None:
            out[f"{self.online_key}_baseline_mean"] = self.online_base[0]
        return out

    # -- one step of the schedule, and the thread that repeats it --------------------------------------
    def due(self) -> str | None:
        """The reason of the canary that should run now, or None."""
        now = self._clock()
        reason = self._reason
        if reason is None and self._next_timed is not None and now >= self._next_timed:
            reason = "every_seconds"
        if reason in SCHEDULED and now < self._not_before:
            return None  # the overhead budget holds scheduled canaries back
        return reason

    def tick(self) -> str | None:
        """Run the canary that is due now, if any; return its reason (None: nothing was due).

        The canary's own failure is logged, never raised: the monitor must outlive any one failed check."""
        with self._tick_lock:
            with self._reason_lock:
                reason = self.due()
                if reason is None:
                    return None
                self._reason = None
            self._since = 0
            self.canaries += 1
            t0 = self._clock()
            try:
                self._run_canary(reason)
            except Exception:
                log.exception("canary check failed unexpectedly")
            t1 = self._clock()
            self._not_before = t1 + (t1 - t0) / self.cfg.max_overhead
            if self.cfg.every_seconds:
                self._next_timed = t1 + self.cfg.every_seconds
            return reason

    def seconds_to_next(self) -> float | None:
        """How long nothing can become due without a trigger (None: until a trigger)."""
        now = self._clock()
        waits = []
        if self._reason is not None:
            waits.append(self._not_before - now)  # a scheduled reason held back by the budget
        if self._next_timed is not None:
            waits.append(max(self._next_timed, self._not_before) - now)
        return max(0.0, min(waits)) if waits else None

    def _loop(self) -> None:
        while not self._stop:
            self._wake.clear()  # before tick(): a trigger from now on ends the wait below
            if self.tick() is None and not self._stop:
                self._wake.wait(self.seconds_to_next())
