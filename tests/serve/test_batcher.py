"""The batcher's scheduling on a fake runtime (no model): groups of clients merge instead of taking turns,
a lone client does not wait for company, incompatible sampling settings never share a batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from edgeq.sdk import GenerationConfig, GenerationResult, Request
from edgeq.sdk.serve.batcher import Batcher


class FakeRuntime:
    """Each batch "decodes" for ``step_s`` and ends every row with one token."""

    model = "fake"

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self.sizes: list[int] = []
        self.keys: list[set[Any]] = []

    def generate_requests(self, requests: Sequence[Request], config: GenerationConfig) -> list[GenerationResult]:
        self.sizes.append(len(requests))
        time.sleep(self.step_s)
        out = []
        for q in requests:
            res = GenerationResult(text="x", token_ids=[1], finish_reason="length", prompt_tokens=len(q.prompt))
            q.on_text("x")
            q.on_finish(res)
            out.append(res)
        return out


async def _clients(b: Batcher, n: int, requests: int, stagger_s: float,
                   configs: Sequence[GenerationConfig] = ()) -> None:
    async def client(i: int) -> None:
        await asyncio.sleep(i * stagger_s)
        for _ in range(requests):
            cfg = configs[i % len(configs)] if configs else GenerationConfig()
            job = b.submit([1, 2, 3], cfg, max_new_tokens=1)
            while await job.channel.next() is not None:
                pass
            await asyncio.sleep(0.002)  # the client parses the answer and sends its next request

    await asyncio.gather(*(client(i) for i in range(n)))


def test_staggered_clients_merge_into_one_batch() -> None:
    rt = FakeRuntime(step_s=0.03)
    b = Batcher(rt, max_batch=8, max_queue=64, window_s=0.002, merge_window_s=0.05)
    try:
        # the 4 clients start 10 ms apart: the first batches hold 1 and then 3 of them
        asyncio.run(_clients(b, 4, requests=6, stagger_s=0.01))
    finally:
        b.close()
    assert sum(rt.sizes) == 24 and b.active == 0
    # merged after the first batch, not alternating 1/3 (client 0, alone first, finishes one batch early)
    assert rt.sizes[0] < 4 and set(rt.sizes[1:-1]) == {4}, rt.sizes


def test_a_lone_client_does_not_wait_for_company() -> None:
    rt = FakeRuntime(step_s=0.0)
    b = Batcher(rt, max_batch=8, max_queue=64, window_s=0.0, merge_window_s=0.5)
    try:
        t0 = time.perf_counter()
        asyncio.run(_clients(b, 1, requests=10, stagger_s=0.0))
        took = time.perf_counter() - t0
    finally:
        b.close()
    assert rt.sizes == [1] * 10
    assert took < 0.4, took  # ten requests, none waited the 0.5 s merge window


def test_different_sampling_never_shares_a_batch() -> None:
    rt = FakeRuntime(step_s=0.02)
    b = Batcher(rt, max_batch=8, max_queue=64, window_s=0.01)
    seen: list[set[Any]] = []
    inner = rt.generate_requests

    def record(requests: Sequence[Request], config: GenerationConfig) -> list[GenerationResult]:
        seen.append({config.temperature})
        return inner(requests, config)

    rt.generate_requests = record  # type: ignore[method-assign]
    configs = [GenerationConfig(), GenerationConfig(temperature=0.7, seed=1)]
    try:
        asyncio.run(_clients(b, 4, requests=3, stagger_s=0.0, configs=configs))
    finally:
        b.close()
    assert sum(rt.sizes) == 12 and max(rt.sizes) == 2  # the two greedy and the two sampled clients apart
