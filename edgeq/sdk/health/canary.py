"""Canary checks: feeds built from the health arrays, and scores against the unquantized reference.

One implementation serves both sides: the host producer scores the quantized model at build time
(the baseline) and the device monitor scores the served model with the same code, so a healthy
model on the same backend reproduces its baseline exactly. Dispatch is a registry keyed by task.

Metrics (all "higher is better", in [0, 1]):

- LM ``top1``: agreement of the served argmax with the reference argmax over every canary position.
- LM ``kl_quality``: exp(-mean KL(ref || served)), KL taken over the reference top-k tokens plus one
  bucket for the rest of the vocabulary. Merging tokens into a bucket can only lower KL
  (data-processing inequality), so this is a lower bound on the full KL that needs only top-k stored.
- embeddings ``cosine``: mean cosine similarity of pooled, normalised embeddings to the reference.
- generic ``quality``: 1 - mean|served - ref| / mean|ref| (clipped to [0, 1]) over all outputs.

Each result also carries a ``fingerprint`` of the served outputs (LM: log-probs at the reference
top-k tokens; encoders: raw pooled embeddings; generic: all outputs) and ``drift()`` measures the
relative change between two fingerprints of the same version. What drift is healthy depends on the
model (how peaked its outputs are): the host producer measures each bundle's own run-to-run spread
of ``drift()`` and the health spec judges drift in units of it (``HealthSpec.drift_scale``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from edgeq.sdk.bundle.model_info import FEATURE_EXTRACTION, GENERIC, TEXT_GENERATION, ModelInfo
from edgeq.sdk.bundle.graph_io import Feeds, lm_prefill_feeds, pool



@dataclass(frozen=True)
class CanaryResult:
    scores: dict[str, float]
    finite: bool
    #: statistic of the outputs used as the live-traffic baseline (LM entropy, embedding norm)
    online: dict[str, float]
    fingerprint: np.ndarray | None = None


def drift(now: np.ndarray, then: np.ndarray) -> float:
    """mean|now - then| / mean|then|: relative change of a version's canary outputs (NaN stays NaN).

    Judged against the bundle's measured healthy spread of this same quantity, never on its own."""
    if now.shape != then.shape:
        return float("inf")
    return float(np.abs(now - then).mean() / max(float(np.abs(then).mean()), 1e-12))


@dataclass(frozen=True)
class CanaryKind:
    feeds: Callable[[dict[str, np.ndarray], Sequence[str], ModelInfo], Feeds]
    score: Callable[[dict[str, np.ndarray], dict[str, np.ndarray], ModelInfo], CanaryResult]
    #: run the canary rows one at a time: an engine's optimization profile may cap batch below the
    #: number of canary rows (RTX/Jetson profiles allow batch 2), and batch 1 is in every profile
    row_by_row: bool = False


CANARY_KINDS: dict[str, CanaryKind] = {}


def register_canary(task: str) -> Callable[[CanaryKind], CanaryKind]:
    def deco(kind: CanaryKind) -> CanaryKind:
        CANARY_KINDS[task] = kind
        return kind

    return deco


