"""The graph contract a bundle's model follows: input/output dtypes, the LM feeds (KV cache included), pooling.

One definition for every side that feeds a bundle graph: the host's health producer, the device's canaries
and the runtime's decode loop. An FP16-compute graph takes its KV cache in float16; everything else edgeq
feeds is int64 or float32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from edgeq.sdk.bundle.model_info import ModelInfo

Feeds = dict[str, np.ndarray]

ORT_TYPES: Mapping[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(bool)": np.dtype(np.bool_),
}


def session_input_dtypes(session: Any) -> dict[str, np.dtype]:
    """name → numpy dtype of an ``onnxruntime.InferenceSession``'s inputs (float32 for types not listed)."""
    return {i.name: ORT_TYPES.get(i.type, np.dtype(np.float32)) for i in session.get_inputs()}


def past_dtype(input_dtypes: Mapping[str, np.dtype]) -> np.dtype:
    """The KV-cache dtype of a causal LM (float32 when it has no ``past_key_values.*`` input)."""
    for name, dt in input_dtypes.items():
        if name.startswith("past_key_values."):
            return np.dtype(dt)
    return np.dtype(np.float32)


# -- causal LM feeds --------------------------------------------------------------------------------
def empty_past(inputs: Mapping[str, np.dtype], batch: int, info: ModelInfo) -> Feeds:
    """Zero-length KV-cache feeds, in the graph's dtype, for every ``past_key_values.*`` input."""
    shape = (batch, info.num_key_value_heads, 0, info.head_dim)
    return {n: np.zeros(shape, dt) for n, dt in inputs.items() if n.startswith("past_key_values.")}


def lm_prefill_feeds(ids: np.ndarray, inputs: Mapping[str, np.dtype], info: ModelInfo) -> Feeds:
    b, n = ids.shape
    feeds: Feeds = {"input_ids": ids.astype(np.int64)}
    if "attention_mask" in inputs:
        feeds["attention_mask"] = np.ones((b, n), np.int64)
    if "position_ids" in inputs:
        feeds["position_ids"] = np.tile(np.arange(n, dtype=np.int64), (b, 1))
    feeds.update(empty_past(inputs, b, info))
    return feeds


# -- sentence-embedding pooling ----------------------------------------------------------------------
def _mean(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(hidden.dtype)
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)


def _cls(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return hidden[:, 0]


POOLERS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {"mean": _mean, "cls": _cls}


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str, *, normalize: bool) -> np.ndarray:
    """(batch, seq, dim) hidden states → (batch, dim) sentence embeddings; 2-D input is taken as already pooled."""
    out = hidden if hidden.ndim == 2 else POOLERS[pooling](hidden, mask)
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out.astype(np.float32, copy=False)
