"""Sentence-embedding pooling (mean over unmasked tokens, or CLS) and L2 normalisation, in numpy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


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
