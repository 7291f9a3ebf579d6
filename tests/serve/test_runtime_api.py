"""The runtime's request API under the server: typed results and status, the return contract, config=
conflicts, the context check, deadlines, asyncio with cancellation, and the metrics bind address."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edgeq.errors import ConfigError, ContextLengthError, DeadlineExceededError, EdgeqError
from edgeq.sdk import ContextLimits, Generation, GenerationConfig, GenerationResult, Runtime, RuntimeStatus
from edgeq.sdk.bundle.model_info import ModelInfo
from edgeq.sdk.runtime.context import engine_limits, fit_prompt
from tests.sdk.runtime.faults import WAIT_S, Steps
from tests.serve.conftest import QUIET


# -- the return contract ------------------------------------------------------------------------------
def test_one_return_shape_per_call(lm_rt: Runtime) -> None:
    one = lm_rt.generate("Python was created", max_new_tokens=6)
    assert isinstance(one, GenerationResult) and one.total_s >= one.prefill_s > 0 and one.truncated_tokens == 0
    many = lm_rt.generate(["Python was created", "a"], max_new_tokens=6)
    assert isinstance(many, list) and [type(r) for r in many] == [GenerationResult] * 2
    assert many[0].token_ids == one.token_ids
    ids = lm_rt.encode_prompt("Python was created")
    assert lm_rt.generate(ids, max_new_tokens=6).token_ids == one.token_ids  # token ids are one prompt too
    stream = lm_rt.stream("Python was created", max_new_tokens=6)
    assert isinstance(stream, Generation) and "".join(stream) == one.text == stream.result.text
    with pytest.raises(ConfigError):
        lm_rt.stream(["a", "b"])


def test_config_and_conflicting_keywords_are_refused(lm_rt: Runtime) -> None:
    cfg = GenerationConfig(max_new_tokens=5, temperature=0.0)
    with pytest.raises(ConfigError, match="max_new_tokens=9"):
        lm_rt.generate("Zope", max_new_tokens=9, config=cfg)
    with pytest.raises(ConfigError, match="temperature"):
        lm_rt.generate("Zope", temperature=0.7, config=cfg)
    assert len(lm_rt.generate("Zope", max_new_tokens=5, config=cfg).token_ids) <= 5  # agreeing is fine


def test_status_is_typed_and_serialises(lm_rt: Runtime) -> None:
    lm_rt.check_health()
    st = lm_rt.status()
    assert isinstance(st, RuntimeStatus) and st.ok and st.version == 1 and st.last_canary.ok
    assert st.context == lm_rt.context and st.context.max_context == 512
    d = json.loads(json.dumps(st.to_dict()))
    assert d["last_canary"]["ok"] is True and isinstance(d["last_canary"]["breaches"], list)
    assert d["context"]["max_context"] == 512 and d["model"] == "tiny-llama"


def test_metrics_bind_to_the_host_asked_for(lm_bundle: Path) -> None:
    with Runtime.open(lm_bundle, monitor=QUIET, metrics_port=0, metrics_host="127.0.0.2") as rt:
        assert rt.metrics_host == "127.0.0.2"
        socket.create_connection(("127.0.0.2", rt.metrics_port), timeout=5).close()
        with pytest.raises(OSError):  # not on the default loopback address
            socket.create_connection(("127.0.0.1", rt.metrics_port), timeout=5).close()


# -- context ---------------------------------------------------------------------------------------------
def test_context_is_checked_before_the_first_step(lm_rt: Runtime) -> None:
    with Steps(lm_rt) as steps:
        with pytest.raises(ContextLengthError) as info:
            lm_rt.generate("Python", max_new_tokens=600)
        assert isinstance(info.value, EdgeqError) and info.value.limit == 512
        long = "Python was created " * 150
        with pytest.raises(ContextLengthError) as info:
            lm_rt.generate(long, max_new_tokens=20)
        assert info.value.prompt_tokens > 492 and info.value.max_new_tokens == 20
        assert steps.n == 0  # refused before the model ran
        res = lm_rt.generate(long, max_new_tokens=20, truncate="left")
        assert steps.n > 0  # the counter sees the steps that do run: the check above can fail
    full = lm_rt.tokenizer.encode(long)
    assert res.prompt_tokens == 512 - 20 and res.truncated_tokens == len(full) - res.prompt_tokens
    assert lm_rt.encode_prompt(long, 20, truncate="left") == full[-res.prompt_tokens:]  # the end is kept


def test_engine_limits_come_from_the_recorded_profile() -> None:
    info = ModelInfo(task="text-generation", max_position_embeddings=8192)
    prof = {"profile_shapes": [{"inputs": [
        {"name": "input_ids", "min": [1, 1], "opt": [1, 128], "max": [2, 1024]},
        {"name": "attention_mask", "min": [1, 1], "opt": [1, 640], "max": [2, 5120]},
        {"name": "past_key_values.0.key", "min": [1, 2, 0, 64], "opt": [1, 2, 512, 64], "max": [2, 2, 4096, 64]}]}]}
    trt = engine_limits(info, SimpleNamespace(build=prof), "tensorrt_rtx")
    assert trt == ContextLimits(max_context=4097, max_prompt=1024, max_batch=2,
                                source="the tensorrt_rtx engine profile's KV-cache maximum")
    assert engine_limits(info, SimpleNamespace(build=prof), "onnx").max_context == 8192  # ORT: any shape
    old = engine_limits(info, SimpleNamespace(build={}), "tensorrt_rtx")  # a bundle from before the record
    assert old.max_context == 8192 and old.max_prompt is None and old.max_batch is None
    assert engine_limits(ModelInfo(task="generic"), SimpleNamespace(build={}), "onnx") == ContextLimits()
    assert fit_prompt(list(range(1500)), 10, trt) == (list(range(1500)), 0)  # chunked: only the context bounds it
    with pytest.raises(ContextLengthError, match="4097-token context"):
        fit_prompt(list(range(4090)), 10, trt)
    assert fit_prompt(list(range(4090)), 10, trt, "left") == (list(range(3, 4090)), 3)


# -- deadlines and asyncio ----------------------------------------------------------------------------------
def test_a_deadline_ends_the_request_with_its_text(lm_rt: Runtime) -> None:
    def late(n: int) -> None:  # the deadline passes during step 3, however fast the machine decodes
        if n == 3:
            time.sleep(0.06)

    with Steps(lm_rt, before=late):
        res = lm_rt.generate("Python was created", max_new_tokens=300, deadline_s=0.05)
    assert res.finish_reason == "deadline" and 0 < len(res.token_ids) <= 3
    assert res.text and lm_rt.tokenizer.decode(res.token_ids).startswith(res.text)  # the text so far
    with pytest.raises(ConfigError):
        lm_rt.generate("x", deadline_s=0)


def test_agenerate_and_astream_match_generate(lm_rt: Runtime) -> None:
    ref = lm_rt.generate("In May 2000, Guido", max_new_tokens=10)

    async def main() -> tuple[Any, str, Any]:
        res = await lm_rt.agenerate("In May 2000, Guido", max_new_tokens=10)
        stream = lm_rt.astream("In May 2000, Guido", max_new_tokens=10)
        text = "".join([p async for p in stream])
        return res, text, stream.result

    res, text, streamed = asyncio.run(main())
    assert res.token_ids == ref.token_ids and text == ref.text == streamed.text


def test_cancelling_the_task_stops_decoding(lm_rt: Runtime) -> None:
    async def main(steps: Steps) -> None:
        loop, third = asyncio.get_running_loop(), asyncio.Event()
        steps.before = lambda n: n == 3 and loop.call_soon_threadsafe(third.set)
        task = asyncio.create_task(lm_rt.agenerate("Python was created", max_new_tokens=300))
        await asyncio.wait_for(third.wait(), WAIT_S)  # decoding, on the path agenerate really takes
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT_S)

    # steps after the 3rd wait for the cancellation: the generation cannot end on its own first
    with Steps(lm_rt, hold_after=3) as steps:
        asyncio.run(main(steps))
        stopped_at = steps.n
        assert lm_rt._current.inflight == 0  # the handle was released when the CancelledError arrived
        assert steps.at_cancel is not None and stopped_at <= steps.at_cancel + 1  # it ended at the next step
        assert lm_rt.generate("a", max_new_tokens=2).finish_reason in ("length", "eos")  # and serves on
    assert stopped_at < 300


def test_leaving_an_astream_early_cancels_it(lm_rt: Runtime) -> None:
    with Steps(lm_rt) as steps:  # the step that yields the first piece of text
        gen = lm_rt.stream("Python was created", max_new_tokens=300)
        pieces = iter(gen)
        first, first_at = next(pieces), steps.n
        gen.cancel()
        assert list(pieces) == [] and gen.result.finish_reason == "cancelled"

    async def main() -> str:
        stream = lm_rt.astream("Python was created", max_new_tokens=300)
        async for piece in stream:
            return piece  # leaves the loop: the request is cancelled when the generator is closed
        raise AssertionError("no text")

    with Steps(lm_rt, hold_after=first_at) as steps:  # no step after it runs before the cancellation
        assert asyncio.run(main()) == first  # asyncio.run returns once the decoding thread has ended
        assert steps.at_cancel is not None and steps.n <= steps.at_cancel + 1 < 300  # ended at the next step
        assert lm_rt._current.inflight == 0


def test_aembed_matches_embed_and_has_a_deadline(enc_rt: Runtime) -> None:
    texts = ["A cat sits on the mat", "The stock market fell"]
    np.testing.assert_allclose(asyncio.run(enc_rt.aembed(texts)), enc_rt.embed(texts), atol=1e-6)
    h = enc_rt._current
    inner, release = h.backend._infer, threading.Event()

    def held(feeds: Any) -> Any:  # the inference cannot finish until the caller has had its answer
        release.wait(WAIT_S)
        return inner(feeds)

    async def late() -> None:
        try:
            with pytest.raises(DeadlineExceededError):
                await enc_rt.aembed(texts, deadline_s=0.05)  # returns at its deadline, not after the inference
        finally:
            release.set()

    h.backend._infer = held
    try:
        asyncio.run(late())
    finally:  # asyncio.run waited for the dropped inference (executor shutdown): restoring is safe
        h.backend._infer = inner
