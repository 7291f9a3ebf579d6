"""``edgeq bench``: measure a model's throughput on this machine and turn it into cost per inference.

CPI (the seed documents' cost per inference) = hourly cost × time / requests: with a measured time per
request at one stream, ``cpi = hourly_price × seconds_per_request / 3600``. Prices are inputs (what the
user pays per hour for the machine); the time is measured here, never assumed.

A request is, for a causal LM, a prompt of ``prompt_tokens`` and ``new_tokens`` generated tokens; for an
encoder, one batch of ``batch`` sentences (cost is also given per sentence). Measurement goes through the
edgeq runtime when given a bundle (whichever backend it picks on this machine: TensorRT on a GPU device,
ONNX Runtime CPU here), or a raw ONNX Runtime CPU session when given an exported/quantized ONNX directory.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import ConfigError, ModelNotFoundError
from edgeq.sdk.bundle.model_info import MODEL_INFO_NAME

CPI_VERSION = 1


@dataclass(frozen=True)
class BenchConfig:
    """What ``bench`` measures.

    Args:
        prompt_tokens / new_tokens: the LM request shape (prefill length, generated tokens).
        batch: sentences per encoder request.
        threads: ONNX Runtime intra-op threads (0 = library default: all cores).
        repeats: timed repeats after one warm-up; the median is reported.
    """

    prompt_tokens: int = 128
    new_tokens: int = 128
    batch: int = 1
    threads: int = 0
    repeats: int = 3

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "new_tokens", "batch", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")


def cost_per_inference(hourly_price: float, seconds: float, requests: int = 1) -> float:
    """CPI = hourly cost × time / requests (``seconds`` of machine time served ``requests`` requests)."""
    if hourly_price < 0:
        raise ConfigError(f"hourly price must be >= 0, got {hourly_price}")
    if seconds <= 0 or requests < 1:
        raise ConfigError(f"need a positive time and at least one request, got {seconds} s / {requests}")
    return hourly_price * (seconds / 3600.0) / requests


@dataclass
class BenchResult:
    model: str
    task: str
    target: str
    backend: str
    measured_on: str
    config: BenchConfig
    seconds_per_request: float
    throughput: dict[str, float]  # e.g. prefill_tok_s, decode_tok_s / sentences_s
    prices: dict[str, float] = field(default_factory=dict)  # label -> USD per hour (inputs)

    def cpi(self) -> dict[str, dict[str, float]]:
        """Per price: USD per request, requests per hour (one stream), USD per 1M generated tokens / sentences."""
        out = {}
        per_req_units = self.config.new_tokens if self.task == "text-generation" else self.config.batch
        for label, price in self.prices.items():
            c = cost_per_inference(price, self.seconds_per_request)
            out[label] = {"usd_per_hour": price, "usd_per_request": c, "requests_per_hour": 3600.0 / self.seconds_per_request,
                          "usd_per_million_units": c / per_req_units * 1e6}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"version": CPI_VERSION, "model": self.model, "task": self.task, "target": self.target,
                "backend": self.backend, "measured_on": self.measured_on, "config": asdict(self.config),
                "seconds_per_request": self.seconds_per_request, "throughput": self.throughput, "cpi": self.cpi()}


# -- measurement loops -------------------------------------------------------------------------------------
def ort_generate(sess: Any, ids: np.ndarray, new_tokens: int, num_kv: int, head_dim: int) -> dict[str, float]:
    """Greedy generation on a raw InferenceSession with the KV cache fed back: prefill and decode seconds."""
    from edgeq.sdk.bundle.graph_io import lm_feeds, past_names, present_indices, session_input_dtypes
    from edgeq.sdk.bundle.model_info import TEXT_GENERATION, ModelInfo

    # the graph's interface is read once, outside the timed steps
    inputs = session_input_dtypes(sess)
    outputs = [o.name for o in sess.get_outputs()]
    present = present_indices(past_names(inputs), outputs)
    logits = outputs.index("logits") if "logits" in outputs else 0
    info = ModelInfo(TEXT_GENERATION, num_key_value_heads=num_kv, head_dim=head_dim)
    t0 = time.perf_counter()
    out = sess.run(None, lm_feeds(ids, inputs, info))
    t1 = time.perf_counter()
    tok = np.asarray([[int(out[logits][0, -1].argmax())]], dtype=np.int64)
    for _ in range(new_tokens - 1):
        out = sess.run(None, lm_feeds(tok, inputs, info, [out[i] for i in present]))
        tok = np.asarray([[int(out[logits][0, -1].argmax())]], dtype=np.int64)
    t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "decode_tokens": new_tokens - 1, "prompt_tokens": int(ids.shape[1])}


def _text_ids(tokenizer_json: Path, n: int, vocab: int | None) -> np.ndarray:
    """``n`` prompt token ids from edgeq's evaluation text (repeated if the text is short)."""
    from tokenizers import Tokenizer

    text = (Path(__file__).parent / "data" / "eval.txt").read_text()
    ids = Tokenizer.from_file(str(tokenizer_json)).encode(text, add_special_tokens=False).ids
    while len(ids) < n:
        ids = ids + ids
    arr = np.asarray(ids[:n], dtype=np.int64)
    if vocab:
        arr = arr % vocab
    return arr[None, :]


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    pre = statistics.median(r["prompt_tokens"] / r["prefill_s"] for r in runs)
    dec = [r["decode_tokens"] / r["decode_s"] for r in runs if r["decode_tokens"] and r["decode_s"] > 0]
    total = statistics.median(r["prefill_s"] + r["decode_s"] for r in runs)
    return {"prefill_tok_s": pre, "decode_tok_s": statistics.median(dec) if dec else 0.0, "request_s": total}


