"""One generation: requests (prompts with their own budget, stop strings, deadline, cancellation) run as one
left-padded batch on the serving version, text streamed per row, live statistics and metrics.

The handle is held from the first step to the last, so a fallback that happens meanwhile lets this
generation finish on the version it started on. Every prompt is encoded and checked against the engine's
context (``edgeq.sdk.runtime.context``) before the first step; a prompt longer than the engine's
sequence maximum is prefilled in chunks of it. Rows end on their own (EOS, a stop string,
their budget, their deadline, ``Request.cancel``): an ended row is fed padding until the batch ends and its
result is handed out at once (``on_finish``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from edgeq.errors import ConfigError
from edgeq.sdk.bundle.model_info import TEXT_GENERATION
from edgeq.sdk.health.canary import entropy
from edgeq.sdk.health.metrics import RuntimeMetrics
from edgeq.sdk.health.monitor import Monitor
from edgeq.sdk.runtime.context import TRUNCATE_POLICIES, ContextLimits, fit_prompt
from edgeq.sdk.runtime.decode import GenerationConfig, GenerationResult, TextStream, generate_ids
from edgeq.sdk.runtime.kvreuse import KvSession
from edgeq.sdk.runtime.loader import Handle

log = logging.getLogger(__name__)

#: A prompt: text, chat messages ([{"role": ..., "content": ...}]), or token ids.
Prompt = Union[str, Sequence[Mapping[str, Any]], Sequence[int]]


def is_batch(prompt: Any) -> bool:
    """True for a list of prompts; False for one prompt (a string, a chat, or token ids)."""
    if not isinstance(prompt, (list, tuple)) or not prompt:
        return False
    return not isinstance(prompt[0], (Mapping, int, np.integer))


def make_config(config: GenerationConfig | None, **explicit: Any) -> GenerationConfig:
    """``config``, or one built from the keyword arguments; refuses both when they disagree.

    ``explicit`` holds the keyword arguments the caller passed (None = not passed).
    """
    given = {k: (tuple(v) if k == "stop" else v) for k, v in explicit.items() if v is not None}
    if config is None:
        return GenerationConfig(**given)
    clash = {k: v for k, v in given.items() if getattr(config, k) != v}
    if clash:
        detail = ", ".join(f"{k}={v!r} (config has {getattr(config, k)!r})" for k, v in clash.items())
        raise ConfigError(f"config= and keyword arguments disagree: {detail}",
                          hint="pass the settings either in config= or as keyword arguments, not both")
    return config


@dataclass(eq=False)
class Request:
    """One prompt of a generation and what is particular to it.

    Args:
        prompt: text, chat messages, or token ids.
        max_new_tokens: this row's budget (its batch runs until its longest row ends).
        stop: strings that end this row's text before them.
        deadline: a ``time.monotonic()`` value after which the row ends with finish_reason "deadline" and the
            text generated so far. Checked at every step; a prefill already running is not interrupted.
        truncate: "error" (ContextLengthError when the prompt does not fit) or "left" (keep its end).
        on_text: called in the decoding thread with each new piece of this row's text.
        on_finish: called in the decoding thread with this row's result as soon as the row ends.
        kv: a KV cache kept from an earlier generation (``kvreuse.KvSession``): only the prompt's tokens after
            its common prefix with it are prefilled, and it keeps this one's cache. Used when the request
            runs alone (a one-row batch); a batched row prefills in full and leaves it as it was.
    Call ``cancel()`` from any thread: the row ends with finish_reason "cancelled" at the next step.
    """

    prompt: Any
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()
    deadline: float | None = None
    truncate: str = "error"
    on_text: Callable[[str], None] | None = None
    on_finish: Callable[[GenerationResult], None] | None = None
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    kv: KvSession | None = None

    def __post_init__(self) -> None:
        self.stop = tuple(self.stop)
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if any(not s for s in self.stop):
            raise ConfigError("stop strings must be non-empty")
        if self.truncate not in TRUNCATE_POLICIES:
            raise ConfigError(f"truncate must be one of {list(TRUNCATE_POLICIES)}, got {self.truncate!r}")

    def cancel(self) -> None:
        # A bool store is atomic under the GIL; the decoding thread reads it once per step.
        self.cancelled = True


def make_requests(prompts: Sequence[Any], cfg: GenerationConfig, *, deadline_s: float | None = None,
                  truncate: str = "error") -> list[Request]:
    """One Request per prompt with ``cfg``'s budget and stop strings and a deadline ``deadline_s`` from now."""
    if deadline_s is not None and not deadline_s > 0:
        raise ConfigError(f"deadline_s must be > 0 seconds, got {deadline_s}")
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    return [Request(p, cfg.max_new_tokens, cfg.stop, deadline, truncate) for p in prompts]


