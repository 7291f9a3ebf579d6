"""ONNX Runtime type strings → numpy dtypes, so feeds (the empty KV cache above all) match the graph's types.

An FP16-compute graph takes its KV cache in float16; everything else edgeq feeds is int64 or float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

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
