"""The OpenAI wire format: request bodies decoded and type-checked by msgspec, errors in OpenAI's shape.

Unknown fields are ignored (clients send fields a server may not use); fields edgeq cannot honour with a
value other than their default (``n > 1``, ``logprobs``, penalties, ``echo``, ``suffix``) are refused
with a 400 naming the field, never silently dropped.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta, Struct

T = TypeVar("T")

Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
Count = Annotated[int, Meta(ge=1)]


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# -- requests ----------------------------------------------------------------------------------------
class StreamOptions(Struct, kw_only=True):
    include_usage: bool = False


class ContentPart(Struct, kw_only=True):
    type: str
    text: str = ""


class Message(Struct, kw_only=True):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            if any(p.type != "text" for p in content):
                raise ApiError(400, "only text content parts are supported", param="messages")
            content = "".join(p.text for p in content)
        return {"role": self.role, "content": content or ""}


class _Sampling(Struct, kw_only=True):
    model: str
    max_tokens: Count | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None  # not OpenAI's; llama.cpp and vLLM take it too
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None
    truncate: str = "error"  # edgeq's: "left" keeps the end of an over-long prompt (send it in extra_body)

    def check(self) -> None:
        if self.n != 1:
            raise ApiError(400, "only n=1 is supported", param="n")
        if self.presence_penalty or self.frequency_penalty:
            raise ApiError(400, "presence/frequency penalties are not supported", param="presence_penalty")
        if self.truncate not in ("error", "left"):
            raise ApiError(400, "truncate must be 'error' or 'left'", param="truncate")
        stops = self.stop_strings()
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "stop takes up to 4 non-empty strings", param="stop")

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatRequest(_Sampling, kw_only=True):
    messages: list[Message]
    max_completion_tokens: Count | None = None
    logprobs: bool | None = None

    def check(self) -> None:
        super().check()
        if not self.messages:
            raise ApiError(400, "messages must not be empty", param="messages")
        if self.logprobs:
            raise ApiError(400, "logprobs are not supported", param="logprobs")

    @property
    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling, kw_only=True):
    prompt: str | list[Any]
    max_tokens: Count | None = 16  # OpenAI's default for /v1/completions
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None

    def check(self) -> None:
        super().check()
        if self.echo or self.suffix or self.logprobs or (self.best_of or 1) != 1:
            raise ApiError(400, "echo, suffix, logprobs and best_of are not supported", param="echo")

    def prompts(self) -> list[Any]:
        """The prompts: a string, a list of strings, token ids, or a list of token-id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise ApiError(400, "prompt must not be empty", param="prompt")
        if all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            return [p]
        if all(isinstance(x, str) for x in p) or all(
                isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
                for x in p):
            return list(p)
        raise ApiError(400, "prompt must be a string, a list of strings, token ids or lists of token ids",
                       param="prompt")


class EmbeddingRequest(Struct, kw_only=True):
    model: str
    input: str | list[Any]
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None

    def texts(self, limit: int) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else self.input
        if not texts or not all(isinstance(t, str) and t for t in texts):
            raise ApiError(400, "input must be a non-empty string or a list of non-empty strings "
                                "(token-id input is not supported)", param="input")
        if len(texts) > limit:
            raise ApiError(400, f"at most {limit} inputs per request", param="input")
        if self.encoding_format not in ("float", "base64"):
            raise ApiError(400, "encoding_format must be 'float' or 'base64'", param="encoding_format")
        return texts


_PARAM = re.compile(r"at `\$\.([A-Za-z_]+)|field `([A-Za-z_]+)`")


def decode(body: bytes, typ: type[T]) -> T:
    """``body`` as ``typ``, or a 400 ApiError naming the offending field."""
    try:
        req = msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as exc:
        m = _PARAM.search(str(exc))
        raise ApiError(400, f"invalid request: {exc}", param=(m.group(1) or m.group(2)) if m else None) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    check = getattr(req, "check", None)
    if check is not None:
        check()
    return req


def encode(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


# -- responses -----------------------------------------------------------------------------------------
#: edgeq finish reasons -> OpenAI's ("deadline" and "cancelled" never reach a client that is still there)
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "deadline": "length", "cancelled": "stop"}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, Any]:
    """OpenAI's usage object; ``cached_tokens``: prompt tokens taken from a kept KV cache (not prefilled)."""
    out: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return out
