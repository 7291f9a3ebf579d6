"""KV caches kept between generations, so that a prompt that starts like an earlier one prefills only the rest.

A ``KvSession`` is one row's decode state kept open after its generation, with the token ids its cache
holds (the prompt and every sampled token that was fed back). The next prompt is compared token by token
with those ids: the common prefix stays in the cache (``Decode.resize`` cuts what follows it and makes
room), and only the tokens after it are prefilled. Comparing token ids, not text, keeps it exact whatever
the chat template or the tokenizer does with the reply's text: where they differ, the cache is cut there.

Who keeps them:
- ``ChatSession`` (``edgeq.sdk.runtime.session``): one per conversation, for an app that knows its turns.
- ``PrefixCache``: a few per served model (the server), matched by longest common prefix, least recently
  used first out, bounded by count and by the tokens their caches hold.

A kept cache belongs to one loaded version's stepper: after a fallback or a version switch the next
generation finds another stepper and starts the cache again (``attach``). Only a one-row generation uses
or keeps one (a batched row's cache sits among left-padded rows of the batch's own layout).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from edgeq.errors import ConfigError
from edgeq.sdk.runtime.decode import Decode


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class KvSession:
    """One row's KV cache kept between generations. Used by one generation at a time.

    ``reused`` / ``prefilled``: the prompt tokens the latest generation took from the cache / ran.
    """

    def __init__(self) -> None:
        self.stepper: Any = None
        self.decode: Decode | None = None
        self.ids: list[int] = []
        self.reused = self.prefilled = 0
        self.capacity = 0  # tokens the cache was last sized for (prompt + budget)

    def attach(self, stepper: Any) -> None:
        """Use ``stepper`` (the serving version's); a cache made by another one is dropped."""
        if stepper is not self.stepper:
            self.close()
            self.stepper = stepper

    def prepare(self, prompt: list[int], max_len: int) -> tuple[Decode, int]:
        """The decode to run ``prompt`` in, and how many of its tokens are already in its cache.

        At least the last prompt token is always run (its logits give the first new token).
        """
        if self.stepper is None:
            raise ConfigError("KvSession.attach(stepper) comes before prepare()")
        keep = min(common_prefix(self.ids, prompt), len(prompt) - 1)
        if self.decode is None or not self.decode.resize(keep, max_len):
            self._drop()
            self.decode = self.stepper.decode(1, max_len)
            keep = 0
        del self.ids[keep:]
        self.reused, self.prefilled, self.capacity = keep, len(prompt) - keep, max_len
        return self.decode, keep

    def _drop(self) -> None:
        dec, self.decode = self.decode, None
        self.ids = []
        self.capacity = 0
        if dec is not None:
            dec.close()

    def close(self) -> None:
        """Give the cache's memory back (to its stepper's pool)."""
        self._drop()
        self.stepper = None

    def __enter__(self) -> KvSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PrefixCache:
    """Kept KV caches of recent one-row generations, handed to the request whose prompt shares most with one.

    Args:
        max_entries: caches kept at most (0 disables the cache: ``take`` always gives a new one).
        max_tokens: tokens all kept caches are sized for, at most (each holds two arenas of that many tokens
            per layer: for SmolLM2-135M in FP32, 92 KiB a token).
        min_match: the shortest common prefix worth taking a cache for (a shorter match takes a new one and
            leaves the kept caches to prompts that match them better).
    Thread-safe; a taken cache is the taker's until ``put`` back.
    """

    def __init__(self, max_entries: int = 4, max_tokens: int = 16384, min_match: int = 8) -> None:
        if max_entries < 0 or max_tokens < 0 or min_match < 1:
            raise ConfigError("PrefixCache needs max_entries >= 0, max_tokens >= 0 and min_match >= 1")
        self.max_entries, self.max_tokens, self.min_match = max_entries, max_tokens, min_match
        self._entries: list[KvSession] = []  # least recently used first
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tokens(self) -> int:
        """Tokens the kept caches are sized for."""
        return sum(e.capacity for e in self._entries)

    def take(self, ids: Sequence[int]) -> KvSession:
        """The kept cache sharing the longest prefix with ``ids`` (at least ``min_match``), or a new one."""
        with self._lock:
            best, n = None, 0
            for e in self._entries:
                m = common_prefix(e.ids, ids)
                if m > n:
                    best, n = e, m
            if best is not None and n >= self.min_match:
                self._entries.remove(best)
                self.hits += 1
                return best
            self.misses += 1
        return KvSession()

    def put(self, kv: KvSession) -> None:
        """Keep ``kv`` as the most recently used; the least recently used go beyond the bounds."""
        if kv.decode is None:
            return
        with self._lock:
            self._entries.append(kv)
            out = []
            while self._entries and (len(self._entries) > self.max_entries or self.tokens > self.max_tokens):
                out.append(self._entries.pop(0))
        for e in out:
            e.close()

    def clear(self) -> None:
        with self._lock:
            out, self._entries = self._entries, []
        for e in out:
            e.close()
