"""Host-side producer of a bundle's health data: canaries, FP reference outputs, build-time baseline.

Canary inputs come from the evaluation text (never the calibration text). The UNQUANTIZED ONNX gives
the reference outputs; the quantized ONNX is scored against them with the same code the device
monitor uses (``edgeq.sdk.health.canary``), and those scores are the baseline the 2 % rule is applied to.
Both run on ONNX Runtime CPU.

What is stored (kept small): LMs — C canary sequences of L tokens and, at every position, the
reference top-k token ids and log-probs (int32 + float32; C=4, L=32, k=16 → 16 KiB before
compression), not the full logits (SmolLM2's vocabulary would make that 25 MB). Encoders — C padded
sentences and their reference sentence embeddings. Generic models — the inputs and full reference
outputs of one seeded random batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeq._fs import atomic_write_bytes, atomic_write_text
from edgeq._version import __version__
from edgeq.errors import ConfigError, ModelNotFoundError, ValidationError
from edgeq.sdk.bundle.graph_io import lm_prefill_feeds
from edgeq.sdk.health.canary import lm_topk_reference, run_canary
from edgeq.sdk.bundle.graph_io import session_input_dtypes
from edgeq.sdk.bundle.health import CANARIES_NPZ, HEALTH_JSON, TASK_METRICS, HealthSpec, Thresholds, npz_bytes
from edgeq.sdk.bundle.model_info import FEATURE_EXTRACTION, MODEL_INFO_NAME, TEXT_GENERATION, ModelInfo
from edgeq.sdk.bundle.graph_io import pool
from edgeq.sdk.runtime.tokenizer import TOKENIZER_FILES, DeviceTokenizer

EVAL_TEXT = Path(__file__).parent / "data" / "eval.txt"


def _session(onnx_dir: Path, threads: int) -> Any:
    import onnxruntime as ort

    path = onnx_dir / "model.onnx" if onnx_dir.is_dir() else onnx_dir
    if not path.is_file():
        raise ModelNotFoundError(f"no model.onnx in {onnx_dir}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _runner(session: Any) -> Any:
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(None, dict(feeds))))


def _model_info(onnx_dir: Path, task: str) -> ModelInfo:
    p = onnx_dir / MODEL_INFO_NAME
    info = ModelInfo.from_bytes(p.read_bytes()) if p.is_file() else ModelInfo(task=task)
    if info.task != task:
        raise ConfigError(f"health data asked for task {task!r}, but {onnx_dir} holds a {info.task} model")
    return info


def _tokenizer(onnx_dir: Path) -> DeviceTokenizer:
    files = {n: (onnx_dir / n).read_bytes() for n in TOKENIZER_FILES if (onnx_dir / n).is_file()}
    return DeviceTokenizer(files)


def _lm_canaries(onnx_dir: Path, info: ModelInfo, count: int, length: int) -> dict[str, np.ndarray]:
    ids = _tokenizer(onnx_dir).encode(EVAL_TEXT.read_text(encoding="utf-8"), add_special_tokens=False)
    if len(ids) < count * length:
        raise ConfigError(f"evaluation text too short for {count} canaries of {length} tokens")
    stride = len(ids) // count
    return {"input_ids": np.array([ids[i * stride : i * stride + length] for i in range(count)], np.int64)}


def _embedding_canaries(onnx_dir: Path, count: int, length: int) -> dict[str, np.ndarray]:
    lines = [ln.strip() for ln in EVAL_TEXT.read_text(encoding="utf-8").splitlines() if len(ln.strip()) > 40]
    texts = [lines[i * len(lines) // count] for i in range(count)]
    encs = _tokenizer(onnx_dir).encode_pair_batch(texts, length)
    n = max(len(e.ids) for e in encs)
    arrays = {k: np.zeros((count, n), np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    for r, e in enumerate(encs):
        k = len(e.ids)
        arrays["input_ids"][r, :k], arrays["attention_mask"][r, :k], arrays["token_type_ids"][r, :k] = e.ids, 1, e.type_ids
    return arrays


def _generic_canaries(session: Any, count: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (count if j == 0 else 8) for j, d in enumerate(i.shape)]
        if "int" in i.type:
            arrays["in:" + i.name] = rng.integers(0, 8, size=shape).astype(np.int64 if "64" in i.type else np.int32)
        else:
            arrays["in:" + i.name] = rng.standard_normal(shape).astype(np.float32)
    return arrays


def build_health_data(
    task: str, fp_onnx_dir: str | Path, q_onnx_dir: str | Path, out_dir: str | Path, *,
    count: int = 4, length: int = 32, top_k: int = 16, thresholds: Thresholds | None = None, threads: int = 0,
) -> list[tuple[str, str]]:
    """Write ``health/health.json`` and ``health/canaries.npz`` under ``out_dir``; return [(relpath, role)].

    Args:
        task: "text-generation" | "feature-extraction" | "generic".
        fp_onnx_dir: the unquantized export (model.onnx, tokenizer, edgeq_model.json): the reference.
        q_onnx_dir: the quantized model whose build-time agreement with the reference is the baseline.
        out_dir: bundle staging directory (``health/`` is created in it).
        count / length: canaries and tokens per canary (LM) or max tokens per sentence (encoders).
        top_k: reference tokens stored per LM position.
        thresholds: rollback thresholds (default: 2 % quality drop).
    Raises ValidationError when the quantized model already gives NaN/Inf on the canaries.
    """
    if task not in TASK_METRICS:
        raise ConfigError(f"unknown task {task!r}; expected one of {sorted(TASK_METRICS)}")
    fp_dir, q_dir, out = Path(fp_onnx_dir), Path(q_onnx_dir), Path(out_dir)
    info = _model_info(fp_dir, task)
    fp, q = _session(fp_dir, threads), _session(q_dir, threads)
    fp_inputs = session_input_dtypes(fp)
    meta: dict[str, Any] = {"count": count, "source": EVAL_TEXT.name}
    if task == TEXT_GENERATION:
        arrays = _lm_canaries(fp_dir, info, count, length)
        logits = _runner(fp)(lm_prefill_feeds(arrays["input_ids"], fp_inputs, info))["logits"]
        arrays["ref_topk_ids"], arrays["ref_topk_logp"] = lm_topk_reference(logits, top_k)
        meta.update(length=length, top_k=top_k, stored="top-k token ids and log-probs at every position")
    elif task == FEATURE_EXTRACTION:
        arrays = _embedding_canaries(fp_dir, count, length)
        outs = _runner(fp)({k: arrays[k] for k in fp_inputs})
        hidden = outs.get("last_hidden_state", next(iter(outs.values())))
        arrays["ref_embeddings"] = pool(hidden, arrays["attention_mask"], info.pooling, normalize=True)
        meta.update(max_length=length, pooling=info.pooling, stored="pooled, normalised reference embeddings")
    else:
        arrays = _generic_canaries(fp, count)
        outs = _runner(fp)({k[3:]: v for k, v in arrays.items()})
        arrays.update({"ref:" + k: np.asarray(v) for k, v in outs.items()})
        meta.update(stored="inputs and full reference outputs")
    res = run_canary(_runner(q), arrays, session_input_dtypes(q), info)
    if not res.finite:
        raise ValidationError("the quantized model gives NaN/Inf on the health canaries",
                              hint="the quantized ONNX is broken; do not ship it")
    spec = HealthSpec(task=task, metrics=TASK_METRICS[task], baseline=res.scores,
                      thresholds=thresholds or Thresholds(), online_baseline=res.online, canary=meta,
                      reference=f"unquantized ONNX ({fp_dir.name}), ONNX Runtime CPU",
                      created_by=f"edgeq {__version__}")
    (out / "health").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / CANARIES_NPZ, npz_bytes(arrays))
    atomic_write_text(out / HEALTH_JSON, spec.dumps())
    return [(HEALTH_JSON, "health"), (CANARIES_NPZ, "health")]

