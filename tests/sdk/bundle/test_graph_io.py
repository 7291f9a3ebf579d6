"""The LM feed contract in graph_io: a step fed back its own KV cache computes what one pass over the
whole sequence computes, on a real exported graph (tiny-llama: rotary positions, a mask, 2 layers of KV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeq.errors import BundleError, ConfigError
from edgeq.sdk.bundle.graph_io import lm_feeds, past_names, present_indices, session_input_dtypes
from edgeq.sdk.bundle.model_info import ModelInfo


@pytest.fixture(scope="module")
def lm(tiny_llama_onnx: Path) -> tuple[ort.InferenceSession, ModelInfo]:
    sess = ort.InferenceSession(str(tiny_llama_onnx / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess, ModelInfo.from_bytes((tiny_llama_onnx / "edgeq_model.json").read_bytes())


def test_steps_with_the_cache_fed_back_equal_one_pass(lm: tuple[ort.InferenceSession, ModelInfo]) -> None:
    sess, info = lm
    inputs = session_input_dtypes(sess)
    outputs = [o.name for o in sess.get_outputs()]
    present = present_indices(past_names(inputs), outputs)
    ids = np.random.default_rng(0).integers(3, info.vocab_size, size=(2, 12), dtype=np.int64)
    whole = sess.run(["logits"], lm_feeds(ids, inputs, info))[0]
    # a 5-token prefill, then a 3-token chunk, then one token a step: positions and mask must continue
    # from the cache's length, and each past input must get the present output of the same layer
    out = sess.run(None, lm_feeds(ids[:, :5], inputs, info))
    got = [out[outputs.index("logits")]]
    for a, b in ((5, 8), (8, 9), (9, 10), (10, 11), (11, 12)):
        out = sess.run(None, lm_feeds(ids[:, a:b], inputs, info, [out[i] for i in present]))
        got.append(out[outputs.index("logits")])
    np.testing.assert_allclose(np.concatenate(got, axis=1), whole, atol=1e-4, rtol=1e-4)


def test_given_mask_and_positions_are_fed_as_given(lm: tuple[ort.InferenceSession, ModelInfo]) -> None:
    sess, info = lm
    inputs = session_input_dtypes(sess)
    mask, pos = np.array([[0, 1, 1]]), np.array([[0, 0, 1]])
    feeds = lm_feeds(np.array([[0, 7, 8]]), inputs, info, mask=mask, positions=pos)
    assert feeds["attention_mask"] is mask and feeds["position_ids"] is pos
    assert {n: a.shape for n, a in feeds.items() if n.startswith("past_key_values.")} == {
        n: (1, info.num_key_value_heads, 0, info.head_dim) for n in past_names(inputs)}


def test_a_cache_that_does_not_fit_the_graph_is_refused(lm: tuple[ort.InferenceSession, ModelInfo]) -> None:
    sess, info = lm
    inputs = session_input_dtypes(sess)
    with pytest.raises(ConfigError, match="KV-cache arrays"):
        lm_feeds(np.array([[5]]), inputs, info, [np.zeros((1, 2, 3, 32), np.float32)])
    with pytest.raises(BundleError, match="without its present output"):
        present_indices(past_names(inputs), ["logits"])
