"""/metrics for the server: every model's runtime registry in one exposition, plus the batchers' gauges.

Each runtime keeps its own prometheus-client registry (several runtimes in one process stay apart); the
server merges their families by name, so two models' ``edgeq_requests_total`` are one family with two
``model`` labels, as the text format requires.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


class _Merged:
    """A collector yielding every runtime registry's families, samples of equal names merged."""

    def __init__(self, registries: list[Any]) -> None:
        self.registries = registries

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        families: dict[str, Any] = {}
        for reg in self.registries:
            for fam in reg.collect():  # fresh Metric objects per collect: extending them is safe
                if fam.name in families:
                    families[fam.name].samples.extend(fam.samples)
                else:
                    families[fam.name] = fam
        yield from families.values()


class _BatchCounts:
    """edgeq_serve_batches_total and edgeq_serve_batch_rows_total (rows / batches = the mean batch size)."""

    def __init__(self, models: Mapping[str, Any]) -> None:
        self.batchers = {name: m.batcher for name, m in models.items() if m.batcher is not None}

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        batches = CounterMetricFamily("edgeq_serve_batches", "Batches the server ran", labels=["model"])
        rows = CounterMetricFamily("edgeq_serve_batch_rows", "Rows over all batches", labels=["model"])
        for name, b in self.batchers.items():
            batches.add_metric([name], b.batches)
            rows.add_metric([name], b.rows)
        yield batches
        yield rows


class ServeMetrics:
    """The server's registry: runtime metrics, rows decoding, requests waiting, requests refused."""

    def __init__(self, models: Mapping[str, Any]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        r = self.registry = CollectorRegistry(auto_describe=True)
        r.register(_Merged([m.rt.metrics.registry for m in models.values()]))
        r.register(_BatchCounts(models))
        active = Gauge("edgeq_serve_active_rows", "Rows decoding in the server's batches", ["model"], registry=r)
        waiting = Gauge("edgeq_serve_waiting_requests", "Requests waiting for a batch slot", ["model"], registry=r)
        for name, m in models.items():
            if m.batcher is not None:
                b = m.batcher
                active.labels(name).set_function(lambda b=b: b.active)
                waiting.labels(name).set_function(lambda b=b: b.waiting)
        self._rejected = Counter("edgeq_serve_rejected", "Requests refused with 429 (queue full)",
                                 ["model", "endpoint"], registry=r)

    def rejected(self, model: str, endpoint: str) -> None:
        self._rejected.labels(model, endpoint).inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
