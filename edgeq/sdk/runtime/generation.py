"""One ``Runtime.generate`` call: prompt encoding, the step loop on the serving version, text streaming,
live statistics and metrics. The handle is held from the first step to the last, so a fallback that
happens meanwhile lets this generation finish on the version it started on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from edgeq.errors import ConfigError
from edgeq.sdk.health.canary import entropy
from edgeq.sdk.runtime.decode import GenerationConfig, GenerationResult, TextStream, generate_ids
from edgeq.sdk.bundle.model_info import TEXT_GENERATION
from edgeq.sdk.health.metrics import RuntimeMetrics
from edgeq.sdk.health.monitor import Monitor
from edgeq.sdk.runtime.loader import Handle


class Generation:
    """One generate() call: iterating yields text deltas (row 0); ``results`` is filled at the end."""

    def __init__(self, model: str, prompts: list[Any], cfg: GenerationConfig, *,
                 acquire: Callable[[], Handle], release: Callable[[Handle], None],
                 metrics: RuntimeMetrics, monitor: Monitor) -> None:
        self.model, self.prompts, self.cfg = model, prompts, cfg
        self._acquire, self._release, self._metrics, self._monitor = acquire, release, metrics, monitor
        self._started = False
        self.results: list[GenerationResult] = []

    @property
    def result(self) -> GenerationResult | None:
        return self.results[0] if self.results else None

    def __iter__(self) -> Iterator[str]:
        if self._started:  # a second pass would run the model again and append a second set of results
            raise ConfigError("this generation has already run; call generate() again for a new one")
        self._started = True
        return self._run()

    def _run(self) -> Iterator[str]:
        cfg = self.cfg
        h = self._acquire()
        t_start = time.perf_counter()
        try:
            if h.info.task != TEXT_GENERATION or h.stepper is None or h.tokenizer is None:
                raise ConfigError(f"{self.model} is a {h.info.task} model; generate() needs a text-generation bundle")
            tok = h.tokenizer
            ids = [tok.encode(p) if isinstance(p, str) else tok.encode_chat(p) for p in self.prompts]
            rows = len(ids)
            streams = [TextStream(tok.decode, cfg.stop) for _ in range(rows)]
            done = np.zeros(rows, bool)
            reasons = ["length"] * rows
            prefill = decode = 0.0
            mon = self._monitor
            first = True
            for tokens, dt in generate_ids(h.stepper, ids, cfg, pad_id=h.pad_id, done=done,
                                           on_logits=lambda lg: _lm_stats(mon, lg)):
                if first:
                    prefill, first = dt, False
                else:
                    decode += dt
                for r in range(rows):
                    if done[r]:
                        continue
                    t = int(tokens[r])
                    if t in h.eos_ids:
                        done[r], reasons[r] = True, "eos"
                        continue
                    streams[r].add(t)
                    if streams[r].stopped:
                        done[r], reasons[r] = True, "stop"
                if rows == 1 and (piece := streams[0].delta(final=bool(done[0]))):
                    yield piece
            if rows == 1 and (piece := streams[0].delta(final=True)):
                yield piece
        except GeneratorExit:
            raise
        except Exception:
            self._metrics.errors["generate"].inc()
            raise
        finally:
            self._release(h)
        total = time.perf_counter() - t_start
        n_tokens = 0
        for r in range(rows):
            s = streams[r]
            n_tokens += len(s.ids)
            self.results.append(GenerationResult(
                text=s.text, token_ids=list(s.ids), finish_reason=reasons[r], prompt_tokens=len(ids[r]),
                prefill_s=prefill, decode_s=decode, version=h.version))
        m = self._metrics
        m.latency["generate"].add(total)
        m.tokens.inc(n_tokens)
        if decode > 0:
            m.tokens_per_s.set(self.results[0].decode_tokens_per_s)
        self._monitor.on_request(total)


def _lm_stats(mon: Monitor, get_logits: Callable[[], np.ndarray]) -> None:
    """Live statistics of one decode step's logits (on one step in ``stats_every``; only then fetched)."""
    if not mon.want_stats():
        return
    logits = get_logits()
    finite = bool(np.isfinite(logits.sum(dtype=np.float64)))
    mon.on_finite(finite)
    if finite:
        mon.on_online(entropy(logits))