def encode_prompt(tok: Any, prompt: Any, vocab: int) -> list[int]:
    """Token ids of one prompt (text, chat messages, or ids checked against the vocabulary)."""
    if isinstance(prompt, str):
        return tok.encode(prompt)
    if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], Mapping):
        return tok.encode_chat(prompt)
    if isinstance(prompt, (list, tuple)) and all(isinstance(t, (int, np.integer)) for t in prompt):
        ids = [int(t) for t in prompt]
        if any(not 0 <= t < vocab for t in ids):
            raise ConfigError(f"token ids must be in [0, {vocab})")
        return ids
    raise ConfigError(f"a prompt is a string, chat messages or token ids, not {type(prompt).__name__}")


class Generation:
    """A batch of requests run together. Iterating runs it and yields text deltas when it has one row;
    ``results`` (request order) is filled at the end, and each row's ``on_finish`` as soon as it ends."""

    def __init__(self, model: str, requests: Sequence[Request], cfg: GenerationConfig, *,
                 acquire: Callable[[], Handle], release: Callable[[Handle], None],
                 metrics: RuntimeMetrics, monitor: Monitor, limits: Callable[[Handle], ContextLimits]) -> None:
        if not requests:
            raise ConfigError("generate() needs at least one prompt")
        self.model, self.requests, self.cfg = model, list(requests), cfg
        self._acquire, self._release, self._metrics, self._monitor = acquire, release, metrics, monitor
        self._limits = limits
        self._started = False
        self.results: list[GenerationResult] = []

    @property
    def result(self) -> GenerationResult | None:
        return self.results[0] if self.results else None

    def cancel(self) -> None:
        """End every row at the next step (finish_reason "cancelled"); safe from any thread."""
        for q in self.requests:
            q.cancel()

    def __iter__(self) -> Iterator[str]:
        if self._started:  # a second pass would run the model again and append a second set of results
            raise ConfigError("this generation has already run; call generate() again for a new one")
        self._started = True
        return self._run()

    def _run(self) -> Iterator[str]:
        reqs = self.requests
        rows = len(reqs)
        h = self._acquire()
        t_start = time.perf_counter()
        slots: list[GenerationResult | None] = [None] * rows
        timing = [0.0, 0.0]  # prefill, decode so far
        kept: KvSession | None = None

        def finish(r: int, reason: str, stream: TextStream, prompt_len: int, cut: int) -> None:
            now = time.perf_counter()
            q = reqs[r]
            res = GenerationResult(
                text=stream.text, token_ids=list(stream.ids), finish_reason=reason, prompt_tokens=prompt_len,
                prefill_s=timing[0], decode_s=timing[1], version=h.version, truncated_tokens=cut,
                queue_s=max(t_start - q.submitted, 0.0), total_s=now - q.submitted,
                cached_tokens=kept.reused if kept is not None else 0)
            slots[r] = res
            self._metrics.latency["generate"].add(res.total_s)
            self._metrics.tokens.inc(len(res.token_ids))
            self._monitor.on_request(res.total_s)
            _call(q, "on_finish", res)

        try:
            if h.info.task != TEXT_GENERATION or h.stepper is None or h.tokenizer is None:
                raise ConfigError(f"{self.model} is a {h.info.task} model; generate() needs a text-generation bundle")
            tok = h.tokenizer
            limits = self._limits(h)
            vocab = h.info.vocab_size or tok.vocab_size
            fitted = [fit_prompt(encode_prompt(tok, q.prompt, vocab), q.max_new_tokens, limits, q.truncate,
                                 model=self.model) for q in reqs]
            streams = [TextStream(tok.decode, q.stop) for q in reqs]
            now = time.monotonic()
            for r, q in enumerate(reqs):  # over before it started: never enters the batch
                if q.cancelled or (q.deadline is not None and now >= q.deadline):
                    finish(r, "cancelled" if q.cancelled else "deadline", streams[r], len(fitted[r][0]), fitted[r][1])
            live = [r for r in range(rows) if slots[r] is None]
            if live:
                cfg = dataclasses.replace(self.cfg, max_new_tokens=max(reqs[r].max_new_tokens for r in live), stop=())
                done = np.zeros(len(live), bool)
                mon = self._monitor
                first = True
                kept = reqs[live[0]].kv if len(live) == 1 else None
                if kept is not None:
                    kept.attach(h.stepper)  # a cache of another version is dropped
                steps = generate_ids(h.stepper, [fitted[r][0] for r in live], cfg, pad_id=h.pad_id, done=done,
                                     on_logits=lambda lg: _lm_stats(mon, lg), chunk=limits.max_prompt, kept=kept)
                for tokens, dt in steps:
                    timing[0 if first else 1] += dt
                    first = False
                    now = time.monotonic()
                    for j, r in enumerate(live):
                        if done[j]:
                            continue
                        reason = _step_row(reqs[r], streams[r], int(tokens[j]), h.eos_ids, now)
                        piece = "" if reason == "cancelled" else streams[r].delta(final=reason is not None)
                        if piece and not _call(reqs[r], "on_text", piece):
                            reason = "cancelled"  # the consumer is gone
                        if reason is not None:
                            done[j] = True
                            finish(r, reason, streams[r], len(fitted[r][0]), fitted[r][1])
                        if piece and rows == 1:
                            yield piece
                for j, r in enumerate(live):  # only when the step loop ended early (it does not today)
                    if not done[j]:
                        finish(r, "length", streams[r], len(fitted[r][0]), fitted[r][1])
        except GeneratorExit:
            raise
        except Exception:
            self._metrics.errors["generate"].inc()
            raise
        finally:
            self._release(h)
        self.results = [s for s in slots if s is not None]
        if timing[1] > 0 and self.results:
            self._metrics.tokens_per_s.set(self.results[0].decode_tokens_per_s)


def _step_row(q: Request, stream: TextStream, token: int, eos: frozenset[int], now: float) -> str | None:
    """Add one sampled token to a row; the row's finish reason if this step ended it."""
    if q.cancelled:
        return "cancelled"
    if token in eos:
        return "eos"
    stream.add(token)
    if stream.stopped:
        return "stop"
    if len(stream.ids) >= q.max_new_tokens:
        return "length"
    if q.deadline is not None and now >= q.deadline:
        return "deadline"
    return None


def _call(q: Request, name: str, arg: Any) -> bool:
    """Run a request's callback; a callback that raises ends that row only (False), never the batch."""
    fn = getattr(q, name)
    if fn is None:
        return True
    try:
        fn(arg)
    except Exception:
        log.exception("Request.%s raised; the row is cancelled", name)
        q.cancel()
        return False
    return True


def _lm_stats(mon: Monitor, get_logits: Callable[[], np.ndarray]) -> None:
    """Live statistics of one decode step's logits (on one step in ``stats_every``; only then fetched)."""
    if not mon.want_stats():
        return
    logits = get_logits()
    finite = bool(np.isfinite(logits.sum(dtype=np.float64)))
    mon.on_finite(finite)
    if finite:
        mon.on_online(entropy(logits))