def run_canary(
    run: Callable[[Feeds], dict[str, np.ndarray]], arrays: dict[str, np.ndarray], inputs: Mapping[str, np.dtype],
    info: ModelInfo, *, row_by_row: bool | None = None,
) -> CanaryResult:
    """Build the canary feeds for the model's ``inputs`` (name → dtype), run them through ``run`` (name → array
    outputs) and score them. ``row_by_row`` overrides the task's default batching (the host's drift
    calibration runs both ways; the device always runs the default)."""
    kind = CANARY_KINDS[info.task]
    feeds = kind.feeds(arrays, inputs, info)
    if not (kind.row_by_row if row_by_row is None else row_by_row):
        return kind.score(arrays, run(feeds), info)
    rows = len(next(iter(feeds.values())))
    parts = [run({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(rows)]
    outputs = {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}
    return kind.score(arrays, outputs, info)


# -- shared helpers ----------------------------------------------------------------------------------
def log_softmax(x: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """log softmax along the last axis, computed in ``dtype`` (float32 on the device; the host's quality
    metrics pass float64, whose KL between near-identical models float32 would round away)."""
    x = x.astype(dtype, copy=False)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy (nats) of softmax(logits) along the last axis."""
    lp = log_softmax(logits)
    return -(np.exp(lp) * lp).sum(axis=-1)


def lm_topk_reference(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, log-probs) of the top-k tokens, best first, per position: what the npz stores for LMs."""
    lp = log_softmax(logits)
    idx = np.argpartition(-lp, k - 1, axis=-1)[..., :k]
    vals = np.take_along_axis(lp, idx, axis=-1)
    order = np.argsort(-vals, axis=-1)
    return np.take_along_axis(idx, order, axis=-1).astype(np.int32), np.take_along_axis(vals, order, axis=-1)


# -- text generation -----------------------------------------------------------------------------------
def _lm_feeds(arrays: dict[str, np.ndarray], inputs: Mapping[str, np.dtype], info: ModelInfo) -> Feeds:
    return lm_prefill_feeds(arrays["input_ids"], inputs, info)


def _lm_score(arrays: dict[str, np.ndarray], outputs: dict[str, np.ndarray], info: ModelInfo) -> CanaryResult:
    logits = outputs["logits"] if "logits" in outputs else next(iter(outputs.values()))
    finite = bool(np.isfinite(logits).all())
    ref_ids, ref_lp = arrays["ref_topk_ids"].astype(np.int64), arrays["ref_topk_logp"].astype(np.float32)
    lp = log_softmax(logits)
    top1 = float(np.mean(lp.argmax(axis=-1) == ref_ids[..., 0]))
    got = np.take_along_axis(lp, ref_ids, axis=-1)
    p_ref = np.exp(ref_lp)
    tail_ref = np.clip(1.0 - p_ref.sum(-1), 1e-12, 1.0)
    tail_got = np.clip(1.0 - np.exp(got).sum(-1), 1e-12, 1.0)
    kl = (p_ref * (ref_lp - got)).sum(-1) + tail_ref * (np.log(tail_ref) - np.log(tail_got))
    mean_kl = float(np.mean(kl))
    ent = -(np.exp(lp) * lp).sum(axis=-1)
    return CanaryResult(
        scores={"top1": top1, "kl_quality": float(np.exp(-max(mean_kl, 0.0))) if np.isfinite(mean_kl) else float("nan")},
        finite=finite,
        online={"entropy_mean": float(np.mean(ent)), "entropy_std": float(np.std(ent))},
        fingerprint=got.astype(np.float64),
    )


register_canary(TEXT_GENERATION)(CanaryKind(_lm_feeds, _lm_score, row_by_row=True))


# -- feature extraction -----------------------------------------------------------------------------
def _emb_feeds(arrays: dict[str, np.ndarray], inputs: Mapping[str, np.dtype], info: ModelInfo) -> Feeds:
    return {n: arrays[n].astype(np.int64) for n in ("input_ids", "attention_mask", "token_type_ids") if n in inputs}


def _emb_score(arrays: dict[str, np.ndarray], outputs: dict[str, np.ndarray], info: ModelInfo) -> CanaryResult:
    hidden = outputs["last_hidden_state"] if "last_hidden_state" in outputs else next(iter(outputs.values()))
    finite = bool(np.isfinite(hidden).all())
    raw = pool(hidden, arrays["attention_mask"], info.pooling, normalize=False)
    norms = np.linalg.norm(raw, axis=-1)
    emb = raw / np.maximum(norms[:, None], 1e-12)
    cos = (emb * arrays["ref_embeddings"]).sum(-1)
    return CanaryResult(
        scores={"cosine": float(np.mean(cos))}, finite=finite,
        online={"norm_mean": float(np.mean(norms)), "norm_std": float(np.std(norms))},
        fingerprint=raw.astype(np.float64),
    )


register_canary(FEATURE_EXTRACTION)(CanaryKind(_emb_feeds, _emb_score, row_by_row=True))


# -- generic --------------------------------------------------------------------------------------------
def _gen_feeds(arrays: dict[str, np.ndarray], inputs: Mapping[str, np.dtype], info: ModelInfo) -> Feeds:
    return {k[3:]: v.astype(inputs.get(k[3:], v.dtype), copy=False) for k, v in arrays.items() if k.startswith("in:")}


def _gen_score(arrays: dict[str, np.ndarray], outputs: dict[str, np.ndarray], info: ModelInfo) -> CanaryResult:
    finite, err, mag = True, 0.0, 0.0
    prints = []
    for k, ref in arrays.items():
        if not k.startswith("ref:"):
            continue
        got = np.asarray(outputs[k[4:]], np.float64)
        prints.append(got.ravel())
        finite = finite and bool(np.isfinite(got).all())
        err += float(np.abs(got - ref).mean())
        mag += float(np.abs(ref).mean())
    quality = 1.0 - min(1.0, err / max(mag, 1e-12)) if finite else float("nan")
    return CanaryResult(scores={"quality": quality}, finite=finite, online={},
                        fingerprint=np.concatenate(prints) if prints else None)


register_canary(GENERIC)(CanaryKind(_gen_feeds, _gen_score))

