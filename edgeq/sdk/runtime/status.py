"""What ``Runtime.status()`` returns: the serving version and its health, typed, with ``to_dict()`` for JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from edgeq.sdk.bundle.health import Verdict
from edgeq.sdk.runtime.context import ContextLimits


@dataclass(frozen=True)
class RuntimeStatus:
    """The app's view of one runtime (`edgeq status` shows the store's).

    Args:
        model / version / backend / task: what serves new requests.
        degraded: why the model is degraded (a breach found no usable previous version), else None.
        fallbacks: switches to a previous version so far.
        canaries: canary checks run so far; last_canary: the latest verdict (None before the first).
        health_data: whether the bundle has canaries and reference outputs.
        nonfinite_outputs: live outputs seen with NaN/Inf.
        latency: request latency percentiles (seconds) over the monitor's window.
        online: the live statistic (entropy or embedding norm) against its build-time baseline.
        context: what one request may use on the serving engine.
    """

    model: str
    version: int
    backend: str
    task: str
    degraded: str | None
    fallbacks: int
    canaries: int
    last_canary: Verdict | None
    health_data: bool
    nonfinite_outputs: int
    latency: dict[str, float] = field(default_factory=dict)
    online: dict[str, Any] = field(default_factory=dict)
    context: ContextLimits = ContextLimits()

    @property
    def ok(self) -> bool:
        """Serving without degradation."""
        return self.degraded is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain dicts, lists and scalars."""
        d = dataclasses.asdict(self)
        if self.last_canary is not None:
            d["last_canary"]["breaches"] = list(self.last_canary.breaches)
        return d
