"""The build step that gives a bundle its CPU graph (``converters.cpu_graph``), checked before it ships.

The CPU graph is the bundle graph as ONNX Runtime's CPU kernels want it, so it is held to the bundle's own
health rules: its canary scores against the FP reference must pass the bundle's spec (``HealthSpec.judge``:
at most ``max_quality_drop`` below the baseline the bundle graph set), and its greedy (argmax) tokens on the
canary positions are compared with the bundle graph's; the agreement is recorded in the manifest. A CPU
graph that fails is a build error: shipping it would make every CPU device serve a worse model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import ValidationError

#: where the CPU graph sits in the bundle: beside the bundle graph, whose external data it shares
CPU_ONNX_NAME = "model.cpu.onnx"


@dataclass
class CpuGraphCheck:
    """The CPU graph's canary verdict and how closely it reproduces the bundle graph."""

    ok: bool
    scores: dict[str, float]
    baseline: dict[str, float]
    breaches: tuple[str, ...]
    #: fraction of canary positions where the CPU graph's argmax equals the bundle graph's
    greedy_agreement: float | None
    positions: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["breaches"] = list(self.breaches)
        return d


def add_cpu_graph(q_onnx: Path, *, num_heads: int, hidden_size: int, max_positions: int | None,
                  health_dir: Path | None, threads: int = 0) -> tuple[list[Path], dict[str, Any]]:
    """Move the bundle graph's tensors into ``model.onnx_data``, write its CPU graph beside it and check it.

    Returns the CPU graph's files (the graph and, when it has tensors of its own, its data file) and what the
    manifest records (rewrite statistics, the check). Raises ValidationError when its canaries fail.
    """
    from edgeq.converters.cpu_graph import data_path, derive_cpu_graph, to_external_data

    t0 = time.perf_counter()
    to_external_data(q_onnx)
    out = q_onnx.with_name(CPU_ONNX_NAME)
    stats = derive_cpu_graph(q_onnx, out, num_heads=num_heads, hidden_size=hidden_size, max_positions=max_positions)
    info: dict[str, Any] = {"path": CPU_ONNX_NAME, "rewrite": stats.to_dict(),
                            "derive_seconds": round(time.perf_counter() - t0, 3)}
    files = [out] + ([data_path(out)] if data_path(out).is_file() else [])
    if health_dir is not None:
        check = check_cpu_graph(q_onnx, out, health_dir, threads=threads)
        info["check"] = check.to_dict()
        if not check.ok:
            raise ValidationError(f"the CPU graph fails the bundle's canaries: {'; '.join(check.breaches)}",
                                  hint="rebuild with --no-cpu-graph to ship the bundle without it, and report this")
    return files, info


def check_cpu_graph(bundle_onnx: Path, cpu_onnx: Path, health_dir: Path, *, threads: int = 0) -> CpuGraphCheck:
    """Score ``cpu_onnx`` with the canaries of ``health_dir`` (the build's ``health/`` files) and compare its
    argmax with ``bundle_onnx``'s on every canary position."""
    from edgeq.converters.health import _runner, _session
    from edgeq.sdk.bundle.graph_io import session_input_dtypes
    from edgeq.sdk.bundle.health import CANARIES_NPZ, HEALTH_JSON, HealthSpec
    from edgeq.sdk.bundle.model_info import MODEL_INFO_NAME, TEXT_GENERATION, ModelInfo
    from edgeq.sdk.health.canary import CANARY_KINDS, run_canary

    t0 = time.perf_counter()
    spec = HealthSpec.from_bytes((health_dir / HEALTH_JSON).read_bytes(), (health_dir / CANARIES_NPZ).read_bytes())
    info = ModelInfo.from_bytes((bundle_onnx.parent / MODEL_INFO_NAME).read_bytes())
    cpu = _session(cpu_onnx, threads)
    res = run_canary(_runner(cpu), spec.arrays, session_input_dtypes(cpu), info)
    verdict = spec.judge(res.scores, finite=res.finite, drift=None)
    agreement, positions = None, 0
    if info.task == TEXT_GENERATION:
        bundle = _session(bundle_onnx, threads)
        kind = CANARY_KINDS[info.task]
        a = _argmax(bundle, kind.feeds(spec.arrays, session_input_dtypes(bundle), info))
        b = _argmax(cpu, kind.feeds(spec.arrays, session_input_dtypes(cpu), info))
        positions = int(a.size)
        agreement = float((a == b).mean()) if positions else None
    return CpuGraphCheck(ok=verdict.ok, scores=dict(res.scores), baseline=dict(spec.baseline),
                         breaches=tuple(verdict.breaches), greedy_agreement=agreement, positions=positions,
                         seconds=round(time.perf_counter() - t0, 3))


def _argmax(session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Argmax token at every position of the canary rows, run one row at a time (as the device runs them)."""
    names = [o.name for o in session.get_outputs()]
    li = names.index("logits")
    rows = len(next(iter(feeds.values())))
    return np.concatenate([session.run([names[li]], {k: v[i:i + 1] for k, v in feeds.items()})[0].argmax(-1)
                           for i in range(rows)], axis=0)
