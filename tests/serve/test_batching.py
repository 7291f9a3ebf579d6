"""The server under concurrency: 16 clients batched together, a client leaving mid-stream frees its slot,
a full queue answers 429, and /health turns 503 when the model is degraded."""

from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from edgeq.sdk import BackgroundServer, Runtime, ServeConfig, Store
from tests.sdk.runtime.faults import WAIT_S, Steps, nan_in_logits, wait_for, wrap_outputs
from tests.serve.conftest import LM, QUIET, client

PROMPTS = ["Python was created", "The license terms", "Guido remains Python's principal author", "a", "Zope",
           "In May 2000, Guido", "Python releases have also been GPL-compatible", "hello"]


def _tokens_generated(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        m = re.search(r'edgeq_generated_tokens_total\{model="tiny-llama"\} ([0-9.e+]+)', r.read().decode())
    assert m is not None
    return float(m.group(1))


def test_sixteen_concurrent_clients_are_batched_and_correct(lm_rt: Runtime) -> None:
    refs = {p: lm_rt.generate(p, max_new_tokens=10).text for p in PROMPTS}
    # a 0.2 s window lets the 16 requests meet in a batch however the threads are scheduled
    with BackgroundServer([lm_rt], ServeConfig(port=0, batch_window_s=0.2)) as s:
        c = client(s.url)

        def ask(i: int) -> str:
            p = PROMPTS[i % len(PROMPTS)]
            if i % 2:
                return "".join(ch.choices[0].text for ch in c.completions.create(
                    model=LM, prompt=p, max_tokens=10, stream=True) if ch.choices)
            return c.completions.create(model=LM, prompt=p, max_tokens=10).choices[0].text

        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(ask, range(16)))
        b = s.server.models[LM].batcher
        assert got == [refs[PROMPTS[i % len(PROMPTS)]] for i in range(16)]  # left-padded rows = alone
        assert b.batches < 16, b.batches  # requests really shared batches
        assert b.max_batch == 8 and b.active == 0 and b.waiting == 0


LONG = 300
#: the tests below hold every decode step after this one until the client's cancellation arrives, so a
#: request cannot end on its own before its client leaves, however fast the machine decodes
HOLD = 20


@pytest.fixture(scope="module")
def long_prompt(lm_rt: Runtime) -> str:
    """A prompt the model runs for LONG tokens when nobody stops it: an early end can only be a cancellation.
    Its first HOLD steps stream more than two pieces of text (what a streaming client reads before leaving)."""
    assert lm_rt.generate("Python was created", max_new_tokens=LONG).finish_reason == "length"
    assert len(list(lm_rt.stream("Python was created", max_new_tokens=HOLD))) > 2
    return "Python was created"


def test_client_leaving_mid_stream_frees_its_slot(lm_rt: Runtime, long_prompt: str) -> None:
    with Steps(lm_rt, hold_after=HOLD) as steps, BackgroundServer([lm_rt], ServeConfig(port=0)) as s:
        b = s.server.models[LM].batcher
        before = _tokens_generated(s.url)
        stream = client(s.url).completions.create(model=LM, prompt=long_prompt, max_tokens=LONG, stream=True)
        it = iter(stream)
        next(it), next(it)
        assert b.active == 1
        stream.close()  # the client disconnects
        assert wait_for(lambda: b.active == 0), b.active
        generated = _tokens_generated(s.url) - before
        assert 2 <= generated < LONG, generated  # its row stopped decoding
        assert steps.at_cancel is not None and steps.n <= steps.at_cancel + 1, (steps.n, steps.at_cancel)
        # and the slot serves the next client
        assert client(s.url).completions.create(model=LM, prompt="a", max_tokens=3).choices[0].text is not None


