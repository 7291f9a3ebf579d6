"""Sampling the next token from logits (greedy, temperature, top-k, top-p) and streaming one row's text.

Split from ``decode`` (which re-exports both); neither needs the model, only its logits and tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np


class SamplingSettings(Protocol):
    """What ``sample`` reads of a GenerationConfig."""

    temperature: float
    top_p: float
    top_k: int


# -- sampling -----------------------------------------------------------------------------------------
def sample(logits: np.ndarray, cfg: SamplingSettings, rng: np.random.Generator) -> np.ndarray:
    """Next token per row of ``logits`` (batch, vocab)."""
    if cfg.temperature == 0.0:
        return logits.argmax(axis=-1)
    x = logits.astype(np.float64) / cfg.temperature
    if cfg.top_k and cfg.top_k < x.shape[-1]:
        kth = np.partition(x, -cfg.top_k, axis=-1)[:, -cfg.top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    x = x - x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=-1, keepdims=True)
    if cfg.top_p < 1.0:
        order = np.argsort(-p, axis=-1)
        sp = np.take_along_axis(p, order, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = (np.cumsum(sp, axis=-1) - sp) >= cfg.top_p
        sp[drop] = 0.0
        p = np.zeros_like(p)
        np.put_along_axis(p, order, sp, axis=-1)
        p /= p.sum(axis=-1, keepdims=True)
    c = np.cumsum(p, axis=-1)
    u = rng.random((p.shape[0], 1)) * c[:, -1:]
    return np.minimum((c < u).sum(axis=-1), p.shape[-1] - 1)


# -- incremental text ---------------------------------------------------------------------------------
class TextStream:
    """Turns one row's token ids into text deltas, holding back what could be the start of a stop string."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: tuple[str, ...]) -> None:
        self._decode = decode
        self.stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self._prefix = self._read = 0
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def add(self, token: int) -> None:
        """Append a token; sets ``stopped`` and truncates ``text`` when a stop string appears."""
        self.ids.append(token)
        prefix = self._decode(self.ids[self._prefix : self._read])
        full = self._decode(self.ids[self._prefix :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):  # a complete character arrived
            start = max(len(self.text) - self._hold, 0)
            self.text += full[len(prefix) :]
            self._prefix, self._read = self._read, len(self.ids)
            for s in self.stop:
                at = self.text.find(s, max(start - len(s), 0))
                if at >= 0:
                    self.text, self.stopped = self.text[:at], True

    def delta(self, final: bool) -> str:
        """Text not yet handed out; before the end, keeps back a possible stop-string prefix."""
        end = len(self.text) if (final or self.stopped) else max(len(self.text) - self._hold, self._emitted)
        out = self.text[self._emitted : end]
        self._emitted = end
        return out
