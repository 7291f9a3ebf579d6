"""Quality metrics shared by the benchmarks: one evaluation applied identically to every ONNX file.

Causal LMs: the evaluation text is tokenized once and scored in one forward pass (no KV past) per model:
perplexity, mean KL(reference ‖ candidate) per position and top-1 agreement with the FP32 reference.
Encoders: mean-pooled, L2-normalised embeddings; cosine to the FP32 embeddings and agreement of the
pair similarity scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def tokenizer(model_dir: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))


def eval_ids(model_dir: Path, text_path: Path, n_tokens: int) -> np.ndarray:
    """The first ``n_tokens`` token ids of a text (BOS not added: the text is mid-document anyway)."""
    ids = tokenizer(model_dir).encode(Path(text_path).read_text(), add_special_tokens=False).ids
    if len(ids) < n_tokens:
        raise ValueError(f"{text_path} has only {len(ids)} tokens, {n_tokens} asked")
    return np.asarray(ids[:n_tokens], dtype=np.int64)[None, :]


def session(onnx_path: Path, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session, made as edgeq's own evaluation makes it (all graph optimisations)."""
    from edgeq.converters.evaluate import session as cpu_session

    return cpu_session(onnx_path, threads)


def kv_shape(model_dir: Path) -> tuple[int, int]:
    info = json.loads((Path(model_dir) / "edgeq_model.json").read_text())
    return int(info["num_key_value_heads"]), int(info["head_dim"])


def lm_logits(sess: Any, ids: np.ndarray, num_kv: int, head_dim: int) -> np.ndarray:
    """Logits [seq, vocab] (float32) for ids [1, seq] in one pass with an empty past."""
    from edgeq.converters.validate import lm_feeds

    out_names = [o.name for o in sess.get_outputs()]
    return sess.run([out_names[0] if "logits" not in out_names else "logits"], lm_feeds(sess, ids, [], num_kv, head_dim))[0][0]


def log_softmax(x: np.ndarray) -> np.ndarray:
    """In float64: a KL between near-identical models is below float32's resolution."""
    from edgeq.sdk.health.canary import log_softmax as lsm

    return lsm(x, np.float64)


_CHUNK = 256  # rows per chunk: float64 work arrays stay ~100 MB at a 49k vocabulary


@dataclass
class LmReference:
    ids: np.ndarray
    logp: np.ndarray  # [seq, vocab] float32 log-probs of the reference
    ppl: float

    @classmethod
    def from_logits(cls, ids: np.ndarray, logits: np.ndarray) -> LmReference:
        logp = np.empty(logits.shape, dtype=np.float32)
        for i in range(0, len(logits), _CHUNK):
            logp[i:i + _CHUNK] = log_softmax(logits[i:i + _CHUNK])
        return cls(ids, logp, perplexity(ids, logp))


def perplexity(ids: np.ndarray, logp: np.ndarray) -> float:
    targets = ids[0, 1:]
    nll = -logp[np.arange(len(targets)), targets].astype(np.float64)
    return float(np.exp(nll.mean()))


def lm_metrics(ref: LmReference, logits: np.ndarray) -> dict[str, Any]:
    """Perplexity, mean KL(ref‖q) over positions, top-1 agreement; NaN/Inf anywhere makes every metric NaN."""
    if not np.isfinite(logits).all():
        nan = float("nan")
        return {"ppl": nan, "ppl_delta_pct": nan, "kl": nan, "top1": nan, "finite": False}
    targets = ref.ids[0, 1:]
    kl_sum, agree, nll = 0.0, 0, []
    for i in range(0, len(logits), _CHUNK):
        logq = log_softmax(logits[i:i + _CHUNK])
        logp = ref.logp[i:i + _CHUNK].astype(np.float64)
        kl_sum += float((np.exp(logp) * (logp - logq)).sum())
        agree += int((logp.argmax(-1) == logq.argmax(-1)).sum())
        rows = np.arange(len(logq))
        keep = rows + i < len(targets)
        nll.append(-logq[rows[keep], targets[i:i + _CHUNK][: keep.sum()]])
    n = len(logits)
    ppl = float(np.exp(np.concatenate(nll).mean()))
    return {"ppl": ppl, "ppl_delta_pct": 100.0 * (ppl / ref.ppl - 1.0), "kl": kl_sum / n, "top1": agree / n, "finite": True}


# -- encoders -----------------------------------------------------------------------------------------
def load_pairs(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in Path(path).read_text().splitlines():
        if line and not line.startswith("#"):
            a, b = line.split("\t")[:2]
            pairs.append((a, b))
    return pairs


def encode_batch(tok: Any, texts: list[str], max_len: int = 128) -> dict[str, np.ndarray]:
    tok.enable_truncation(max_len)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(texts)
    ids = np.asarray([e.ids for e in enc], dtype=np.int64)
    mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def embed(sess: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings (float32) of the first output, for every file alike."""
    from edgeq.sdk.bundle.graph_io import pool

    names = {i.name for i in sess.get_inputs()}
    hidden = sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    return pool(hidden.astype(np.float32, copy=False), feeds["attention_mask"], "mean", normalize=True)


def embedding_metrics(ref: np.ndarray, got: np.ndarray, n_pairs: int) -> dict[str, float]:
    """Cosine of each embedding to its FP32 reference, and how well pair similarity scores agree.

    Embeddings are ordered [a_0..a_{n-1}, b_0..b_{n-1}] for n pairs.
    """
    if not np.isfinite(got).all():
        return {"cos_mean": float("nan"), "cos_min": float("nan"), "pair_spearman": float("nan"), "pair_max_abs": float("nan")}
    cos = (ref * got).sum(-1)
    s_ref = (ref[:n_pairs] * ref[n_pairs:]).sum(-1)
    s_got = (got[:n_pairs] * got[n_pairs:]).sum(-1)
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "pair_spearman": spearman(s_ref, s_got), "pair_max_abs": float(np.abs(s_ref - s_got).max())}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])
