"""Fault injectors for the serving handle of a runtime (tests only; they patch the live backend), and a
fake clock to step the monitor with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def wrap_outputs(rt: Any, transform: Callable[[list[np.ndarray]], list[np.ndarray]]) -> int:
    """Make the version now serving return transformed outputs (for every caller, canaries included)."""
    h = rt._current
    inner = h.backend._infer

    def faulty(feeds: Any) -> Sequence[np.ndarray]:
        return transform(list(inner(feeds)))

    h.backend._infer = faulty
    return h.version


def nan_in_logits(outs: list[np.ndarray]) -> list[np.ndarray]:
    outs[0] = outs[0].copy()
    outs[0].flat[::97] = np.nan
    return outs


def noise_on_logits(sigma: float, seed: int = 0) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    rng = np.random.default_rng(seed)

    def add(outs: list[np.ndarray]) -> list[np.ndarray]:
        outs[0] = outs[0] + rng.standard_normal(outs[0].shape).astype(np.float32) * sigma
        return outs

    return add


def swap_weights(rt: Any, onnx: Path) -> int:
    """Replace the serving session's weights in place (the scaled-scale drift)."""
    import onnxruntime as ort

    h = rt._current
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    h.backend._run = ort.InferenceSession(str(onnx), so, providers=["CPUExecutionProvider"]).run
    return h.version


class FakeClock:
    """A monotonic clock for ``MonitorConfig(clock=...)`` that moves only when a test moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
