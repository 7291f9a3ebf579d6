"""A chat whose KV cache stays between turns: ``rt.chat_session()``; each turn prefills only its new tokens.

    with rt.chat_session(system="You are terse.", max_new_tokens=64) as chat:
        print(chat.send("Hi").text)
        for piece in chat.stream("And who are you?"):
            print(piece, end="")

The session keeps the messages and one ``KvSession`` (``edgeq.sdk.runtime.kvreuse``): a turn encodes the
whole history with the chat template, as a fresh ``generate`` would, and runs only the tokens after the
prefix its cache already holds, so its output is the full re-prefill's. When the history no longer fits
the context with room for the reply, the oldest user/assistant pairs are dropped (the system prompt
stays); the cache then keeps only what still matches (the system prompt) and the rest is prefilled
again. A fallback to another version starts the cache again on the new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgeq.errors import ConfigError, ContextLengthError
from edgeq.sdk.runtime.decode import GenerationConfig, GenerationResult
from edgeq.sdk.runtime.generation import Generation, make_requests
from edgeq.sdk.runtime.kvreuse import KvSession


class ChatSession:
    """One conversation on a Runtime (made by ``Runtime.chat_session``). Not thread-safe: one turn at a time.

    ``history`` holds the messages the next turn is built on; ``last`` the latest turn's result
    (``cached_tokens``: the prompt tokens it did not prefill again).
    """

    def __init__(self, rt: Any, config: GenerationConfig, *, system: str | None = None,
                 history: Sequence[dict[str, str]] = ()) -> None:
        self._rt, self.config = rt, config
        self.history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.history += [dict(m) for m in history]
        self.kv = KvSession()
        self.last: GenerationResult | None = None
        self.dropped_turns = 0

    def send(self, text: str, *, deadline_s: float | None = None) -> GenerationResult:
        """Add the user's ``text``, generate the reply (added to the history) and return its result."""
        gen = self.stream(text, deadline_s=deadline_s)
        for _ in gen:
            pass
        if gen.result is None:  # cannot happen: a generation of one row always ends with its result
            raise ConfigError("the turn produced no result")
        return gen.result

    def stream(self, text: str, *, deadline_s: float | None = None) -> Generation:
        """Like ``send``, streamed: iterate the Generation for text pieces; the reply joins the history when it ends.

        Raises ContextLengthError when the message alone does not fit with the reply's room. A turn that
        raises leaves the history as it was; a cancelled one keeps the reply's text so far.
        """
        if not isinstance(text, str) or not text:
            raise ConfigError("a chat turn needs a non-empty message")
        messages = self._fit(self.history + [{"role": "user", "content": text}])
        (req,) = make_requests([messages], self.config, deadline_s=deadline_s)

        def record(res: GenerationResult) -> None:  # a turn that failed leaves the history as it was
            self.history = [*messages, {"role": "assistant", "content": res.text}]
            self.last = res

        req.on_finish = record
        req.kv = self.kv
        return self._rt._generation([req], self.config)

    def _fit(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The newest turns that fit the context with room for the reply (the system prompt is kept)."""
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system):]
        while True:
            try:
                self._rt.encode_prompt(system + turns, self.config.max_new_tokens)
                return system + turns
            except ContextLengthError:
                if len(turns) <= 1:
                    raise  # the newest message alone does not fit: say so
                cut = 2 if len(turns) > 2 else 1  # the oldest user/assistant pair
                turns = turns[cut:]
                self.dropped_turns += cut

    def close(self) -> None:
        """Give the kept KV cache back."""
        self.kv.close()

    def __enter__(self) -> ChatSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
