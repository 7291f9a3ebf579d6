"""The graph contract a bundle's model follows: input/output dtypes, the LM feeds (KV cache included), pooling.

One definition for every side that feeds a bundle graph: the host's export check, evaluation, benchmarks
and health producer, the device's canaries and the runtime's decode loop. An FP16-compute graph takes its
KV cache in float16; everything else edgeq feeds is int64 or float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from edgeq.errors import BundleError, ConfigError
from edgeq.sdk.bundle.model_info import ModelInfo

Feeds = dict[str, np.ndarray]
#: a causal LM's KV cache: input ``past_key_values.N.key`` is fed the previous step's output ``present.N.key``
PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."

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
        if name.startswith(PAST_PREFIX):
            return np.dtype(dt)
    return np.dtype(np.float32)


# -- causal LM feeds --------------------------------------------------------------------------------

def past_names(inputs: Iterable[str]) -> list[str]:
    """The KV-cache inputs in graph order: the order in which a step's ``past`` arrays are given."""
    return [n for n in inputs if n.startswith(PAST_PREFIX)]


def present_indices(past: Sequence[str], outputs: Sequence[str]) -> list[int]:
    """For each KV-cache input, the index of the output (``present.N.*``) fed back to it on the next step."""
    outputs = list(outputs)
    try:
        return [outputs.index(PRESENT_PREFIX + n[len(PAST_PREFIX):]) for n in past]
    except ValueError as exc:
        raise BundleError(f"the graph has a KV-cache input without its present output: {exc}") from exc


def empty_past(inputs: Mapping[str, np.dtype], batch: int, info: ModelInfo) -> Feeds:
    """Zero-length KV-cache feeds, in the graph's dtype, for every ``past_key_values.*`` input."""
    shape = (batch, info.num_key_value_heads, 0, info.head_dim)
    return {n: np.zeros(shape, inputs[n]) for n in past_names(inputs)}


def lm_feeds(ids: np.ndarray, inputs: Mapping[str, np.dtype], info: ModelInfo,
             past: Sequence[np.ndarray] | None = None, *, mask: np.ndarray | None = None,
             positions: np.ndarray | None = None) -> Feeds:
    """The feeds of one causal-LM step: ``ids`` (batch, new) after the cache ``past``.

    Args:
        ids: the new tokens, (batch, new).
        inputs: the graph's input names → dtypes (``session_input_dtypes``, ``Backend.input_dtypes``);
            ``attention_mask`` / ``position_ids`` are fed only when the graph has them.
        info: the model's KV-cache shape, for the empty cache of a first step.
        past: one array per ``past_names(inputs)``, in that order (the previous step's outputs at
            ``present_indices``); None for the first step (an empty cache).
        mask / positions: for padded batches; by default every row is unpadded: a mask of ones over
            past + new and positions past_len … past_len + new - 1.
    """
    b, n = ids.shape
    if past is None:
        kv, past_len = empty_past(inputs, b, info), 0
    else:
        names = past_names(inputs)
        if len(past) != len(names):
            raise ConfigError(f"{len(past)} KV-cache arrays for the graph's {len(names)} past inputs")
        kv, past_len = dict(zip(names, past)), (past[0].shape[2] if past else 0)
    feeds: Feeds = {"input_ids": ids.astype(np.int64, copy=False)}
    if "attention_mask" in inputs:
        feeds["attention_mask"] = np.ones((b, past_len + n), np.int64) if mask is None else mask
    if "position_ids" in inputs:
        feeds["position_ids"] = (np.tile(np.arange(past_len, past_len + n, dtype=np.int64), (b, 1))
                                 if positions is None else positions)
    feeds.update(kv)
    return feeds


def lm_prefill_feeds(ids: np.ndarray, inputs: Mapping[str, np.dtype], info: ModelInfo) -> Feeds:
    """The first step of unpadded prompts ``ids`` (batch, seq): ``lm_feeds`` with an empty cache."""
    return lm_feeds(ids, inputs, info)


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