def test_non_streamed_client_leaving_frees_its_slot(lm_rt: Runtime, long_prompt: str) -> None:
    # decoding holds at step 4 until a cancellation: the client's 0.3 s timeout always comes first
    with Steps(lm_rt, hold_after=3) as steps, BackgroundServer([lm_rt], ServeConfig(port=0)) as s:
        b = s.server.models[LM].batcher
        before = _tokens_generated(s.url)
        with pytest.raises(openai.APITimeoutError):  # the client gives up and closes its connection
            client(s.url, timeout=0.3).completions.create(model=LM, prompt=long_prompt, max_tokens=LONG)
        assert steps.cancelled.wait(WAIT_S) and steps.at_cancel is not None  # the server cancelled the row
        assert wait_for(lambda: b.active == 0 and b.waiting == 0), (b.active, b.waiting)
        assert steps.n <= steps.at_cancel + 1 < LONG, (steps.n, steps.at_cancel)  # it stopped at the next step
        assert _tokens_generated(s.url) - before < LONG


def test_full_queue_answers_429_and_recovers(lm_rt: Runtime) -> None:
    with Steps(lm_rt, hold_after=HOLD), BackgroundServer([lm_rt], ServeConfig(port=0, max_batch=1, max_queue=1)) as s:
        b = s.server.models[LM].batcher
        c = client(s.url)
        running = c.completions.create(model=LM, prompt="Python was created", max_tokens=LONG, stream=True)
        it = iter(running)
        next(it)  # row 1 decoding: the only slot
        waiting = threading.Thread(target=lambda: c.completions.create(model=LM, prompt="a", max_tokens=2))
        waiting.start()
        assert wait_for(lambda: b.waiting == 1)
        try:
            c.completions.create(model=LM, prompt="Zope", max_tokens=2)
            raise AssertionError("a full queue must refuse")
        except openai.RateLimitError as exc:
            assert exc.status_code == 429 and exc.code == "queue_full"
            assert exc.response.headers["retry-after"] == "1"
        running.close()
        waiting.join(30)
        assert not waiting.is_alive()
        assert wait_for(lambda: b.active == 0 and b.waiting == 0)
        assert c.completions.create(model=LM, prompt="Zope", max_tokens=2).choices  # served again
        with urllib.request.urlopen(s.url + "/metrics", timeout=30) as r:
            assert 'edgeq_serve_rejected_total{endpoint="completions",model="tiny-llama"} 1.0' in r.read().decode()


def test_health_is_503_while_degraded(lm_bundle: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store", allow_unsigned=True)
    store.install(lm_bundle)  # one version: a breach has nowhere to fall back to
    with Runtime.open(store.root, LM, monitor=QUIET) as rt, BackgroundServer([rt], ServeConfig(port=0)) as s:
        with urllib.request.urlopen(s.url + "/health", timeout=30) as r:
            assert r.status == 200
        assert rt.check_health().ok
        wrap_outputs(rt, nan_in_logits)
        assert not rt.check_health().ok and rt.degraded
        try:
            urllib.request.urlopen(s.url + "/health", timeout=30)
            raise AssertionError("a degraded model must answer 503")
        except urllib.error.HTTPError as e:
            assert e.code == 503
            assert b'"status":"degraded"' in e.read()


def test_batch_size_is_bounded_by_the_engine_profile() -> None:
    from types import SimpleNamespace

    from edgeq.sdk import ContextLimits
    from edgeq.sdk.serve.app import Model

    def model(profile: int | None, asked: int | None) -> int:
        rt = SimpleNamespace(task="text-generation", model="m", context=ContextLimits(max_batch=profile))
        m = Model(rt, ServeConfig(max_batch=asked))
        m.batcher.close()
        return m.max_batch

    assert model(2, None) == 2 and model(2, 8) == 2  # never above what the engine was built for
    assert model(16, 4) == 4 and model(None, None) == 8 and model(None, 3) == 3


def test_a_model_served_twice_is_refused(lm_rt: Runtime) -> None:
    from edgeq.errors import ConfigError
    from edgeq.sdk import create_app

    with pytest.raises(ConfigError, match="listed twice"):
        create_app([lm_rt, lm_rt])