def _bench_onnx_dir(d: Path, cfg: BenchConfig) -> tuple[str, str, dict[str, float], float]:
    from edgeq.converters.evaluate import model_info, session

    info = model_info(d)
    sess = session(d, cfg.threads)
    if info.task == "text-generation":
        ids = _text_ids(d / "tokenizer.json", cfg.prompt_tokens, info.vocab_size or None)
        nk, hd = info.num_key_value_heads, info.head_dim
        ort_generate(sess, ids[:, : min(8, ids.shape[1])], 2, nk, hd)  # warm-up
        m = _median([ort_generate(sess, ids, cfg.new_tokens, nk, hd) for _ in range(cfg.repeats)])
        return info.task, "onnxruntime-cpu", {k: m[k] for k in ("prefill_tok_s", "decode_tok_s")}, m["request_s"]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.enable_truncation(128)
    tok.enable_padding()
    texts = _sentences(cfg.batch)
    enc = tok.encode_batch(texts)
    feeds = {"input_ids": np.asarray([e.ids for e in enc], np.int64), "attention_mask": np.asarray([e.attention_mask for e in enc], np.int64)}
    feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    names = {i.name for i in sess.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    sess.run(None, feeds)
    times = []
    for _ in range(cfg.repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    return info.task, "onnxruntime-cpu", {"sentences_s": cfg.batch / s}, s


def _bench_bundle(d: Path, cfg: BenchConfig) -> tuple[str, str, dict[str, float], float]:
    from edgeq.sdk.runtime.backends import BackendOptions
    from edgeq.sdk.health.monitor import MonitorConfig
    from edgeq.sdk.runtime.runtime import Runtime

    with Runtime.open(d, backend=BackendOptions(intra_op_threads=cfg.threads), monitor=MonitorConfig(enabled=False)) as rt:
        task, backend = rt.task, rt.backend_name
        if task == "text-generation":
            tok = d / "tokenizer" / "tokenizer.json"
            from tokenizers import Tokenizer

            prompt = Tokenizer.from_file(str(tok)).decode(_text_ids(tok, cfg.prompt_tokens, None)[0].tolist())
            rt.generate(prompt, max_new_tokens=2)  # warm-up
            runs = []
            for _ in range(cfg.repeats):
                g = rt.generate(prompt, max_new_tokens=cfg.new_tokens)
                runs.append({"prefill_s": g.prefill_s, "decode_s": g.decode_s, "decode_tokens": max(len(g.token_ids) - 1, 0),
                             "prompt_tokens": g.prompt_tokens})
            m = _median(runs)
            return task, backend, {k: m[k] for k in ("prefill_tok_s", "decode_tok_s")}, m["request_s"]
        texts = _sentences(cfg.batch)
        rt.embed(texts)
        times = []
        for _ in range(cfg.repeats):
            t0 = time.perf_counter()
            rt.embed(texts)
            times.append(time.perf_counter() - t0)
        s = statistics.median(times)
        return task, backend, {"sentences_s": cfg.batch / s}, s


def _sentences(n: int) -> list[str]:
    text = (Path(__file__).parent / "data" / "eval.txt").read_text()
    lines = [ln.strip() for ln in text.splitlines() if len(ln.strip()) > 30]
    return [lines[i % len(lines)] for i in range(n)]


def bench(model: str | Path, target: str = "cpu", prices: dict[str, float] | None = None,
          config: BenchConfig | None = None) -> BenchResult:
    """Measure ``model`` (a bundle directory or an edgeq ONNX directory) on this machine and price it.

    Args:
        model: a bundle directory (``manifest.json``; served by the edgeq runtime) or a directory with
            ``model.onnx`` + ``edgeq_model.json`` (``edgeq export`` / ``edgeq quantize`` output; raw ORT CPU).
        target: ``cpu`` or a target profile name; recorded with the result. The measurement is always of
            this machine; ``measured_on`` says which backend ran it.
        prices: label → USD per hour (inputs) to compute CPI with.
        config: request shape, threads, repeats.
    """
    cfg = config or BenchConfig()
    d = Path(model)
    if target != "cpu":
        from edgeq.targets import get_profile

        get_profile(target)  # unknown target → UnknownTargetError listing the valid ones
    if (d / "manifest.json").is_file():
        task, backend, thr, secs = _bench_bundle(d, cfg)
    elif (d / "model.onnx").is_file() and (d / MODEL_INFO_NAME).is_file():
        task, backend, thr, secs = _bench_onnx_dir(d, cfg)
    else:
        raise ModelNotFoundError(f"{d} is neither a bundle (manifest.json) nor an edgeq ONNX directory (model.onnx + edgeq_model.json)",
                                 hint="pass the output of `edgeq build`, `edgeq export` or `edgeq quantize`")
    import platform

    return BenchResult(model=str(d), task=task, target=target, backend=backend,
                       measured_on=f"{backend} on {platform.machine()} {platform.node()}", config=cfg,
                       seconds_per_request=secs, throughput=thr, prices=dict(prices or {}))
