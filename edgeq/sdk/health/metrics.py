"""Prometheus metrics of one runtime, in its own registry (several runtimes in one process stay apart).

Request counts and the latency histogram cost one ``deque.append`` on the request path: observations
are folded into bucket counts in bulk (numpy) when the registry is scraped or the queue grows, because
prometheus-client's per-call ``inc`` + ``observe`` (~2-5 us) is several percent of a small model's
inference. Other metrics are rare events and use prometheus-client directly.
``serve(port)`` exposes the registry over HTTP (127.0.0.1 unless told otherwise); ``render()`` returns
the text exposition format for an app that serves it itself.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np

KINDS = ("generate", "embed", "infer")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class LatencyLog:
    """Request latencies of one kind: appended lock-free, folded into histogram buckets in bulk."""

    DRAIN_AT = 4096

    def __init__(self) -> None:
        self.pending: deque[float] = deque()
        self.edges = np.asarray(LATENCY_BUCKETS)
        self.counts = np.zeros(len(LATENCY_BUCKETS) + 1, np.int64)  # last = +Inf bucket
        self.total = 0.0
        self.n = 0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        self.pending.append(seconds)
        if len(self.pending) >= self.DRAIN_AT:
            self.drain()

    def drain(self) -> None:
        with self._lock:
            q = self.pending
            vals = np.fromiter((q.popleft() for _ in range(len(q))), np.float64)
            if vals.size:
                self.counts += np.bincount(np.searchsorted(self.edges, vals, side="left"),
                                           minlength=self.counts.size)
                self.total += float(vals.sum())
                self.n += vals.size


class _RequestCollector:
    """Exposes the LatencyLogs as edgeq_requests_total and edgeq_request_latency_seconds."""

    def __init__(self, model: str, logs: dict[str, LatencyLog]) -> None:
        self.model, self.logs = model, logs

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        req = CounterMetricFamily("edgeq_requests", "Requests served", labels=["model", "kind"])
        lat = HistogramMetricFamily("edgeq_request_latency_seconds", "Request latency", labels=["model", "kind"])
        for kind, log in self.logs.items():
            log.drain()
            req.add_metric([self.model, kind], log.n)
            cum = np.cumsum(log.counts)
            buckets = [(str(e), int(c)) for e, c in zip(LATENCY_BUCKETS, cum[:-1])] + [("+Inf", int(cum[-1]))]
            lat.add_metric([self.model, kind], buckets, log.total)
        yield req
        yield lat


class RuntimeMetrics:
    """requests, latency histogram, tokens and tokens/s, canary scores, fallbacks, active version, degraded."""

    def __init__(self, model: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        r = self.registry = CollectorRegistry(auto_describe=True)
        self.model = model
        errors = Counter("edgeq_request_errors", "Requests that raised", ["model", "kind"], registry=r)
        self.errors = {k: errors.labels(model, k) for k in KINDS}
        #: kind -> LatencyLog; ``add(seconds)`` counts one request and its latency
        self.latency = {k: LatencyLog() for k in KINDS}
        r.register(_RequestCollector(model, self.latency))
        self.tokens = Counter("edgeq_generated_tokens", "Tokens generated", ["model"], registry=r).labels(model)
        self.tokens_per_s = Gauge("edgeq_decode_tokens_per_second", "Decode speed of the last generation",
                                  ["model"], registry=r).labels(model)
        self._canary = Gauge("edgeq_canary_score", "Last canary score per metric", ["model", "metric"], registry=r)
        canary_runs = Counter("edgeq_canary_runs", "Canary checks run", ["model", "result"], registry=r)
        self.canary_ok, self.canary_failed = canary_runs.labels(model, "ok"), canary_runs.labels(model, "breach")
        self.fallbacks = Counter("edgeq_fallbacks", "Rollbacks to a previous version", ["model"], registry=r).labels(model)
        self.nonfinite = Counter("edgeq_nonfinite_outputs", "Live outputs with NaN/Inf", ["model"], registry=r).labels(model)
        self.active_version = Gauge("edgeq_active_version", "Version serving new requests", ["model"], registry=r).labels(model)
        self.degraded = Gauge("edgeq_degraded", "1 when a breach found no usable previous version", ["model"],
                              registry=r).labels(model)
        self._server: Any = None

    def canary_scores(self, scores: dict[str, float]) -> None:
        for metric, value in scores.items():
            self._canary.labels(self.model, metric).set(value)

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``addr:port`` in a daemon thread (port 0 picks a free one); returns the port."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
