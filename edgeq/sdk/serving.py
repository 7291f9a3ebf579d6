"""One ``Runtime.generate`` call: prompt encoding, the step loop on the serving version, text streaming,
live statistics and metrics. The handle is held from the first step to the last, so a fallback that
happens meanwhile lets this generation finish on the version it started on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeq.errors import ConfigError
from edgeq.sdk.canary import entropy
from edgeq.sdk.generate import GenerationConfig, GenerationResult, TextStream, generate_ids
from edgeq.sdk.model_info import TEXT_GENERATION
from edgeq.sdk.monitor import Monitor

if TYPE_CHECKING:
    from edgeq.sdk.runtime import Runtime


class Generation:
    """One generate() call: iterating yields text deltas (row 0); ``results`` is filled at the end."""

    def __init__(self, rt: Runtime, prompts: list[Any], cfg: GenerationConfig) -> None:
        self.rt, self.prompts, self.cfg = rt, prompts, cfg
        self.results: list[GenerationResult] = []

    @property
    def result(self) -> GenerationResult | None:
        return self.results[0] if self.results else None

    def __iter__(self) -> Iterator[str]:
        rt, cfg = self.rt, self.cfg
        h = rt._acquire()
        t_start = time.perf_counter()
        try:
            if h.info.task != TEXT_GENERATION or h.stepper is None or h.tokenizer is None:
                raise ConfigError(f"{rt.model} is a {h.info.task} model; generate() needs a text-generation bundle")
            tok = h.tokenizer
            ids = [tok.encode(p) if isinstance(p, str) else tok.encode_chat(p) for p in self.prompts]
            rows = len(ids)
            streams = [TextStream(tok.decode, cfg.stop) for _ in range(rows)]
            done = np.zeros(rows, bool)
            reasons = ["length"] * rows
            prefill = decode = 0.0
            mon = rt.monitor
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
            rt.metrics.errors["generate"].inc()
            raise
        finally:
            rt._release(h)
        total = time.perf_counter() - t_start
        n_tokens = 0
        for r in range(rows):
            s = streams[r]
            n_tokens += len(s.ids)
            self.results.append(GenerationResult(
                text=s.text, token_ids=list(s.ids), finish_reason=reasons[r], prompt_tokens=len(ids[r]),
                prefill_s=prefill, decode_s=decode, version=h.version))
        m = rt.metrics
        m.latency["generate"].add(total)
        m.tokens.inc(n_tokens)
        if decode > 0:
            m.tokens_per_s.set(self.results[0].decode_tokens_per_s)
        rt.monitor.on_request(total)


def _lm_stats(mon: Monitor, logits: np.ndarray) -> None:
    """Live statistics of one decode step's logits (on one step in ``stats_every``)."""
    if not mon.want_stats():
        return
    finite = bool(np.isfinite(logits.sum(dtype=np.float64)))
    mon.on_finite(finite)
    if finite:
        mon.on_online(entropy(logits))
