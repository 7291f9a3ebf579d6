"""Measurement helpers for the benchmarks (not used by the runtime itself; no timing asserts anywhere).

- ``infer_overhead``: per-call time of ``Runtime.infer`` vs a raw ``onnxruntime.InferenceSession.run``
  on the same ONNX file, same feeds, same threads, interleaved to share machine noise.
- ``decode_speed``: prefill and decode tokens/s of ``Runtime.generate`` (greedy, fixed new tokens).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def _median_call(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def infer_overhead(store: str | Path, model: str | None = None, *, feeds: dict[str, np.ndarray] | None = None,
                   threads: int = 1, calls: int = 2000, rounds: int = 5, monitor: bool = False) -> dict[str, Any]:
    """Median seconds per call of Runtime.infer and raw session.run; overhead = runtime/raw - 1."""
    import onnxruntime as ort

    from edgeq.sdk.backends import BackendOptions
    from edgeq.sdk.canary import lm_prefill_feeds
    from edgeq.sdk.monitor import MonitorConfig
    from edgeq.sdk.runtime import Runtime

    with Runtime.open(store, model, backend=BackendOptions(intra_op_threads=threads),
                      monitor=MonitorConfig(enabled=monitor)) as rt:
        h = rt._current
        if feeds is None:
            feeds = lm_prefill_feeds(np.arange(3, 19, dtype=np.int64)[None], h.backend.input_dtypes, h.info)
        onnx = next(p for p in (h.files.path(f.path) for f in h.files.manifest.files_with_role("onnx")))
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        raw = ort.InferenceSession(str(onnx), so, providers=["CPUExecutionProvider"])
        for _ in range(50):
            raw.run(None, feeds)
            rt.infer(feeds)
        rt_t, raw_t = [], []
        for _ in range(rounds):  # interleave so both see the same machine noise
            raw_t.append(_median_call(lambda: raw.run(None, feeds), calls // rounds))
            rt_t.append(_median_call(lambda: rt.infer(feeds), calls // rounds))
    r, w = statistics.median(rt_t), statistics.median(raw_t)
    return {"runtime_s": r, "raw_s": w, "overhead": r / w - 1.0, "calls": calls, "threads": threads,
            "monitor": monitor}


def decode_speed(store: str | Path, model: str | None = None, *, prompt: str = "Tell me about the history of Python.",
                 new_tokens: int = 64, threads: int = 2, repeats: int = 3) -> dict[str, Any]:
    """Best-of-``repeats`` prefill time and decode tokens/s for greedy generation of ``new_tokens``.

    The EOS is not honoured here only in the sense that runs ending early are reported with their count.
    """
    from edgeq.sdk.backends import BackendOptions
    from edgeq.sdk.monitor import MonitorConfig
    from edgeq.sdk.runtime import Runtime

    with Runtime.open(store, model, backend=BackendOptions(intra_op_threads=threads),
                      monitor=MonitorConfig(enabled=False)) as rt:
        rt.generate(prompt, max_new_tokens=4)
        results = [rt.generate(prompt, max_new_tokens=new_tokens) for _ in range(repeats)]
        best = max(results, key=lambda r: r.decode_tokens_per_s)
        return {"decode_tok_s": best.decode_tokens_per_s, "prefill_s": best.prefill_s,
                "prompt_tokens": best.prompt_tokens, "new_tokens": len(best.token_ids),
                "prefill_tok_s": best.prompt_tokens / best.prefill_s if best.prefill_s else 0.0,
                "threads": threads, "backend": rt.backend_name, "version": rt.version}


def raw_ort_decode(onnx_path: str | Path, prompt_ids: list[int], info: Any, *, new_tokens: int = 64,
                   threads: int = 2, repeats: int = 3) -> dict[str, Any]:
    """Reference: a bare ONNX Runtime greedy loop (numpy feeds, present → past, as optimum does), no runtime.

    Run next to ``decode_speed`` in the same conditions to separate the runtime's cost from the machine's.
    """
    import onnxruntime as ort

    from edgeq.sdk.canary import lm_prefill_feeds
    from edgeq.sdk.dtypes import session_input_dtypes

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    inputs = session_input_dtypes(s)
    names = list(inputs)
    outs = [o.name for o in s.get_outputs()]
    past_names = [n for n in names if n.startswith("past_key_values.")]
    present_idx = [outs.index("present." + n[len("past_key_values."):]) for n in past_names]
    best = 0.0
    for _ in range(repeats):
        ids = np.array([prompt_ids], np.int64)
        out = s.run(None, lm_prefill_feeds(ids, inputs, info))
        n = ids.shape[1]
        t0 = time.perf_counter()
        for step in range(new_tokens - 1):
            tok = out[0][:, -1].argmax(-1)[:, None]
            feeds = {"input_ids": tok, "attention_mask": np.ones((1, n + step + 1), np.int64),
                     "position_ids": np.array([[n + step]], np.int64)}
            feeds.update({p: out[i] for p, i in zip(past_names, present_idx)})
            out = s.run(None, feeds)
        best = max(best, (new_tokens - 1) / (time.perf_counter() - t0))
    return {"decode_tok_s": best, "threads": threads, "new_tokens": new_tokens}


def compare_decode(store: str | Path, model: str | None = None, *, threads: int = 2, new_tokens: int = 64,
                   prompt: str = "Tell me about the history of Python.") -> dict[str, Any]:
    """``decode_speed`` of the runtime and ``raw_ort_decode`` on the same ONNX, back to back.

    The runtime run ignores EOS only if the model does not emit it; the raw loop always runs ``new_tokens``.
    """
    from edgeq.sdk.monitor import MonitorConfig
    from edgeq.sdk.runtime import Runtime

    with Runtime.open(store, model, monitor=MonitorConfig(enabled=False)) as rt:
        h = rt._current
        ids = h.tokenizer.encode(prompt)
        onnx = h.files.path(h.files.manifest.files_with_role("onnx")[0].path)
        info = h.info
    ours = decode_speed(store, model, prompt=prompt, new_tokens=new_tokens, threads=threads)
    raw = raw_ort_decode(onnx, ids, info, new_tokens=new_tokens, threads=threads)
    return {"runtime": ours, "raw_ort": raw, "ratio": ours["decode_tok_s"] / raw["decode_tok_s"]}
