"""Test tools for a live runtime: fault injectors for its serving handle (they patch the live backend), a
decode-step counter that can hold decoding until a cancellation arrives, request load from several threads,
bounded waits, and a fake clock to step the monitor with. numpy only at import: the GPU tests use it too."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: the longest any helper here waits for something that should happen at once: a bug fails, never hangs
WAIT_S = 30.0


def wait_for(cond: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """Poll ``cond`` until it holds or ``timeout`` seconds passed; returns its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return bool(cond())


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


def lm_feeds(rt: Any, text: str = "Guido remains Python's principal author") -> dict[str, np.ndarray]:
    """Prefill feeds of one prompt for the serving version's LM graph (for ``Runtime.infer`` traffic)."""
    from edgeq.sdk.bundle.graph_io import lm_prefill_feeds

    h = rt._current
    return lm_prefill_feeds(np.array([h.tokenizer.encode(text)]), h.backend.input_dtypes, h.info)


class Steps:
    """Counts the LM decode steps (the prefill is step 1) of the version serving ``rt`` when entered.

    It wraps the stepper, so it sees every step on whichever path the decode loop takes: the KV cache bound on
    the backend's device (ONNX Runtime CPU too), which never calls ``Backend._infer``, or host arrays through
    ``infer``. ``n`` is the count so far; ``before(n)`` runs in the decoding thread before step n.

    ``hold_after=k`` makes every step after the k-th wait until some ``Request.cancel()`` has been called
    (at most ``timeout`` s once: then ``held_out`` is set and decoding goes on unheld): however fast the machine, a
    generation cannot end on its own before the test's cancellation arrives. ``at_cancel`` is ``n`` when the
    first cancellation came (None before); a row cancelled between steps ends at the next one, so a
    generation that honours cancellation stops at ``n <= at_cancel + 1``. A context manager: leaving it
    restores the stepper and ``Request.cancel`` and releases any held step.
    """

    def __init__(self, rt: Any, *, hold_after: int | None = None, before: Callable[[int], None] | None = None,
                 timeout: float = WAIT_S) -> None:
        self.rt, self.hold_after, self.before, self.timeout = rt, hold_after, before, timeout
        self.n = 0
        self.at_cancel: int | None = None
        self.held_out = False  # True when a held step waited ``timeout`` s for a cancellation in vain
        self.cancelled = threading.Event()  # set by the first Request.cancel() (or on exit)
        self._lock = threading.Lock()

    def __enter__(self) -> Steps:
        from edgeq.sdk.runtime.generation import Request

        self._stepper = stepper = self.rt._current.stepper
        inner_decode, self._cancel = stepper.decode, Request.cancel

        def decode(batch: int, max_len: int) -> Any:
            dec = inner_decode(batch, max_len)
            run = dec.run

            def counted(ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> Any:
                with self._lock:
                    self.n += 1
                    n = self.n
                if self.before is not None:
                    self.before(n)
                if self.hold_after is not None and n > self.hold_after and not self.cancelled.wait(self.timeout):
                    self.held_out = True  # no cancellation came: stop holding, the test's checks fail
                    self.cancelled.set()
                return run(ids, mask, pos)

            dec.run = counted
            return dec

        def cancel(req: Any) -> None:
            with self._lock:
                if self.at_cancel is None:
                    self.at_cancel = self.n
            self._cancel(req)
            self.cancelled.set()

        stepper.decode = decode
        Request.cancel = cancel  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        from edgeq.sdk.runtime.generation import Request

        Request.cancel = self._cancel  # type: ignore[method-assign]
        del self._stepper.decode  # the instance attribute: the class's method again
        self.cancelled.set()  # a step still held (a failing test) goes on


class Load:
    """Request threads against one runtime that record every request's outcome: each thread sends
    ``generate(max_new_tokens=tokens)`` as every ``generate_every``-th request and ``infer(feeds)`` otherwise."""

    def __init__(self, rt: Any, feeds: dict[str, np.ndarray], *, threads: int = 4, generate_every: int = 5,
                 tokens: int = 4) -> None:
        self.rt, self.feeds, self.generate_every, self.tokens = rt, feeds, generate_every, tokens
        self.issued = self.completed = 0
        self.errors: list[BaseException] = []
        self.versions: list[int] = []
        self._done = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            with self._done:
                self.issued += 1
            try:
                if (n + i) % self.generate_every == 0:
                    v = self.rt.generate("Python was created", max_new_tokens=self.tokens).version
                else:
                    self.rt.infer(self.feeds)
                    v = -1
                with self._done:
                    self.completed += 1
                    if v > 0:
                        self.versions.append(v)
                    self._done.notify_all()
            except BaseException as exc:  # noqa: BLE001 - every failure counts
                with self._done:
                    self.errors.append(exc)
                    self._done.notify_all()
            n += 1

    def wait_completed(self, n: int, timeout: float = 120.0) -> None:
        """Block until ``n`` requests have completed (or one failed)."""
        with self._done:
            assert self._done.wait_for(lambda: self.completed >= n or self.errors, timeout), (self.completed, n)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        if exc_type is None:  # never hide the failure already on its way out
            assert not any(t.is_alive() for t in self._threads), "a request thread did not stop within 60 s"
