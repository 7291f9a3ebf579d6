"""The OpenAI-compatible HTTP API on the runtime: Starlette routes served by uvicorn.

    /v1/chat/completions  (streamed as server-sent events with "stream": true)   /v1/completions
    /v1/embeddings        /v1/models        /health (503 while a model is degraded)        /metrics

Starlette + uvicorn (no FastAPI, no pydantic) keep the device install small; msgspec checks the bodies.
Prompts are encoded and checked against the engine's context in the request handler, so an over-long one
gets its 400 before any streaming starts; generation runs in the model's Batcher thread. Sampling defaults
to greedy (the runtime's default) when a request sets no temperature.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from edgeq.errors import ConfigError, ContextLengthError, DegradedError, EdgeqError, OverloadedError
from edgeq.sdk.bundle.model_info import TEXT_GENERATION
from edgeq.sdk.runtime.decode import GenerationConfig
from edgeq.sdk.runtime.kvreuse import PrefixCache
from edgeq.sdk.serve.batcher import Batcher, Job
from edgeq.sdk.serve.config import DEFAULT_MAX_BATCH, ServeConfig
from edgeq.sdk.serve.metrics import ServeMetrics
from edgeq.sdk.serve.schemas import (
    FINISH,
    ApiError,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    decode,
    encode,
    usage,
)

log = logging.getLogger(__name__)


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return encode(content)


class Model:
    """One served model: its runtime, and its batcher (text generation) or embedding slot (encoders)."""

    def __init__(self, rt: Any, config: ServeConfig) -> None:
        self.rt = rt
        self.generates = rt.task == TEXT_GENERATION
        profile = rt.context.max_batch
        want = config.max_batch or profile or DEFAULT_MAX_BATCH
        self.max_batch = min(want, profile) if profile else want
        self.batcher = Batcher(rt, max_batch=self.max_batch, max_queue=config.max_queue,
                               window_s=config.batch_window_s, merge_window_s=config.merge_window_s,
                               prefixes=PrefixCache(config.prefix_cache, config.prefix_cache_tokens)
                               ) if self.generates else None
        self.embed_slot = asyncio.Semaphore(1)  # one encoder inference at a time: it uses every core
        self.embed_waiting = 0


def _error(exc: BaseException) -> ApiError:
    """Every failure as the OpenAI error it is."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ContextLengthError):
        return ApiError(400, exc.message, param="messages", code="context_length_exceeded")
    if isinstance(exc, OverloadedError):
        return ApiError(429, exc.message, type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
    if isinstance(exc, ConfigError):
        return ApiError(400, exc.message)
    if isinstance(exc, DegradedError):
        return ApiError(503, exc.message, type="server_error", code="degraded")
    if isinstance(exc, HTTPException):
        return ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
    if isinstance(exc, EdgeqError):
        return ApiError(500, exc.message, type="server_error")
    log.exception("unexpected error serving a request", exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}", type="server_error")


def _sse(obj: Any) -> bytes:
    return b"data: " + encode(obj) + b"\n\n"


class Server:
    """The routes over a set of runtimes (one per model name)."""

    def __init__(self, runtimes: Sequence[Any], config: ServeConfig) -> None:
        if not runtimes:
            raise ConfigError("serve needs at least one model")
        names = [rt.model for rt in runtimes]
        if len(set(names)) != len(names):
            raise ConfigError(f"a model is listed twice: {sorted(names)}")
        self.config = config
        self.models = {rt.model: Model(rt, config) for rt in runtimes}
        self.metrics = ServeMetrics(self.models)
        self.started = int(time.time())

    # -- plumbing ------------------------------------------------------------------------------------
    async def _body(self, request: HttpRequest) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the body is larger than {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the body is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _model(self, name: str, *, generates: bool) -> Model:
        m = self.models.get(name)
        if m is None:
            raise ApiError(404, f"The model `{name}` does not exist; this server has {sorted(self.models)}",
                           param="model", code="model_not_found")
        if m.generates != generates:
            want = "a text-generation" if generates else "a feature-extraction"
            raise ApiError(400, f"`{name}` is a {m.rt.task} model; this endpoint needs {want} model", param="model")
        return m

    def _overloaded(self, name: str, endpoint: str, exc: OverloadedError) -> ApiError:
        self.metrics.rejected(name, endpoint)
        return _error(exc)

    # -- generation ------------------------------------------------------------------------------------
    async def chat(self, request: HttpRequest) -> Response:
        req = decode(await self._body(request), ChatRequest)
        m = self._model(req.model, generates=True)
        tok = m.rt.tokenizer
        if tok is None or not tok.chat_template:
            raise ApiError(400, f"`{req.model}` has no chat template; use /v1/completions", param="messages")
        return await self._generate(request, m, req, [[msg.to_dict() for msg in req.messages]], req.budget, True)

    async def completions(self, request: HttpRequest) -> Response:
        req = decode(await self._body(request), CompletionRequest)
        m = self._model(req.model, generates=True)
        prompts = req.prompts()
        if req.stream and len(prompts) > 1:
            raise ApiError(400, "stream takes one prompt", param="prompt")
        return await self._generate(request, m, req, prompts, req.max_tokens, False)

    def _prepare(self, m: Model, prompt: Any, budget: int | None, truncate: str) -> tuple[list[int], int]:
        """Prompt ids checked against the context, and the completion budget (the default capped by room)."""
        try:
            ids = m.rt.encode_prompt(prompt, budget or 1, truncate=truncate)
        except ContextLengthError as exc:
            raise ApiError(400, exc.message, param="messages" if isinstance(prompt, list) and prompt
                           and isinstance(prompt[0], dict) else "prompt", code="context_length_exceeded") from None
        if budget is None:
            ctx = m.rt.context.max_context
            budget = max(1, min(self.config.default_max_tokens, ctx - len(ids) if ctx else self.config.default_max_tokens))
        return ids, budget

    async def _generate(self, request: HttpRequest, m: Model, req: Any, prompts: list[Any], budget: int | None,
                        chat: bool) -> Response:
        try:
            cfg = GenerationConfig(temperature=req.temperature or 0.0, top_p=req.top_p or 1.0,
                                   top_k=req.top_k or 0, seed=req.seed)
        except ConfigError as exc:
            raise ApiError(400, exc.message) from None
        prepared = [self._prepare(m, p, budget, req.truncate) for p in prompts]
        batcher = m.batcher
        if batcher is None:  # _model(generates=True) returned a model without one: a bug, not a bad request
            raise ApiError(500, f"{m.rt.model} has no batcher", type="server_error")
        jobs: list[Job] = []
        try:
            for ids, n in prepared:
                jobs.append(batcher.submit(ids, cfg, max_new_tokens=n, stop=req.stop_strings(), stream=req.stream))
        except OverloadedError as exc:
            for j in jobs:
                batcher.cancel(j)
            raise self._overloaded(m.rt.model, "chat" if chat else "completions", exc) from None
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        if req.stream:
            return StreamingResponse(self._stream(m, jobs[0], rid, chat, req.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        results = await self._collect(request, m, jobs)
        if results is None:  # the client left; nothing to send
            return Response(status_code=499)
        n_prompt = sum(len(ids) for ids, _ in prepared)
        n_out = sum(len(r.token_ids) for r in results)
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                    "finish_reason": FINISH[r.finish_reason]} if chat else
                   {"index": i, "text": r.text, "logprobs": None, "finish_reason": FINISH[r.finish_reason]}
                   for i, r in enumerate(results)]
        return JsonResponse({"id": rid, "object": "chat.completion" if chat else "text_completion",
                             "created": int(time.time()), "model": m.rt.model, "choices": choices,
                             "system_fingerprint": f"edgeq-v{results[0].version}", "usage": usage(n_prompt, n_out, sum(r.cached_tokens for r in results))})

    async def _collect(self, request: HttpRequest, m: Model, jobs: list[Job]) -> list[Any] | None:
        """Every job's result, or None when the client disconnects first (its rows are then cancelled)."""
        async def drain(job: Job) -> Any:
            while await job.channel.next() is not None:
                pass
            return job.channel.result

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        work = asyncio.ensure_future(asyncio.gather(*(drain(j) for j in jobs)))
        gone = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            return work.result() if work.done() else None
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
                for j in jobs:
                    m.batcher.cancel(j)  # type: ignore[union-attr]

    async def _stream(self, m: Model, job: Job, rid: str, chat: bool, include_usage: bool) -> AsyncIterator[bytes]:
        created, name, ch = int(time.time()), m.rt.model, job.channel
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(piece: str | None, finish: str | None = None, role: bool = False) -> bytes:
            if chat:
                delta = {"role": "assistant", "content": ""} if role else ({} if piece is None else {"content": piece})
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
            return _sse({"id": rid, "object": kind, "created": created, "model": name, "choices": [choice]})

        try:
            if chat:
                yield chunk(None, role=True)
            while (piece := await ch.next()) is not None:
                yield chunk(piece)
            res = ch.result
            yield chunk(None, FINISH[res.finish_reason])
            if include_usage:
                yield _sse({"id": rid, "object": kind, "created": created, "model": name, "choices": [],
                            "usage": usage(res.prompt_tokens, len(res.token_ids), res.cached_tokens)})
            yield b"data: [DONE]\n\n"
        except Exception as exc:  # the batch failed after the headers went out: say so in the stream
            yield _sse(_error(exc).body())
        finally:
            if not ch.ended:  # the client disconnected (this generator was cancelled): free the slot
                m.batcher.cancel(job)  # type: ignore[union-attr]

    # -- embeddings -------------------------------------------------------------------------------------
    async def embeddings(self, request: HttpRequest) -> Response:
        req = decode(await self._body(request), EmbeddingRequest)
        m = self._model(req.model, generates=False)
        texts = req.texts(self.config.max_embedding_inputs)
        lengths = [len(e.ids) for e in m.rt.tokenizer.encode_pair_batch(texts)]
        ctx = m.rt.context
        limit = ctx.max_prompt or ctx.max_context
        if limit and max(lengths) > limit:
            raise ApiError(400, f"an input of {max(lengths)} tokens exceeds the {limit}-token context of "
                           f"{req.model} ({ctx.source})", param="input", code="context_length_exceeded")
        if m.embed_waiting >= self.config.max_queue:
            raise self._overloaded(req.model, "embeddings", OverloadedError(
                f"{m.embed_waiting} embedding requests are already waiting for {req.model}"))
        m.embed_waiting += 1
        try:
            async with m.embed_slot:
                vectors = await m.rt.aembed(texts, max_length=limit or 512)
        finally:
            m.embed_waiting -= 1
        if req.dimensions is not None and req.dimensions != vectors.shape[1]:
            raise ApiError(400, f"{req.model} embeds in {vectors.shape[1]} dimensions", param="dimensions")
        as_b64 = req.encoding_format == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if as_b64 else v.tolist()}
                for i, v in enumerate(vectors)]
        n = sum(lengths)
        return JsonResponse({"object": "list", "data": data, "model": req.model,
                             "usage": {"prompt_tokens": n, "total_tokens": n}})

    # -- service endpoints --------------------------------------------------------------------------------
    async def list_models(self, request: HttpRequest) -> Response:
        data = [{"id": name, "object": "model", "created": self.started, "owned_by": "edgeq",
                 "edgeq": {"task": m.rt.task, "version": m.rt.version, "backend": m.rt.backend_name,
                           "context": m.rt.context.to_dict(), "max_batch": m.max_batch}}
                for name, m in self.models.items()]
        return JsonResponse({"object": "list", "data": data})

    async def health(self, request: HttpRequest) -> Response:
        status = {name: m.rt.status() for name, m in self.models.items()}
        ok = all(s.ok for s in status.values())
        return JsonResponse({"status": "ok" if ok else "degraded",
                             "models": {name: s.to_dict() for name, s in status.items()}},
                            status_code=200 if ok else 503)

    async def metrics_endpoint(self, request: HttpRequest) -> Response:
        body, ctype = self.metrics.render()
        return Response(body, media_type=ctype)

    def close(self) -> None:
        for m in self.models.values():
            if m.batcher is not None:
                m.batcher.close()


async def _handle_error(request: HttpRequest, exc: Exception) -> Response:
    err = _error(exc)
    return JsonResponse(err.body(), status_code=err.status, headers=err.headers)


def create_app(runtimes: Sequence[Any], config: ServeConfig | None = None) -> Starlette:
    """The ASGI app serving ``runtimes`` (open Runtime objects; the caller closes them after the app stops)."""
    server = Server(runtimes, config or ServeConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        server.close()

    routes = [
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/embeddings", server.embeddings, methods=["POST"]),
        Route("/v1/models", server.list_models, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics_endpoint, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={Exception: _handle_error, HTTPException: _handle_error,
                                        ApiError: _handle_error, EdgeqError: _handle_error})
    app.state.server = server
    return app
