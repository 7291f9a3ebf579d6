"""Quality metrics of ONNX models in ONNX Runtime CPU: perplexity, candidate-vs-reference KL/top-1, cosine.

A model is addressed by its directory (model.onnx + tokenizer + ``edgeq_model.json``) or its .onnx path
(the side files are looked up beside it). Perplexity is computed over a fixed number of tokens cut into
non-overlapping windows, each scored from an empty KV cache (the first token of a window is context
only), so numbers are comparable across schemes for the same ``num_tokens``/``window``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import ModelNotFoundError, QuantizationError
from edgeq.sdk.bundle.graph_io import lm_prefill_feeds, pool, session_input_dtypes
from edgeq.sdk.bundle.model_info import MODEL_INFO_NAME, ModelInfo
from edgeq.sdk.health.canary import log_softmax

DEFAULT_TOKENS = 2048
DEFAULT_WINDOW = 1024


def eval_text() -> str:
    """The shipped evaluation text (never used for calibration)."""
    return resources.files("edgeq.converters.data").joinpath("eval.txt").read_text(encoding="utf-8")


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float
    tokens: int  # scored tokens
    window: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LMComparison:
    """Candidate vs reference on the same tokens: mean KL(ref || cand) per token, top-1 agreement, ppl of both."""

    mean_kl: float
    top1_agreement: float
    ppl_candidate: float
    ppl_reference: float
    tokens: int

    @property
    def ppl_increase_pct(self) -> float:
        return 100.0 * (self.ppl_candidate / self.ppl_reference - 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ppl_increase_pct": self.ppl_increase_pct}


@dataclass(frozen=True)
class EmbeddingComparison:
    mean_cosine: float
    min_cosine: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _paths(model: str | Path) -> tuple[Path, Path]:
    p = Path(model)
    onnx_path = p / "model.onnx" if p.is_dir() else p
    if not onnx_path.is_file():
        raise ModelNotFoundError(f"no ONNX model at {onnx_path}")
    return onnx_path, onnx_path.parent


def model_info(model: str | Path) -> ModelInfo:
    _, d = _paths(model)
    f = d / MODEL_INFO_NAME
    if not f.is_file():
        raise ModelNotFoundError(f"{d} has no {MODEL_INFO_NAME} (export with `edgeq export`)")
    return ModelInfo.from_bytes(f.read_bytes())


def session(model: str | Path, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session (all graph optimisations, so int4 DQ->MatMul fuses)."""
    import onnxruntime as ort

    onnx_path, _ = _paths(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def tokenize(model: str | Path, text: str) -> np.ndarray:
    """Token ids of ``text`` (no special tokens) with the model's own tokenizer."""
    from transformers import AutoTokenizer

    _, d = _paths(model)
    tok = AutoTokenizer.from_pretrained(str(d))
    return np.asarray(tok(text, add_special_tokens=False)["input_ids"], dtype=np.int64)


def _windows(ids: np.ndarray, num_tokens: int, window: int) -> list[np.ndarray]:
    if len(ids) < num_tokens:
        raise QuantizationError(f"evaluation text has {len(ids)} tokens, fewer than the {num_tokens} asked")
    ids = ids[:num_tokens]
    return [ids[i:i + window] for i in range(0, num_tokens, window) if len(ids[i:i + window]) >= 2]


def _lm_logits(sess: Any, info: ModelInfo, win: np.ndarray) -> np.ndarray:
    return sess.run(["logits"], lm_prefill_feeds(win[None, :], session_input_dtypes(sess), info))[0][0]


def perplexity(model: str | Path, text: str | None = None, *, ids: np.ndarray | None = None,
               num_tokens: int = DEFAULT_TOKENS, window: int = DEFAULT_WINDOW, threads: int = 0) -> PerplexityResult:
    """Perplexity of a causal-LM ONNX on ``text`` (default: the shipped eval text) or given token ``ids``."""
    info = model_info(model)
    ids = tokenize(model, text if text is not None else eval_text()) if ids is None else np.asarray(ids)
    sess = session(model, threads)
    nll, n = 0.0, 0
    for win in _windows(ids, num_tokens, window):
        lp = log_softmax(_lm_logits(sess, info, win), np.float64)
        nll -= float(lp[np.arange(len(win) - 1), win[1:]].sum())
        n += len(win) - 1
    return PerplexityResult(ppl=math.exp(nll / n), nll=nll / n, tokens=n, window=window)


def compare_lm(candidate: str | Path, reference: str | Path, text: str | None = None, *,
               ids: np.ndarray | None = None, num_tokens: int = DEFAULT_TOKENS, window: int = DEFAULT_WINDOW,
               threads: int = 0) -> LMComparison:
    """KL(ref || cand), top-1 agreement and both perplexities on the same windows (one pass each)."""
    info = model_info(reference)
    ids = tokenize(reference, text if text is not None else eval_text()) if ids is None else np.asarray(ids)
    num_tokens = min(num_tokens, len(ids))
    s_c, s_r = session(candidate, threads), session(reference, threads)
    kl = agree = nll_c = nll_r = 0.0
    n = 0
    for win in _windows(ids, num_tokens, window):
        lc = log_softmax(_lm_logits(s_c, info, win), np.float64)
        lr = log_softmax(_lm_logits(s_r, info, win), np.float64)
        kl += float((np.exp(lr) * (lr - lc)).sum())
        agree += float((lc.argmax(-1) == lr.argmax(-1)).sum())
        idx = np.arange(len(win) - 1)
        nll_c -= float(lc[idx, win[1:]].sum())
        nll_r -= float(lr[idx, win[1:]].sum())
        n += len(win) - 1
        del lc, lr
    n_pos_total = sum(len(w) for w in _windows(ids, num_tokens, window))
    return LMComparison(mean_kl=kl / n_pos_total, top1_agreement=agree / n_pos_total,
                        ppl_candidate=math.exp(nll_c / n), ppl_reference=math.exp(nll_r / n), tokens=n)


def _embed(sess: Any, info: ModelInfo, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    names = {i.name for i in sess.get_inputs()}
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    hidden = sess.run(["last_hidden_state"], {k: v for k, v in feeds.items() if k in names})[0]
    # pooled in float32 whatever the graph's output dtype (a float16 mean would lose digits)
    return pool(hidden.astype(np.float32, copy=False), mask, info.pooling, normalize=info.normalize)


def embed_batches(model: str | Path, texts: list[str], max_len: int = 128) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokenized, padded (ids, mask) batches of 16 texts for ``compare_embeddings``."""
    from transformers import AutoTokenizer

    _, d = _paths(model)
    tok = AutoTokenizer.from_pretrained(str(d))
    out = []
    for i in range(0, len(texts), 16):
        enc = tok(texts[i:i + 16], padding=True, truncation=True, max_length=max_len, return_tensors="np")
        out.append((enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)))
    return out


def default_sentences(text: str | None = None, n: int = 64) -> list[str]:
    """Non-empty paragraphs of the eval text (or ``text``), at most ``n``."""
    text = eval_text() if text is None else text
    paras = [" ".join(p.split()) for p in text.split("\n\n")]
    return [p for p in paras if len(p) > 20][:n]


def compare_embeddings(candidate: str | Path, reference: str | Path, texts: list[str] | None = None, *,
                       batches: list[tuple[np.ndarray, np.ndarray]] | None = None, threads: int = 0) -> EmbeddingComparison:
    """Cosine similarity of pooled (and normalised, as the model says) embeddings, candidate vs reference."""
    info = model_info(reference)
    batches = batches if batches is not None else embed_batches(reference, texts or default_sentences())
    s_c, s_r = session(candidate, threads), session(reference, threads)
    cos: list[float] = []
    for ids, mask in batches:
        a, b = _embed(s_c, info, ids, mask), _embed(s_r, info, ids, mask)
        a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
        cos += list((a * b).sum(-1).astype(float))
    return EmbeddingComparison(mean_cosine=float(np.mean(cos)), min_cosine=float(np.min(cos)), n=len(cos))
