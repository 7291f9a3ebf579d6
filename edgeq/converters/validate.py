"""Check an exported ONNX against the PyTorch model it came from, on fixed inputs.

Causal LMs are checked at several sequence lengths with and without past (the past comes from the
PyTorch model itself, so each case checks one step in isolation) and at batch 2; encoders at several
lengths with padding. Each output's max and mean absolute difference is recorded; every case runs
before the verdict (no early exit), and a NaN anywhere fails the check.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.converters.evaluate import session as cpu_session
from edgeq.converters.sources import TEXT_GENERATION, LoadedModel
from edgeq.sdk.bundle import graph_io
from edgeq.sdk.bundle.graph_io import PAST_PREFIX, past_names, session_input_dtypes
from edgeq.sdk.bundle.model_info import ModelInfo

#: Tolerances each task states for an FP32 export: |onnx - torch| <= atol + rtol * max|torch| per output.
TOLERANCES: dict[str, dict[str, float]] = {
    TEXT_GENERATION: {"atol": 1e-3, "rtol": 1e-4},
    "feature-extraction": {"atol": 1e-4, "rtol": 1e-4},
}

#: (batch, new tokens, past length) per LM case; (batch, sequence length) per encoder case.
LM_CASES: tuple[tuple[int, int, int], ...] = ((1, 8, 0), (1, 1, 8), (1, 16, 0), (1, 3, 16), (2, 5, 7))
ENCODER_CASES: tuple[tuple[int, int], ...] = ((1, 8), (2, 16), (3, 33))


@dataclass
class OutputDiff:
    case: str
    output: str
    max_abs: float
    mean_abs: float
    ref_max: float
    limit: float
    passed: bool


@dataclass
class ValidationReport:
    task: str
    atol: float
    rtol: float
    diffs: list[OutputDiff] = field(default_factory=list)
    skipped_reason: str | None = None
    #: MoE models: the experts PyTorch routed the validated tokens to (``converters.moe.RoutingLog.summary``);
    #: fewer than two distinct top-k sets would not show that the graph follows the router
    routing: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        routed = self.routing is None or self.routing["distinct_topk_sets"] >= 2
        return self.skipped_reason is None and bool(self.diffs) and all(d.passed for d in self.diffs) and routed

    @classmethod
    def skipped(cls, task: str) -> ValidationReport:
        tol = TOLERANCES[task]
        return cls(task=task, atol=tol["atol"], rtol=tol["rtol"], skipped_reason="validation disabled by caller")

    def worst(self) -> OutputDiff | None:
        return max(self.diffs, key=lambda d: d.max_abs / d.limit if d.limit else math.inf, default=None)

    def summary(self) -> str:
        if self.skipped_reason:
            return f"skipped ({self.skipped_reason})"
        failed = [d for d in self.diffs if not d.passed]
        w = self.worst()
        head = f"{len(self.diffs) - len(failed)}/{len(self.diffs)} outputs within tolerance"
        if self.routing is not None:
            head += f"; {self.routing['distinct_topk_sets']} distinct expert top-k sets routed"
        if w is not None:
            head += f"; worst {w.output} in case {w.case}: max|diff| {w.max_abs:.3g} (limit {w.limit:.3g})"
        return head

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def compare(report: ValidationReport, case: str, name: str, ref: np.ndarray, got: np.ndarray) -> None:
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        report.diffs.append(OutputDiff(case, name, math.inf, math.inf, 0.0, 0.0, False))
        return
    diff = np.abs(ref - got)
    ref_max = float(np.max(np.abs(ref))) if ref.size else 0.0
    limit = report.atol + report.rtol * ref_max
    finite = bool(np.isfinite(got).all() and np.isfinite(ref).all())
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    report.diffs.append(OutputDiff(case, name, max_abs, mean_abs, ref_max, limit, finite and max_abs <= limit))


def validate_export(loaded: LoadedModel, onnx_path: Path, *, num_threads: int = 0) -> ValidationReport:
    tol = TOLERANCES[loaded.task]
    report = ValidationReport(task=loaded.task, atol=tol["atol"], rtol=tol["rtol"])
    session = cpu_session(onnx_path, num_threads)
    from edgeq.converters.moe import record_routing

    with record_routing(loaded.model) as routing:
        if loaded.task == TEXT_GENERATION:
            _validate_lm(loaded, session, report)
        else:
            _validate_encoder(loaded, session, report)
    report.routing = None if routing is None else routing.summary()
    return report


def lm_feeds(
    session: Any, input_ids: np.ndarray, past: list[tuple[np.ndarray, np.ndarray]], num_kv: int, head_dim: int
) -> dict[str, np.ndarray]:
    """``graph_io.lm_feeds`` for an ONNX Runtime session, the past given as per-layer (key, value) pairs.

    The feeds of one causal-LM step: ids, a mask over past + new, positions, and the past KV (empty when
    ``past`` is). The host's one-off checks and benchmarks call this; a loop over many steps should take
    ``session_input_dtypes`` once and call ``graph_io.lm_feeds`` itself.
    """
    inputs = session_input_dtypes(session)
    info = ModelInfo(TEXT_GENERATION, num_key_value_heads=num_kv, head_dim=head_dim)
    if not past:
        return graph_io.lm_feeds(input_ids, inputs, info)
    by_name: dict[str, np.ndarray] = {}
    for layer, (k, v) in enumerate(past):
        by_name[f"{PAST_PREFIX}{layer}.key"], by_name[f"{PAST_PREFIX}{layer}.value"] = k, v
    return graph_io.lm_feeds(input_ids, inputs, info, [by_name[n] for n in past_names(inputs)])


def _cache_layers(cache: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    if hasattr(cache, "layers"):  # transformers >= 4.56 DynamicCache
        return [(layer.keys.numpy(), layer.values.numpy()) for layer in cache.layers]
    return [(k.numpy(), v.numpy()) for k, v in cache]


def _validate_lm(loaded: LoadedModel, session: Any, report: ValidationReport) -> None:
    import torch

    cfg = loaded.model.config
    num_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rng = np.random.default_rng(0)
    out_names = [o.name for o in session.get_outputs()]
    for batch, new, past_len in LM_CASES:
        case = f"b{batch}_new{new}_past{past_len}"
        ids = rng.integers(3, cfg.vocab_size, size=(batch, past_len + new), dtype=np.int64)
        with torch.no_grad():
            past_np: list[tuple[np.ndarray, np.ndarray]] = []
            cache = None
            if past_len:
                pre = loaded.model(input_ids=torch.from_numpy(ids[:, :past_len]), use_cache=True)
                cache = pre.past_key_values
                past_np = [(k.copy(), v.copy()) for k, v in _cache_layers(cache)]
            step = loaded.model(
                input_ids=torch.from_numpy(ids[:, past_len:]),
                attention_mask=torch.ones((batch, past_len + new), dtype=torch.long),
                position_ids=torch.arange(past_len, past_len + new).repeat(batch, 1),
                past_key_values=cache,
                use_cache=True,
            )
        ref = {"logits": step.logits.numpy()}
        for i, (k, v) in enumerate(_cache_layers(step.past_key_values)):
            ref[f"present.{i}.key"], ref[f"present.{i}.value"] = k, v
        got = dict(zip(out_names, session.run(None, lm_feeds(session, ids[:, past_len:], past_np, num_kv, head_dim))))
        for name in out_names:
            compare(report, case, name, ref[name], got[name])


def _validate_encoder(loaded: LoadedModel, session: Any, report: ValidationReport) -> None:
    import torch

    cfg = loaded.model.config
    rng = np.random.default_rng(0)
    names = {i.name for i in session.get_inputs()}
    out_names = [o.name for o in session.get_outputs()]
    for batch, seq in ENCODER_CASES:
        case = f"b{batch}_seq{seq}"
        ids = rng.integers(1000, min(cfg.vocab_size, 20000), size=(batch, seq), dtype=np.int64)
        mask = np.ones_like(ids)
        mask[-1, seq // 2 :] = 0  # a padded row in every case
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        with torch.no_grad():
            out = loaded.model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        got = dict(zip(out_names, session.run(None, {k: v for k, v in feeds.items() if k in names})))
        ref = {"last_hidden_state": out.last_hidden_state.numpy()}
        if "pooler_output" in out_names and getattr(out, "pooler_output", None) is not None:
            ref["pooler_output"] = out.pooler_output.numpy()
        for name in out_names:
            if name in ref:
                compare(report, case, name, ref[name], got[name])
