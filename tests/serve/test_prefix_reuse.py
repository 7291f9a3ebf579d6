"""KV prefix reuse: a chat session's next turn, and the server's next request of a conversation, prefill only
their new tokens (counted where they reach ONNX Runtime) and give the full re-prefill's greedy output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeq.sdk import ContextLimits, KvSession, PrefixCache, Runtime
from edgeq.sdk.runtime.generation import Request
from edgeq.sdk.runtime.kvreuse import common_prefix
from tests.serve.conftest import LM, QUIET, client, count_fed_tokens

SYSTEM = "You are a terse assistant that answers questions about Python."
TURNS = ("Who created Python?", "When was it first released?", "What does GIL stand for?")


@pytest.fixture()
def fed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Tokens per row of every run fed to ONNX Runtime, bound or through infer (in order)."""
    return count_fed_tokens(monkeypatch)


def _host_only(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Drive the decode through infer() with host arrays; returns the runs' token counts."""
    h = rt._current
    monkeypatch.setattr(h.stepper, "_make_binder", None)
    monkeypatch.setattr(h.stepper, "_free", [])
    seen: list[int] = []
    inner = h.backend._infer

    def counted(feeds: Any) -> Any:
        seen.append(int(feeds["input_ids"].shape[1]))
        return inner(feeds)

    monkeypatch.setattr(h.backend, "_infer", counted)
    return seen


@pytest.mark.parametrize("bound", [True, False], ids=["iobinding", "host"])
def test_each_turn_prefills_only_its_new_tokens(lm_rt: Runtime, fed: list[int], bound: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    runs = fed if bound else _host_only(lm_rt, monkeypatch)
    with lm_rt.chat_session(SYSTEM, max_new_tokens=12) as chat:
        last_prompt: list[int] = []
        for i, text in enumerate(TURNS):
            before = list(chat.history)
            cached_ids = list(chat.kv.ids)
            runs.clear()
            res = chat.send(text)
            prompt = lm_rt.encode_prompt(before + [{"role": "user", "content": text}])
            assert res.prompt_tokens == len(prompt)
            if i == 0:
                assert res.cached_tokens == 0 and runs[0] == len(prompt)
            else:
                # the cache held the last prompt and the reply's tokens; the reply's text may encode to other
                # tokens (a random model's bytes do), so the cache is kept up to where they first differ
                assert res.cached_tokens == common_prefix(cached_ids, prompt) >= len(last_prompt)
                assert runs[0] == len(prompt) - res.cached_tokens < len(prompt) // 2
            last_prompt = prompt
            assert set(runs[1:]) <= {1} and len(runs) == len(res.token_ids) + (res.finish_reason != "length")
            # the full re-prefill's greedy output
            assert lm_rt.generate(prompt, max_new_tokens=12).token_ids == res.token_ids
            assert chat.history[-1] == {"role": "assistant", "content": res.text}


def test_a_cache_is_cut_where_the_prompt_differs_and_grows_for_a_longer_one(lm_rt: Runtime, fed: list[int]) -> None:
    tok = lm_rt.tokenizer
    a = tok.encode("Python was created by Guido van Rossum and first released in 1991 as a successor")
    b = a[:10] + tok.encode(" to the ABC language, which was itself inspired by SETL and other languages of the time")
    with KvSession() as kv:
        lm_rt.generate_requests([Request(a, 8, kv=kv)])
        assert len(kv.ids) == len(a) + 7
        fed.clear()
        (res,) = lm_rt.generate_requests([Request(b, 8, kv=kv)])
        assert res.cached_tokens == 10 and fed[0] == len(b) - 10
        assert res.token_ids == lm_rt.generate(b, max_new_tokens=8).token_ids
        fed.clear()
        (again,) = lm_rt.generate_requests([Request(b, 8, kv=kv)])  # the same prompt: its last token runs
        assert again.cached_tokens == len(b) - 1 and fed[0] == 1 and again.token_ids == res.token_ids


def test_history_past_the_context_is_dropped_and_prefilled_again(lm_rt: Runtime, fed: list[int],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Runtime, "_limits", staticmethod(lambda h: ContextLimits(max_context=110, source="test")))
    with lm_rt.chat_session(SYSTEM, max_new_tokens=12) as chat:
        system_ids = lm_rt.tokenizer.encode_chat([{"role": "system", "content": SYSTEM}])
        results = [chat.send(t) for t in TURNS]
        assert chat.dropped_turns > 0 and chat.history[0]["role"] == "system"
        last = results[-1]
        prompt = lm_rt.encode_prompt(chat.history[:-1], 12)
        assert last.prompt_tokens == len(prompt) <= 110 - 12
        assert last.cached_tokens < len(system_ids) + 8  # only (about) the system prompt still matched
        assert lm_rt.generate(prompt, max_new_tokens=12).token_ids == last.token_ids


def test_a_version_switch_starts_the_cache_again(lm_bundle: Path, fed: list[int]) -> None:
    with Runtime.open(lm_bundle, monitor=QUIET) as rt, rt.chat_session(SYSTEM, max_new_tokens=8) as chat:
        chat.send(TURNS[0])
        rt._swap(rt._load(rt.catalog.active()))  # what a health fallback does: another handle serves
        fed.clear()
        res = chat.send(TURNS[1])
        assert res.cached_tokens == 0 and fed[0] == res.prompt_tokens
        assert chat.kv.stepper is rt._current.stepper
        assert chat.send(TURNS[2]).cached_tokens > 0  # and it is kept again on the new one


def test_prefix_cache_bounds_and_matching() -> None:
    cache = PrefixCache(max_entries=2, max_tokens=100, min_match=3)

    class Dec:
        closed = False

        def close(self) -> None:
            self.closed = True

    def kept(ids: list[int], cap: int) -> KvSession:
        kv = KvSession()
        kv.decode, kv.ids, kv.capacity = Dec(), list(ids), cap  # type: ignore[assignment]
        return kv

    a, b, c = kept([1, 2, 3, 4], 40), kept([1, 2, 9], 40), kept([7, 7, 7], 40)
    for kv in (a, b, c):
        cache.put(kv)
    assert len(cache) == 2 and a.decode is None  # the least recently used went (and was closed)
    assert cache.take([1, 2, 9, 5]) is b and len(cache) == 1
    assert cache.take([1, 2]).decode is None  # too short a match: a new cache; c stays kept
    cache.put(kept([5] * 3, 90))  # 40 + 90 tokens > 100: c goes
    assert len(cache) == 1 and c.decode is None and cache.tokens == 90


def test_the_server_prefills_only_the_new_turn(server: Any, lm_rt: Runtime, fed: list[int]) -> None:
    c = client(server.url)
    msgs: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    for i, text in enumerate(TURNS[:2]):
        msgs.append({"role": "user", "content": text})
        fed.clear()
        r = c.chat.completions.create(model=LM, messages=msgs, max_tokens=10)
        cached = r.usage.prompt_tokens_details.cached_tokens
        assert fed[0] == r.usage.prompt_tokens - cached
        if i:
            assert cached > r.usage.prompt_tokens // 2
        ref = lm_rt.generate(msgs, max_new_tokens=10)  # in-process, no cache: the full re-prefill
        assert r.choices[0].message.content == ref.text
        msgs.append({"role": "assistant", "content": r.choices[0].message.content})
    stream = c.chat.completions.create(model=LM, messages=msgs + [{"role": "user", "content": TURNS[2]}],
                                       max_tokens=10, stream=True, stream_options={"include_usage": True})
    usage = [ch.usage for ch in stream if ch.usage is not None][0]
    assert usage.prompt_tokens_details.cached_tokens > 0
