"""The candidates bench_gpu.py times, one greedy-generation loop each, all on the same token ids.

Each loop returns {prefill_s, decode_s, decode_tokens (per row), prompt_tokens, batch}: the prefill is the
prompt in one pass plus the first token; the decode is every later token. Device work is finished when a
loop reads the tokens on the host, so host clocks time it.

- ``edgeq_generate``: edgeq's runtime decode (``LmStepper`` of a ``Runtime`` opened on the bundle, driven by
  ``generate_ids`` with token ids, as ``Runtime.generate`` drives it after tokenizing).
- ``raw_iobinding_generate``: the plain ONNX Runtime IOBinding loop a user writes: past/present as device
  OrtValues that ONNX Runtime allocates (the presents become the next pasts, no copy), logits bound to the
  host, argmax in numpy.
- ``genai_generate``: onnxruntime-genai on the same file (CUDA provider, greedy).
- ``torch_generate``: transformers eager attention in BF16 with its KV cache.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def edgeq_generate(stepper: Any, ids: np.ndarray, new_tokens: int, on_logits: Any = None) -> dict[str, float]:
    from edgeq.sdk.runtime.decode import GenerationConfig, generate_ids

    rows = ids.shape[0]
    done = np.zeros(rows, bool)
    cfg = GenerationConfig(max_new_tokens=new_tokens)
    t0 = time.perf_counter()
    it = generate_ids(stepper, ids.tolist(), cfg, pad_id=0, done=done, on_logits=on_logits)
    next(it)
    t1 = time.perf_counter()
    n = sum(1 for _ in it)
    t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "decode_tokens": n, "prompt_tokens": ids.shape[1], "batch": rows}


def raw_iobinding_generate(ort: Any, sess: Any, ids: np.ndarray, new_tokens: int, num_kv: int, head_dim: int,
                           kv_dtype: Any, device: str = "cuda") -> dict[str, float]:
    rows, n_prompt = ids.shape
    past_names = [i.name for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    present_names = ["present." + n[len("past_key_values."):] for n in past_names]
    inputs = {i.name for i in sess.get_inputs()}
    io = sess.io_binding()
    empty = ort.OrtValue.ortvalue_from_shape_and_type([rows, num_kv, 0, head_dim], kv_dtype, device, 0)

    def step(tok: np.ndarray, mask: np.ndarray, pos: np.ndarray, pasts: list[Any]) -> tuple[np.ndarray, list[Any]]:
        io.bind_cpu_input("input_ids", tok)
        if "attention_mask" in inputs:
            io.bind_cpu_input("attention_mask", mask)
        if "position_ids" in inputs:
            io.bind_cpu_input("position_ids", pos)
        for name, value in zip(past_names, pasts):
            io.bind_ortvalue_input(name, value)
        io.bind_output("logits", "cpu")
        for name in present_names:
            io.bind_output(name, device)
        sess.run_with_iobinding(io)
        outs = io.get_outputs()
        return outs[0].numpy()[:, -1, :].argmax(-1)[:, None].astype(np.int64), outs[1:]

    mask = np.ones((rows, n_prompt), np.int64)
    pos = np.tile(np.arange(n_prompt, dtype=np.int64), (rows, 1))
    t0 = time.perf_counter()
    tok, pasts = step(ids.astype(np.int64), mask, pos, [empty] * len(past_names))
    t1 = time.perf_counter()
    last = pos[:, -1:]
    for i in range(new_tokens - 1):
        mask = np.ones((rows, n_prompt + i + 1), np.int64)
        last = last + 1
        tok, pasts = step(tok, mask, last, pasts)
    t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "decode_tokens": new_tokens - 1, "prompt_tokens": n_prompt,
            "batch": rows}


def genai_config(model_dir: Path, max_length: int, provider: str = "cuda") -> dict[str, Any]:
    """genai_config.json for an edgeq export (optimum's I/O names), on ``provider``."""
    info = json.loads((model_dir / "edgeq_model.json").read_text())
    cfg = json.loads((model_dir / "config.json").read_text())
    eos = info["eos_token_id"]
    opts = [] if provider == "cpu" else [{provider: {}}]
    return {
        "model": {
            "bos_token_id": info.get("bos_token_id") or 1, "context_length": max_length,
            "eos_token_id": eos, "pad_token_id": eos if isinstance(eos, int) else eos[0],
            "type": cfg.get("model_type", "llama"), "vocab_size": info["vocab_size"],
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": opts},
                "filename": "model.onnx", "head_size": info["head_dim"], "hidden_size": cfg["hidden_size"],
                "num_attention_heads": cfg["num_attention_heads"], "num_hidden_layers": info["num_layers"],
                "num_key_value_heads": info["num_key_value_heads"],
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "max_length": max_length, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "early_stopping": False},
    }


def genai_model(model_dir: Path, max_length: int, provider: str = "cuda") -> Any:
    import onnxruntime_genai as og

    (model_dir / "genai_config.json").write_text(json.dumps(genai_config(model_dir, max_length, provider), indent=1))
    return og.Model(str(model_dir))


def genai_generate(model: Any, ids: np.ndarray, new_tokens: int) -> dict[str, float]:
    import onnxruntime_genai as og

    rows, n_prompt = ids.shape
    params = og.GeneratorParams(model)
    total = n_prompt + new_tokens
    params.set_search_options(max_length=total, min_length=total, do_sample=False, batch_size=rows)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(ids.astype(np.int32))
    gen.generate_next_token()
    gen.get_next_tokens()
    t1 = time.perf_counter()
    n = 0
    while not gen.is_done() and n < new_tokens - 1:
        gen.generate_next_token()
        gen.get_next_tokens()  # what a caller streaming tokens reads each step
        n += 1
    t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "decode_tokens": n, "prompt_tokens": n_prompt, "batch": rows}


