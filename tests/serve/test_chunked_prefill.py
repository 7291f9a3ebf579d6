"""Chunked prefill: a prompt longer than the engine profile's sequence maximum runs in chunks through the KV
cache and gives the one-pass prefill's logits and greedy tokens (tiny-llama on ONNX Runtime CPU)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edgeq.sdk import Runtime
from edgeq.sdk.runtime.context import engine_limits
from edgeq.sdk.runtime.decode import GenerationConfig, generate_ids, left_pad, prefill
from tests.serve.conftest import count_fed_tokens

LONG = "Python was created by Guido van Rossum and first released in 1991. " * 6




def _last_logits(stepper: Any, prompts: list[list[int]], chunk: int | None) -> np.ndarray:
    b = left_pad(prompts, 0)
    with stepper.decode(len(prompts), b.ids.shape[1] + 1) as dec:
        return prefill(dec, b.ids, b.mask, b.pos, chunk).logits()


@pytest.mark.parametrize("bound", [True, False], ids=["iobinding", "host"])
def test_chunks_give_the_one_pass_logits(lm_rt: Runtime, lm_bundle: Path, bound: bool,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    h = lm_rt._current
    if not bound:
        monkeypatch.setattr(h.stepper, "_make_binder", None)
        monkeypatch.setattr(h.stepper, "_free", [])
    tok = h.tokenizer
    # rows of 40, 9 and 1 tokens: left padding fills whole chunks of the short rows
    prompts = [tok.encode(LONG)[:40], tok.encode("Guido remains Python's principal author")[:9], [tok.encode("a")[0]]]
    one = _last_logits(h.stepper, prompts, None)
    runs = count_fed_tokens(monkeypatch)
    for chunk in (1, 7, 16, 39):
        runs.clear()
        got = _last_logits(h.stepper, prompts, chunk)
        if bound:
            assert runs == [min(chunk, 40 - s) for s in range(0, 40, chunk)]
        np.testing.assert_allclose(got, one, rtol=1e-4, atol=1e-4)
        assert (got.argmax(-1) == one.argmax(-1)).all()
    # and the graph itself, run once over the whole prompt without a cache
    from edgeq.sdk.bundle.graph_io import lm_prefill_feeds, session_input_dtypes

    s = ort.InferenceSession(str(lm_bundle / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    ref = s.run(["logits"], lm_prefill_feeds(np.array([prompts[0]]), session_input_dtypes(s), h.info))[0][0, -1]
    np.testing.assert_allclose(_last_logits(h.stepper, prompts[:1], 8)[0], ref, rtol=1e-4, atol=1e-4)


def test_greedy_tokens_equal_the_unchunked_run(lm_rt: Runtime) -> None:
    h = lm_rt._current
    prompts = [h.tokenizer.encode(LONG)[:70], h.tokenizer.encode("In May 2000, Guido")]
    cfg = GenerationConfig(max_new_tokens=12)

    def greedy(chunk: int | None) -> list[list[int]]:
        done = np.zeros(2, bool)
        steps = [t for t, _ in generate_ids(h.stepper, prompts, cfg, pad_id=h.pad_id, done=done, chunk=chunk)]
        return np.stack(steps, axis=1).tolist()

    assert greedy(16) == greedy(5) == greedy(None)


def test_a_prompt_past_the_profile_sequence_maximum_is_prefilled_in_chunks(
        lm_rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """The limits a TensorRT-RTX engine built with a 32-token sequence maximum records (its KV cache takes
    511 tokens): a 100-token prompt used to be refused ("prompts are not chunked"); now it runs in 4 chunks."""
    prof = {"profile_shapes": [{"inputs": [
        {"name": "input_ids", "min": [1, 1], "opt": [1, 16], "max": [4, 32]},
        {"name": "past_key_values.0.key", "min": [1, 4, 0, 16], "opt": [1, 4, 64, 16], "max": [4, 4, 511, 16]}]}]}
    limits = engine_limits(lm_rt._current.info, SimpleNamespace(build=prof), "tensorrt_rtx")
    assert limits.max_prompt == 32 and limits.max_context == 512
    ids = lm_rt.tokenizer.encode(LONG * 2)[:100]
    ref = lm_rt.generate(ids, max_new_tokens=10)  # the onnx entry: no sequence maximum, one pass
    assert ref.cached_tokens == 0
    runs = count_fed_tokens(monkeypatch)
    monkeypatch.setattr(Runtime, "_limits", staticmethod(lambda h: limits))
    assert lm_rt.encode_prompt(ids, 10) == ids  # not refused any more
    res = lm_rt.generate(ids, max_new_tokens=10)
    assert runs[:4] == [32, 32, 32, 4] and set(runs[4:]) <= {1}
    assert res.token_ids == ref.token_ids and res.prompt_tokens == 100
