"""`edgeq serve` through the real `openai` client: chat and completions (streamed and not), embeddings,
models, health, metrics, and every bad input with its status code and OpenAI error shape."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import openai
import pytest

from edgeq.sdk import BackgroundServer, Runtime
from tests.serve.conftest import ENC, LM, client

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is Python?"}]


def _raw(url: str, body: bytes | None = None, method: str = "POST") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _declares_too_much(url: str) -> tuple[int, dict[str, Any]]:
    """A POST whose Content-Length is over the limit, body unsent: the server answers from the header alone.
    (Sending the 2 MiB raced that early answer: the client got a broken pipe when the server was quick.)"""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest("POST", u.path)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(2 << 20))
        conn.endheaders()
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_models_and_health(server: BackgroundServer) -> None:
    models = client(server.url).models.list()
    assert sorted(m.id for m in models.data) == sorted([LM, ENC])
    assert all(m.owned_by == "edgeq" and m.object == "model" for m in models.data)
    code, body = _raw(server.url + "/health", method="GET")
    assert code == 200 and body["status"] == "ok" and body["models"][LM]["version"] == 1


def test_chat_plain_and_streamed_match_in_process_generate(server: BackgroundServer, lm_rt: Runtime) -> None:
    c = client(server.url)
    ref = lm_rt.generate(CHAT, max_new_tokens=12)
    plain = c.chat.completions.create(model=LM, messages=CHAT, max_tokens=12)
    assert plain.object == "chat.completion" and plain.model == LM
    assert plain.choices[0].message.role == "assistant"
    assert plain.choices[0].message.content == ref.text
    assert plain.choices[0].finish_reason == ("length" if ref.finish_reason == "length" else "stop")
    assert plain.usage.prompt_tokens == ref.prompt_tokens == len(lm_rt.encode_prompt(CHAT))
    assert plain.usage.completion_tokens == len(ref.token_ids)

    chunks = list(c.chat.completions.create(model=LM, messages=CHAT, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == ref.text
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 1  # really per step
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens


def test_completions_plain_batched_streamed_and_token_ids(server: BackgroundServer, lm_rt: Runtime) -> None:
    c = client(server.url)
    prompts = ["Python was created", "The license terms of the software"]
    refs = [lm_rt.generate(p, max_new_tokens=8) for p in prompts]
    out = c.completions.create(model=LM, prompt=prompts, max_tokens=8)
    assert out.object == "text_completion"
    assert [ch.index for ch in out.choices] == [0, 1]
    assert [ch.text for ch in out.choices] == [r.text for r in refs]
    ids = lm_rt.encode_prompt(prompts[0])
    assert c.completions.create(model=LM, prompt=ids, max_tokens=8).choices[0].text == refs[0].text
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(model=LM, prompt=prompts[0], max_tokens=8,
                                                                         stream=True) if ch.choices)
    assert streamed == refs[0].text
    assert c.completions.create(model=LM, prompt="Python", max_tokens=300).choices[0].finish_reason in ("length", "stop")


def test_embeddings_match_in_process_embed(server: BackgroundServer, enc_rt: Runtime) -> None:
    c = client(server.url)
    texts = ["A cat sits on the mat", "A kitten is sitting on a rug", "The stock market fell sharply today"]
    ref = enc_rt.embed(texts)
    got = c.embeddings.create(model=ENC, input=texts)  # the client asks for base64 unless told otherwise
    vec = np.array([d.embedding for d in got.data])
    assert vec.shape == (3, 384) and [d.index for d in got.data] == [0, 1, 2]
    np.testing.assert_allclose(vec, ref, atol=1e-6)
    as_float = c.embeddings.create(model=ENC, input=texts[0], encoding_format="float")
    np.testing.assert_allclose(as_float.data[0].embedding, ref[0], atol=1e-6)
    assert got.usage.prompt_tokens == sum(len(e.ids) for e in enc_rt.tokenizer.encode_pair_batch(texts))


@pytest.mark.parametrize(("endpoint", "body", "status", "param", "code"), [
    ("chat/completions", {"model": "nope", "messages": CHAT}, 404, "model", "model_not_found"),
    ("chat/completions", {"model": LM, "messages": CHAT, "max_tokens": 600}, 400, "messages",
     "context_length_exceeded"),
    ("chat/completions", {"model": LM, "messages": [{"role": "user", "content": "word " * 600}], "max_tokens": 4},
     400, "messages", "context_length_exceeded"),
    ("completions", {"model": LM, "prompt": "word " * 600, "max_tokens": 4}, 400, "prompt", "context_length_exceeded"),
    ("chat/completions", {"model": LM, "messages": CHAT, "max_tokens": "many"}, 400, "max_tokens", None),
    ("chat/completions", {"model": LM, "messages": CHAT, "max_tokens": 0}, 400, "max_tokens", None),
    ("chat/completions", {"model": LM, "messages": CHAT, "temperature": 5}, 400, "temperature", None),
    ("chat/completions", {"model": LM, "messages": "hi"}, 400, "messages", None),
    ("chat/completions", {"model": LM}, 400, "messages", None),
    ("chat/completions", {"model": LM, "messages": CHAT, "n": 2}, 400, "n", None),
    ("chat/completions", {"model": LM, "messages": CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
    ("completions", {"model": LM, "prompt": [1.5, 2]}, 400, "prompt", None),
    ("completions", {"model": LM, "prompt": [10 ** 9]}, 400, None, None),
    ("embeddings", {"model": LM, "input": "x"}, 400, "model", None),
    ("chat/completions", {"model": ENC, "messages": CHAT}, 400, "model", None),
    ("embeddings", {"model": ENC, "input": [1, 2, 3]}, 400, "input", None),
    ("embeddings", {"model": ENC, "input": "word " * 600}, 400, "input", "context_length_exceeded"),
    ("embeddings", {"model": ENC, "input": "x", "dimensions": 12}, 400, "dimensions", None),
])
def test_bad_requests_get_openai_errors(server: BackgroundServer, endpoint: str, body: dict[str, Any], status: int,
                                        param: str | None, code: str | None) -> None:
    got, err = _raw(f"{server.url}/v1/{endpoint}", json.dumps(body).encode())
    assert got == status, err
    assert set(err["error"]) == {"message", "type", "param", "code"} and err["error"]["message"]
    assert err["error"]["param"] == param and err["error"]["code"] == code


def test_the_openai_client_sees_typed_errors(server: BackgroundServer) -> None:
    c = client(server.url)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=CHAT)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model=LM, messages=CHAT, max_tokens=600)
    assert info.value.code == "context_length_exceeded"


def test_transport_level_errors(server: BackgroundServer) -> None:
    assert _raw(server.url + "/v1/chat/completions", b"{not json")[0] == 400
    assert _raw(server.url + "/v1/chat/completions", b"[1, 2]")[0] == 400
    code, err = _declares_too_much(server.url + "/v1/chat/completions")
    assert code == 413 and "larger than" in err["error"]["message"]
    assert _raw(server.url + "/v1/models", b"{}")[0] == 405
    code, err = _raw(server.url + "/v1/nothing", method="GET")
    assert code == 404 and err["error"]["type"] == "invalid_request_error"


def test_metrics_endpoint(server: BackgroundServer) -> None:
    client(server.url).completions.create(model=LM, prompt="Python", max_tokens=2)
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    assert 'edgeq_requests_total{kind="generate",model="tiny-llama"}' in text
    assert 'edgeq_requests_total{kind="embed",model="minilm-l6"}' in text
    assert text.count("# TYPE edgeq_requests_total counter") == 1  # two models' registries merged into one family
    assert 'edgeq_serve_active_rows{model="tiny-llama"} 0.0' in text