def torch_model(config_json: Path, device: str = "cuda") -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(config_json.parent)
    torch.manual_seed(0)
    with torch.device(device):  # random init where it runs: a 1B model inits in seconds on the GPU
        try:  # transformers 5 names it dtype; 4.x took torch_dtype
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="eager")
        except TypeError:
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16, attn_implementation="eager")
    return model.to(device).eval()


def torch_generate(model: Any, ids: np.ndarray, new_tokens: int) -> dict[str, float]:
    import torch

    rows, n_prompt = ids.shape
    with torch.inference_mode():
        x = torch.from_numpy(ids.astype(np.int64)).to(model.device)
        t0 = time.perf_counter()
        out = model(input_ids=x, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        tok.cpu()
        t1 = time.perf_counter()
        past = out.past_key_values
        for _ in range(new_tokens - 1):
            out = model(input_ids=tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
            tok.cpu()  # the token reaches the host each step, as in every other loop
        t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "decode_tokens": new_tokens - 1, "prompt_tokens": n_prompt,
            "batch": rows}


def rates(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Median prefill tokens/s (prompt tokens of every row) and decode tokens/s (every row), with the spread."""
    pre = sorted(r["batch"] * r["prompt_tokens"] / r["prefill_s"] for r in runs)
    dec = sorted(r["batch"] * r["decode_tokens"] / r["decode_s"] for r in runs if r["decode_tokens"] and r["decode_s"] > 0)
    mid = len(pre) // 2
    out: dict[str, Any] = {"prefill_tok_s": pre[mid], "repeats": len(runs), "batch": runs[0]["batch"],
                           "prompt_tokens": runs[0]["prompt_tokens"], "decode_tokens": runs[0]["decode_tokens"]}
    if dec:
        out["decode_tok_s"] = dec[len(dec) // 2]
        out["decode_spread"] = (dec[-1] - dec[0]) / dec[len(dec) // 2]
        out["decode_ms_per_step"] = 1e3 * runs[0]["batch"] / dec[len(dec) // 2]
    return out
