"""Generation: KV cache equals full recomputation, batch equals single, stop strings, streaming, sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeq.errors import ConfigError
from edgeq.sdk.runtime.decode import GenerationConfig, TextStream, sample
from edgeq.sdk.runtime.runtime import Runtime
from edgeq.sdk.health.monitor import MonitorConfig

QUIET = MonitorConfig(enabled=False)


@pytest.fixture(scope="module")
def rt(lm_bundles: dict[int, Path]) -> Runtime:
    with Runtime.open(lm_bundles[1], monitor=QUIET) as r:
        yield r


def _no_cache_greedy(onnx: Path, prompt: list[int], n: int, info: object) -> list[int]:
    """Reference: re-run the whole sequence each step (no KV cache)."""
    from edgeq.sdk.bundle.graph_io import lm_prefill_feeds
    from edgeq.sdk.bundle.graph_io import session_input_dtypes

    s = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    names = session_input_dtypes(s)
    ids = list(prompt)
    for _ in range(n):
        logits = s.run(["logits"], lm_prefill_feeds(np.array([ids]), names, info))[0]
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_kv_cache_matches_full_recompute(rt: Runtime, tiny_q_dir: Path) -> None:
    h = rt._current
    prompt = h.tokenizer.encode("Python was created in the early")
    res = rt.generate("Python was created in the early", max_new_tokens=12)
    ref = _no_cache_greedy(tiny_q_dir / "model.onnx", prompt, 12, h.info)
    got = res.token_ids + ([] if res.finish_reason == "length" else [next(iter(h.eos_ids))])
    assert got[: len(ref)] == ref[: len(got)]
    assert res.prompt_tokens == len(prompt) and res.version == 1


def test_batch_with_left_padding_equals_single(rt: Runtime) -> None:
    prompts = ["a", "The license terms of the software", "Guido remains Python's principal author"]
    batch = rt.generate(prompts, max_new_tokens=10)
    single = [rt.generate(p, max_new_tokens=10) for p in prompts]
    assert [b.token_ids for b in batch] == [s.token_ids for s in single]
    assert [b.text for b in batch] == [s.text for s in single]


def test_streaming_concatenates_to_the_text(rt: Runtime) -> None:
    stream = rt.generate("In May 2000, Guido", max_new_tokens=20, stream=True)
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text == rt.generate("In May 2000, Guido", max_new_tokens=20).text


def test_a_generation_runs_once(rt: Runtime) -> None:
    """Iterating a streamed generation a second time is refused; it never runs the model again."""
    stream = rt.generate("In May 2000, Guido", max_new_tokens=4, stream=True)
    first = "".join(stream)
    served = rt.requests_served
    with pytest.raises(ConfigError, match="already run"):
        list(stream)
    assert rt.requests_served == served and stream.result.text == first and len(stream.results) == 1


def test_chat_messages_use_the_template(rt: Runtime) -> None:
    msgs = [{"role": "user", "content": "hello"}]
    tok = rt._current.tokenizer
    assert tok.apply_chat_template(msgs) == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    res = rt.generate(msgs, max_new_tokens=5)
    assert res.prompt_tokens == len(tok.encode_chat(msgs))


def test_stop_strings_cut_the_text(rt: Runtime) -> None:
    full = rt.generate("Python was created", max_new_tokens=30)
    assert len(full.text) > 6
    stop = full.text[3:6]
    res = rt.generate("Python was created", max_new_tokens=30, stop=[stop])
    assert res.finish_reason == "stop" and res.text == full.text[: full.text.find(stop)]
    streamed = "".join(rt.generate("Python was created", max_new_tokens=30, stop=[stop], stream=True))
    assert streamed == res.text


def test_text_stream_holds_back_partial_stop() -> None:
    vocab = {1: "ab", 2: "c", 3: "X", 4: "Y", 5: "Z"}
    ts = TextStream(lambda ids: "".join(vocab[i] for i in ids), ("XYZ",))
    out = []
    for t in (1, 2, 3, 4):
        ts.add(t)
        out.append(ts.delta(final=False))
    assert "".join(out) == "abc"  # "XY" is held back: it may start the stop string
    ts.add(5)
    assert ts.stopped and ts.text == "abc" and ts.delta(final=True) == ""


def test_sampling_is_seeded_and_filters() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 50)).astype(np.float32)
    top1 = sample(logits, GenerationConfig(temperature=1.0, top_k=1), np.random.default_rng(1))
    assert (top1 == logits.argmax(-1)).all()
    tiny_p = sample(logits, GenerationConfig(temperature=0.7, top_p=1e-6), np.random.default_rng(1))
    assert (tiny_p == logits.argmax(-1)).all()
    cfg = GenerationConfig(temperature=1.0, top_k=5)
    a = [sample(logits, cfg, np.random.default_rng(7)) for _ in range(2)]
    assert (a[0] == a[1]).all()
    top5 = np.argsort(-logits, -1)[:, :5]
    draws = np.stack([sample(logits, cfg, np.random.default_rng(s)) for s in range(200)])
    assert all(set(draws[:, r]) <= set(top5[r]) for r in range(3))
    assert len(set(draws[:, 0])) > 1


def test_sampled_generation_is_reproducible(rt: Runtime) -> None:
    kw = dict(max_new_tokens=15, temperature=0.9, top_p=0.9, top_k=40, seed=3)
    assert rt.generate("Zope", **kw).token_ids == rt.generate("Zope", **kw).token_ids


def test_bad_configs_are_refused(rt: Runtime) -> None:
    with pytest.raises(ConfigError):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ConfigError):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ConfigError):
        rt.generate(["a", "b"], stream=True)
    with pytest.raises(ConfigError):
        rt.embed("not an encoder")


def test_device_chat_template_matches_transformers(tiny_llama_onnx: Path) -> None:
    from transformers import AutoTokenizer

    from edgeq.sdk.runtime.tokenizer import TOKENIZER_FILES, DeviceTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_llama_onnx)
    dev = DeviceTokenizer({n: (tiny_llama_onnx / n).read_bytes() for n in TOKENIZER_FILES
                           if (tiny_llama_onnx / n).is_file()})
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hi there!"}]
    assert dev.apply_chat_template(msgs) == hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert dev.encode_chat(msgs) == list(hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True))
    text = "Python releases have also been GPL-compatible"
    assert dev.encode(text) == hf(text)["input_ids"]
    assert dev.decode(dev.encode(text)) == hf.decode(hf(text)["input_ids"], skip_special_tokens=True)


# -- the bound decode on ONNX Runtime CPU (IOBinding into host arenas) --------------------------------------
def _greedy_ids(stepper: object, prompts: list[list[int]], n: int) -> list[list[int]]:
    from edgeq.sdk.runtime.decode import generate_ids

    done = np.zeros(len(prompts), bool)
    steps = [t for t, _ in generate_ids(stepper, prompts, GenerationConfig(max_new_tokens=n), pad_id=0, done=done)]
    return np.stack(steps, axis=1).tolist()


def test_cpu_iobinding_decode_equals_the_host_loop(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeq.sdk.runtime.backends.ort_io import OrtBinder

    h = rt._current
    prompts = [h.tokenizer.encode(p) for p in ("Python was created", "a", "Guido remains Python's principal")]
    bound = _greedy_ids(h.stepper, prompts, 16)
    (state,) = h.stepper._free  # the generation ran on a pooled binder + cache
    assert isinstance(state.binder, OrtBinder)
    allocations = [a.allocations for a in state.kv.arenas]
    assert _greedy_ids(h.stepper, prompts, 16) == bound
    assert [a.allocations for a in state.kv.arenas] == allocations  # nothing allocated per step or per generation
    # the same generation through infer() with host arrays, as before the binder existed
    monkeypatch.setattr(h.stepper, "_make_binder", None)
    monkeypatch.setattr(h.stepper, "_free", [])
    assert _greedy_ids(h.stepper, prompts, 16) == bound
    # and through ORT's public IOBinding methods instead of its pybind object
    public = OrtBinder(ort, h.backend._session, device="cpu", device_id=0, logits_name="logits",
                       vocab=h.info.vocab_size, logits_dtype=np.dtype(np.float32), fast_bind=False)
    monkeypatch.setattr(h.stepper, "_make_binder", lambda info: public)
    assert _greedy_ids(h.stepper, prompts, 16) == bound
