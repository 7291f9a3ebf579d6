"""Greedy decoding of an edgeq LM ONNX (ONNX Runtime CPU, KV cache) and of a torch causal LM, token for token.

Both run every step's argmax with no stopping rule, so two models of the same weights must give the same ids;
that is the check a third-party loader of an edgeq checkpoint passes.

ONNX Runtime's CPU graph optimizer fuses an INT4 DequantizeLinear -> MatMul into MatMulNBits at accuracy
level 4 by default, which quantizes the activations to int8 per block (measured here: logits off by ~0.07 on
tiny Llama against the same weights in FP32, 4e-6 at level 1). The check compares weights, so it runs at
level 1 (FP32 activations) unless asked otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def onnx_greedy(onnx_path: Path, prompt_ids: list[int], new_tokens: int, accuracy_level: int | None = 1) -> list[int]:
    """``new_tokens`` greedy ids after ``prompt_ids`` from ``onnx_path`` (its ``edgeq_model.json`` beside it).
    ``accuracy_level``: ONNX Runtime's MatMulNBits accuracy level for fused INT4 layers (None: its default, 4)."""
    return onnx_greedy_logits(onnx_path, prompt_ids, new_tokens, accuracy_level)[0]


def onnx_greedy_logits(onnx_path: Path, prompt_ids: list[int], new_tokens: int, accuracy_level: int | None = 1,
                       top_k: int = 0) -> tuple[list[int], list[list[tuple[int, float]]]]:
    """(greedy ids, each step's ``top_k`` (id, logit) pairs, best first): a loader's logits can be compared with
    them along the same sequence, and a differing token judged against the ONNX's own margin there."""
    import onnxruntime as ort

    from edgeq.converters.validate import lm_feeds

    info = json.loads((Path(onnx_path).parent / "edgeq_model.json").read_text())
    opts = ort.SessionOptions()
    if accuracy_level is not None:
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy_level))
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    layers = sum(1 for n in names if n.startswith("present.") and n.endswith(".key"))
    ids, past, out, tops = np.array([prompt_ids], dtype=np.int64), [], [], []
    for _ in range(new_tokens):
        res = dict(zip(names, sess.run(None, lm_feeds(sess, ids, past, info["num_key_value_heads"], info["head_dim"]))))
        logits = res["logits"][0, -1]
        nxt = int(logits.argmax())
        out.append(nxt)
        if top_k:
            best = np.argsort(-logits, kind="stable")[:top_k]
            tops.append([(int(i), float(logits[i])) for i in best])
        past = [(res[f"present.{i}.key"], res[f"present.{i}.value"]) for i in range(layers)]
        ids = np.array([[nxt]], dtype=np.int64)
    return out, tops


def torch_greedy(model: Any, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """The same for a transformers causal LM (full recompute each step: no cache object to get wrong)."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    out = []
    with torch.no_grad():
        for _ in range(new_tokens):
            nxt = int(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float().argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]], device=device)], dim=1)
    return out
