"""The health data schema: what the monitor checks a served model against.

A bundle carries ``health/health.json`` (this schema) and ``health/canaries.npz`` (canary inputs and the
UNQUANTIZED model's reference outputs). ``baseline`` holds the canary scores the quantized model got at
build time; the seed rule turns them into limits: a quality metric more than ``max_quality_drop``
(2 %) below its baseline is a breach, and a NaN/Inf anywhere is always a breach (comparisons are
written so that NaN never passes). Every quality metric is "higher is better", in [0, 1].

Drift (the served outputs moving away from those the same version gave after loading) is judged in
units of ``drift_scale``: the spread the quantized model's own canary outputs showed at build time
between healthy runs (other thread counts and batchings, and outputs perturbed by one rounding unit
of the graph's compute dtype). The same ``max_drift_z`` then means the same on every model, whereas
a fixed relative limit depends on how peaked the model's outputs are. Schema 1 bundles carry no
scale and keep the fixed relative limit ``max_drift``.
Device-side: numpy and the standard library only.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from edgeq.errors import BundleError, ConfigError
from edgeq.sdk.bundle.model_info import TASKS

HEALTH_SCHEMA_VERSION = 2
#: schemas this reader accepts: 1 has no drift calibration (``drift_scale`` absent)
READS_SCHEMAS = (1, 2)
HEALTH_JSON = "health/health.json"
CANARIES_NPZ = "health/canaries.npz"

#: Quality metrics each task's canary produces (see edgeq.sdk.health.canary for their definitions).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "text-generation": ("top1", "kl_quality"),
    "feature-extraction": ("cosine",),
    "generic": ("quality",),
}


@dataclass(frozen=True)
class Thresholds:
    """When a canary or live statistic is a breach.

    ``max_quality_drop``: relative drop from the build-time baseline that triggers a rollback (seed rule: 2 %).
    ``max_drift_z``: the largest change of the canary outputs from those the same version gave on its
    first canary after loading on this device, in units of the bundle's ``drift_scale`` (its healthy
    run-to-run spread, measured at build time). A version is deterministic on its backend (ONNX
    Runtime CPU repeats its outputs bit for bit), so a larger change means its weights or kernels
    changed under it — the drift the monitor exists for — even when the change is too small to cost
    2 % quality (a 5 % scale error in one layer moves a small LM's log-probs by only 0.3-1.2 %).
    30 sits between what FP16 rounding of a whole network does (a position shift through RoPE: 5-26
    units on tiny-llama/tiny-qwen3) and Gaussian noise of 5 % of the logits' std (67-69 units on both,
    FP16 graphs; 1e5 and more on FP32 graphs).
    ``max_drift``: the fixed relative limit (mean|change| / mean|outputs|) for schema-1 bundles, which
    have no ``drift_scale``.
    ``online_shift``: relative shift of the live entropy (LM) or embedding norm mean from its build-time
    baseline that triggers an immediate canary check (live traffic differs from canaries, so a shift alone
    never rolls back; the canary decides).
    """

    max_quality_drop: float = 0.02
    max_drift: float = 0.002
    online_shift: float = 0.5
    max_drift_z: float = 30.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_quality_drop < 1.0:
            raise ConfigError(f"max_quality_drop must be in [0, 1), got {self.max_quality_drop}")
        if not self.max_drift > 0.0:
            raise ConfigError(f"max_drift must be > 0, got {self.max_drift}")
        if not self.max_drift_z > 0.0:
            raise ConfigError(f"max_drift_z must be > 0, got {self.max_drift_z}")
        if not self.online_shift > 0.0:
            raise ConfigError(f"online_shift must be > 0, got {self.online_shift}")


@dataclass(frozen=True)
class Verdict:
    """The outcome of one canary check: scores, the limits they were held to, and what breached."""

    ok: bool
    scores: dict[str, float]
    limits: dict[str, float]
    breaches: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.ok:
            return "ok " + ", ".join(f"{k}={v:.4f}" for k, v in self.scores.items())
        return "; ".join(self.breaches)


@dataclass(frozen=True)
class HealthSpec:
    """The monitor's configuration as built on the host, plus the canary arrays (not serialised in JSON)."""

    task: str
    metrics: tuple[str, ...]
    baseline: dict[str, float]
    thresholds: Thresholds = Thresholds()
    online_baseline: dict[str, float] = field(default_factory=dict)
    canary: dict[str, Any] = field(default_factory=dict)
    reference: str = "unquantized ONNX, ONNX Runtime CPU"
    created_by: str = ""
    #: healthy run-to-run spread of the canary outputs, in ``canary.drift`` units (None: schema 1, uncalibrated)
    drift_scale: float | None = None
    schema_version: int = HEALTH_SCHEMA_VERSION
    arrays: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.schema_version not in READS_SCHEMAS:
            raise BundleError(f"health schema {self.schema_version} is not supported (reads {READS_SCHEMAS})")
        if self.drift_scale is not None:
            if self.schema_version < 2:
                raise BundleError("health schema 1 has no drift_scale")
            if not (math.isfinite(self.drift_scale) and self.drift_scale > 0.0):
                raise BundleError(f"drift_scale must be a positive number, got {self.drift_scale!r}")
        if self.task not in TASKS:
            raise BundleError(f"health data for unknown task {self.task!r}")
        object.__setattr__(self, "metrics", tuple(self.metrics))
        missing = [m for m in self.metrics if m not in self.baseline]
        if missing:
            raise BundleError(f"health data has no baseline for metrics {missing}")

    # -- limits and verdicts ----------------------------------------------------------------------
    def limits(self) -> dict[str, float]:
        drop = self.thresholds.max_quality_drop
        return {m: float(self.baseline[m]) * (1.0 - drop) for m in self.metrics}

    def judge(self, scores: dict[str, float], *, finite: bool, drift: float | None = None) -> Verdict:
        """Compare canary scores (and drift from the load-time outputs, when known) to the limits.

        A missing or NaN score is a breach; so is non-finite output.
        """
        limits = self.limits()
        scores = dict(scores)
        breaches = [] if finite else ["NaN/Inf in canary outputs"]
        for m, lim in limits.items():
            s = scores.get(m, math.nan)
            if not s >= lim:  # written this way round so that NaN fails
                breaches.append(f"{m} {s:.4f} < limit {lim:.4f} (baseline {self.baseline[m]:.4f})")
        if drift is not None:
            scores["drift"] = drift
            limits["drift"] = lim = self.drift_limit()
            if self.drift_scale is not None:
                scores["drift_z"] = drift / self.drift_scale
                limits["drift_z"] = self.thresholds.max_drift_z
            if not drift <= lim:
                z = f" = {drift / self.drift_scale:.1f} x the healthy spread" if self.drift_scale else ""
                breaches.append(f"drift {drift:.3g}{z} > limit {lim:.3g} (outputs changed since load)")
        return Verdict(ok=not breaches, scores=scores, limits=limits, breaches=tuple(breaches))

    def drift_limit(self) -> float:
        """The largest healthy ``canary.drift``: ``max_drift_z`` spreads, or ``max_drift`` for schema 1."""
        if self.drift_scale is None:
            return self.thresholds.max_drift
        return self.thresholds.max_drift_z * self.drift_scale

    def with_thresholds(self, thresholds: Thresholds) -> HealthSpec:
        """The same spec with the app's thresholds instead of the bundle's."""
        return replace(self, thresholds=thresholds)

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("arrays")
        d["metrics"] = list(self.metrics)
        return d

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> HealthSpec:
        try:
            d = dict(d)
            d["thresholds"] = Thresholds(**d.get("thresholds", {}))
            return cls(**d, arrays=dict(arrays or {}))
        except (TypeError, ConfigError) as exc:
            raise BundleError(f"malformed health data: {exc}") from exc

    @classmethod
    def from_bytes(cls, json_raw: bytes, npz_raw: bytes | None) -> HealthSpec:
        """Parse health.json and canaries.npz from bytes the store has already verified."""
        try:
            d = json.loads(json_raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"health.json is not valid JSON: {exc}") from exc
        arrays: dict[str, np.ndarray] = {}
        if npz_raw is not None:
            try:
                # allow_pickle=False: canary data is plain arrays; never unpickle bundle content.
                with np.load(io.BytesIO(npz_raw), allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            except (ValueError, OSError) as exc:
                raise BundleError(f"canaries.npz is unreadable: {exc}") from exc
        return cls.from_dict(d, arrays)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Compressed npz bytes of ``arrays`` (used by the host producer)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()
