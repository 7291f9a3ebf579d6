"""What the runtime needs to know of a model beyond its ONNX graph: task, KV-cache shape, EOS ids, pooling.

Read from ``edgeq_model.json`` (written by the exporter next to every ONNX and carried in the bundle).
Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edgeq.errors import BundleError

TEXT_GENERATION = "text-generation"
FEATURE_EXTRACTION = "feature-extraction"
GENERIC = "generic"
MODEL_INFO_NAME = "edgeq_model.json"


@dataclass(frozen=True)
class TaskSpec:
    """One model task, the one table every list of tasks derives from.

    Args:
        name: the task name (Hugging Face's spelling).
        convertible: edgeq exports, quantizes and plans engines for it; a target profile states its
            precisions and shapes per convertible task. ``generic`` only runs (graphs edgeq did not make).
        kv_cache: the graph carries a KV cache from step to step (a profile's shapes need a ``past`` range).
    """

    name: str
    convertible: bool
    kv_cache: bool = False


TASK_SPECS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec(TEXT_GENERATION, convertible=True, kv_cache=True),
    TaskSpec(FEATURE_EXTRACTION, convertible=True),
    TaskSpec(GENERIC, convertible=False),
)}
#: Every task a bundle may declare.
TASKS: tuple[str, ...] = tuple(TASK_SPECS)
#: The tasks edgeq converts models for (sources, export, quantization, target profiles).
CONVERTIBLE_TASKS: tuple[str, ...] = tuple(n for n, t in TASK_SPECS.items() if t.convertible)


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class ModelInfo:
    """Task plus the few shape facts the runtime cannot read from the graph reliably."""

    task: str
    name: str = ""
    num_layers: int = 0
    num_key_value_heads: int = 0
    head_dim: int = 0
    vocab_size: int = 0
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    pooling: str = "mean"
    normalize: bool = True
    max_position_embeddings: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise BundleError(f"unknown model task {self.task!r}; expected one of {list(TASKS)}")
        if self.pooling not in ("mean", "cls"):
            raise BundleError(f"unknown pooling {self.pooling!r}; expected 'mean' or 'cls'")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        return cls(
            task=d.get("task", GENERIC),
            name=d.get("name", ""),
            num_layers=int(d.get("num_layers") or 0),
            num_key_value_heads=int(d.get("num_key_value_heads") or 0),
            head_dim=int(d.get("head_dim") or 0),
            vocab_size=int(d.get("vocab_size") or 0),
            eos_token_ids=_ids(d.get("eos_token_id")),
            bos_token_id=d.get("bos_token_id"),
            pooling=d.get("pooling") or "mean",
            normalize=bool(d.get("normalize", True)),
            max_position_embeddings=int(d.get("max_position_embeddings") or 0),
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> ModelInfo:
        try:
            return cls.from_dict(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise BundleError(f"malformed {MODEL_INFO_NAME}: {exc}") from exc
