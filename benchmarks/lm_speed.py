"""Speed measurement loops shared by bench_speed and ``edgeq bench``-like callers: greedy generation
on a raw ONNX Runtime session, on transformers eager, and on onnxruntime-genai; encoder batches.

Each LM measurement times the prefill (the prompt in one pass) and the decode (one token per step,
KV cache fed back) separately and returns tokens/s for both.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def prompt_ids(model_dir: Path, text_path: Path, n: int) -> np.ndarray:
    from benchmarks import lm_eval

    return lm_eval.eval_ids(model_dir, text_path, n)


def ort_generate(sess: Any, ids: np.ndarray, new_tokens: int, num_kv: int, head_dim: int) -> dict[str, float]:
    """Greedy generation on a raw InferenceSession (the same loop ``edgeq bench`` times)."""
    from edgeq.converters.bench import ort_generate as loop

    return loop(sess, ids, new_tokens, num_kv, head_dim)


def torch_generate(model: Any, ids: np.ndarray, new_tokens: int) -> dict[str, float]:
    """Greedy generation with transformers eager and its KV cache."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(ids)
        t0 = time.perf_counter()
        out = model(input_ids=x, use_cache=True)
        t1 = time.perf_counter()
        past = out.past_key_values
        tok = out.logits[:, -1:].argmax(-1)
        for _ in range(new_tokens - 1):
            out = model(input_ids=tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
        t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "decode_tokens": new_tokens - 1, "prompt_tokens": ids.shape[1]}


def genai_config(model_dir: Path, threads: int, max_length: int) -> dict[str, Any]:
    """An onnxruntime-genai config that maps its names onto the optimum export's I/O names."""
    info = json.loads((model_dir / "edgeq_model.json").read_text())
    cfg = json.loads((model_dir / "config.json").read_text())
    eos = info["eos_token_id"]
    return {
        "model": {
            "bos_token_id": info.get("bos_token_id") or 1, "context_length": info["max_position_embeddings"],
            "eos_token_id": eos, "pad_token_id": eos if isinstance(eos, int) else eos[0],
            "type": cfg["model_type"], "vocab_size": info["vocab_size"],
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": [],
                                    "intra_op_num_threads": threads},
                "filename": "model.onnx", "head_size": info["head_dim"], "hidden_size": cfg["hidden_size"],
                "num_attention_heads": cfg["num_attention_heads"], "num_hidden_layers": info["num_layers"],
                "num_key_value_heads": info["num_key_value_heads"],
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "max_length": max_length, "min_length": max_length, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "early_stopping": False},
    }


def prepare_genai_dir(model_dir: Path, work: Path, threads: int, max_length: int) -> Path:
    """A directory onnxruntime-genai can open: symlinks to the ONNX + tokenizer files and our genai_config.json."""
    work.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        link = work / f.name
        if not link.exists() and f.name != "genai_config.json":
            link.symlink_to(f.resolve())
    (work / "genai_config.json").write_text(json.dumps(genai_config(model_dir, threads, max_length), indent=1))
    return work


def genai_model(genai_dir: Path) -> Any:
    import onnxruntime_genai as og

    return og.Model(str(genai_dir))


def genai_generate(model: Any, ids: np.ndarray, new_tokens: int) -> dict[str, float]:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    total = ids.shape[1] + new_tokens
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(ids[0].astype(np.int32))
    gen.generate_next_token()
    t1 = time.perf_counter()
    n = 0
    while not gen.is_done() and n < new_tokens - 1:
        gen.generate_next_token()
        n += 1
    t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "decode_tokens": n, "prompt_tokens": ids.shape[1],
            "note": "genai's prefill includes sampling the first token"}


def median_run(fn: Any, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Run a generation ``warmup + repeats`` times; median prefill and decode tokens/s over the repeats."""
    for _ in range(warmup):
        fn()
    runs = [fn() for _ in range(repeats)]
    pre = sorted(r["prompt_tokens"] / r["prefill_s"] for r in runs)
    dec = sorted(r["decode_tokens"] / r["decode_s"] for r in runs if r["decode_tokens"])
    return {"prefill_tok_s": pre[len(pre) // 2], "decode_tok_s": dec[len(dec) // 2] if dec else None,
            "decode_spread": (dec[-1] - dec[0]) / dec[len(dec) // 2] if dec else None, "repeats": repeats,
            "prompt_tokens": runs[0]["prompt_tokens"], "decode_tokens": runs[0]["decode_tokens"]}


def decode_bytes_per_token(onnx_path: Path, context: int) -> dict[str, int]:
    """Bytes a decode step must read: every weight initializer once (an embedding table used only by a
    Gather contributes one row), plus the KV cache at ``context`` tokens (float32)."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    consumers: dict[str, set[str]] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, set()).add(n.op_type)
    weights = 0
    for init in m.graph.initializer:
        size = _init_bytes(init)
        ops = consumers.get(init.name, set())
        if ops == {"Gather"} and len(init.dims) == 2:
            size = size // max(init.dims[0], 1)  # one row per token
        weights += size
    info = json.loads((onnx_path.parent / "edgeq_model.json").read_text())
    kv = 2 * info["num_layers"] * info["num_key_value_heads"] * info["head_dim"] * context * 4
    return {"weights": weights, "kv_cache": kv, "total": weights + kv}


def _init_bytes(init: Any) -> int:
    import onnx

    for e in init.external_data:
        if e.key == "length":
            return int(e.value)
    if init.raw_data:
        return len(init.raw_data)
    n = int(np.prod(init.dims)) if init.dims else 1
    bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(init.data_type)
    if bits:
        return (n * bits + 7) // 8
    return n * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
