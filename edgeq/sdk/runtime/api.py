"""The request API of the runtime: ``generate`` / ``stream`` / ``generate_requests`` and their asyncio forms.

Return contract: ``generate`` returns a GenerationResult for one prompt and a list of them (prompt order)
for a list of prompts; ``stream`` returns a Generation (iterate it for text pieces, then ``.result``);
``agenerate`` returns what ``generate`` does, ``astream`` an AsyncStream, ``aembed`` what ``embed`` does.
A deadline ends a generation with finish_reason "deadline" and the text so far; cancellation
(``Generation.cancel``, ``Request.cancel``, ``task.cancel()``) ends it at the next step.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeq.errors import ConfigError
from edgeq.sdk.runtime.aio import AsyncStream, embed_async, run_async
from edgeq.sdk.runtime.context import ContextLimits, fit_prompt
from edgeq.sdk.runtime.decode import GenerationConfig, GenerationResult
from edgeq.sdk.runtime.generation import Generation, Request, encode_prompt, is_batch, make_config, make_requests
from edgeq.sdk.runtime.session import ChatSession

if TYPE_CHECKING:
    from edgeq.sdk.health.metrics import RuntimeMetrics
    from edgeq.sdk.health.monitor import Monitor


class GenerateAPI:
    """Mixed into Runtime, which provides the handle accounting, metrics, monitor, limits and ``embed``."""

    # Provided by Runtime: model, metrics, monitor, context, _acquire/_release (the handle accounting),
    # _limits(handle) and embed.
    model: str
    metrics: RuntimeMetrics
    monitor: Monitor
    context: ContextLimits
    _limits: Any
    _acquire: Any
    _release: Any
    embed: Any

    # -- generation -------------------------------------------------------------------------------------
    def generate(self, prompt: Any, max_new_tokens: int | None = None, *, temperature: float | None = None,
                 top_p: float | None = None, top_k: int | None = None, stop: Sequence[str] | None = None,
                 seed: int | None = None, config: GenerationConfig | None = None, deadline_s: float | None = None,
                 truncate: str = "error", stream: bool = False) -> Any:
        """Generate text; returns a GenerationResult for one prompt, a list of them for a list of prompts.

        Args:
            prompt: text, chat messages ([{"role", "content"}]), token ids, or a list of those (one batch,
                run in rows of at most the engine profile's batch maximum).
            max_new_tokens, temperature, top_p, top_k, stop, seed: the decoding settings (GenerationConfig's
                defaults: 128 tokens, greedy); or pass them all as ``config=`` — passing both is refused
                when they disagree.
            deadline_s: seconds from now after which each row ends with finish_reason "deadline" and the
                text generated so far (checked at every step).
            truncate: "error" raises ContextLengthError when prompt + max_new_tokens exceeds the engine's
                context (``Runtime.context``); "left" drops the start of the prompt to fit.
            stream: deprecated; use ``Runtime.stream``.
        Raises ContextLengthError before the first step when a prompt does not fit.
        """
        cfg = make_config(config, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                          top_k=top_k, stop=stop, seed=seed)
        if stream:
            warnings.warn("generate(stream=True) is deprecated: use Runtime.stream()", DeprecationWarning, 2)
            return self.stream(prompt, config=cfg, deadline_s=deadline_s, truncate=truncate)
        batch = is_batch(prompt)
        results = self.generate_requests(make_requests(prompt if batch else [prompt], cfg, deadline_s=deadline_s,
                                                       truncate=truncate), cfg)
        return results if batch else results[0]

    def stream(self, prompt: Any, max_new_tokens: int | None = None, *, temperature: float | None = None,
               top_p: float | None = None, top_k: int | None = None, stop: Sequence[str] | None = None,
               seed: int | None = None, config: GenerationConfig | None = None, deadline_s: float | None = None,
               truncate: str = "error") -> Generation:
        """Stream one prompt: iterate the returned Generation for text pieces; ``.result`` once exhausted.

        Nothing runs until iteration starts; ``cancel()`` (any thread) ends it at the next step. Arguments
        as for ``generate``.
        """
        if is_batch(prompt):
            raise ConfigError("stream() takes one prompt; call it once per prompt to stream several")
        cfg = make_config(config, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                          top_k=top_k, stop=stop, seed=seed)
        return self._generation(make_requests([prompt], cfg, deadline_s=deadline_s, truncate=truncate), cfg)

    def generate_requests(self, requests: Sequence[Request], config: GenerationConfig | None = None
                          ) -> list[GenerationResult]:
        """Run Requests (each with its own budget, stop strings, deadline, callbacks) in the calling thread.

        They share ``config``'s sampling settings (temperature, top_p, top_k, seed) and run as batches of at
        most ``context.max_batch`` rows; returns their results in request order.
        """
        cfg = config or GenerationConfig()
        rows = self.context.max_batch or len(requests) or 1
        results: list[GenerationResult] = []
        for i in range(0, len(requests), rows):
            gen = self._generation(requests[i: i + rows], cfg)
            for _ in gen:
                pass
            results += gen.results
        return results

    def chat_session(self, system: str | None = None, max_new_tokens: int | None = None, *,
                     temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                     stop: Sequence[str] | None = None, seed: int | None = None,
                     config: GenerationConfig | None = None, history: Sequence[dict[str, str]] = ()) -> ChatSession:
        """A conversation that keeps its KV cache between turns: each turn prefills only its new tokens.

        Args:
            system: the system prompt (kept when old turns are dropped to fit the context).
            history: earlier messages to start from ({"role", "content"}).
            max_new_tokens ... config: each turn's decoding settings, as for ``generate``.
        Close it (or use ``with``) to give its cache back.
        """
        cfg = make_config(config, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                          top_k=top_k, stop=stop, seed=seed)
        return ChatSession(self, cfg, system=system, history=history)

    def _generation(self, requests: Sequence[Request], cfg: GenerationConfig) -> Generation:
        return Generation(self.model, requests, cfg, acquire=self._acquire, release=self._release,
                          metrics=self.metrics, monitor=self.monitor, limits=self._limits)

    def encode_prompt(self, prompt: Any, max_new_tokens: int = 128, *, truncate: str = "error") -> list[int]:
        """The token ids ``generate`` would run for ``prompt``, checked against the context (ContextLengthError).

        An app (the server) calls this to refuse an over-long request before it starts, then passes the ids.
        """
        h = self._acquire()
        try:
            if h.tokenizer is None:
                raise ConfigError(f"{self.model} has no tokenizer")
            ids = encode_prompt(h.tokenizer, prompt, h.info.vocab_size or h.tokenizer.vocab_size)
            return fit_prompt(ids, max_new_tokens, self._limits(h), truncate, model=self.model)[0]
        finally:
            self._release(h)

    # -- asyncio ---------------------------------------------------------------------------------------
    async def agenerate(self, prompt: Any, max_new_tokens: int | None = None, *, temperature: float | None = None,
                        top_p: float | None = None, top_k: int | None = None, stop: Sequence[str] | None = None,
                        seed: int | None = None, config: GenerationConfig | None = None,
                        deadline_s: float | None = None, truncate: str = "error") -> Any:
        """``generate`` for asyncio: decoding runs in the loop's executor. ``task.cancel()`` ends the rows at
        the next step (the CancelledError propagates once they stopped); a deadline ends them with
        finish_reason "deadline". Arguments and return as for ``generate``."""
        cfg = make_config(config, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                          top_k=top_k, stop=stop, seed=seed)
        batch = is_batch(prompt)
        reqs = make_requests(prompt if batch else [prompt], cfg, deadline_s=deadline_s, truncate=truncate)
        results = await run_async(lambda: self.generate_requests(reqs, cfg), reqs)
        return results if batch else results[0]

    def astream(self, prompt: Any, max_new_tokens: int | None = None, *, temperature: float | None = None,
                top_p: float | None = None, top_k: int | None = None, stop: Sequence[str] | None = None,
                seed: int | None = None, config: GenerationConfig | None = None, deadline_s: float | None = None,
                truncate: str = "error") -> AsyncStream:
        """``stream`` for asyncio: ``async for piece in rt.astream(...)``, then ``.result``; leaving the loop
        early or cancelling the task cancels the request."""
        if is_batch(prompt):
            raise ConfigError("astream() takes one prompt")
        cfg = make_config(config, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                          top_k=top_k, stop=stop, seed=seed)
        (req,) = make_requests([prompt], cfg, deadline_s=deadline_s, truncate=truncate)
        return AsyncStream(req, lambda: self.generate_requests([req], cfg))

    async def aembed(self, texts: str | Sequence[str], *, normalize: bool | None = None, max_length: int = 512,
                     deadline_s: float | None = None) -> np.ndarray:
        """``embed`` for asyncio. An embedding has no partial result: past ``deadline_s`` it raises
        DeadlineExceededError (and a cancelled task returns at once); the inference already running cannot be
        interrupted and finishes in its thread, its result dropped."""
        if deadline_s is not None and not deadline_s > 0:
            raise ConfigError(f"deadline_s must be > 0 seconds, got {deadline_s}")
        return await embed_async(lambda: self.embed(texts, normalize=normalize, max_length=max_length), deadline_s)

