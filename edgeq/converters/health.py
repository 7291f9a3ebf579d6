"""Host-side producer of a bundle's health data: canaries, FP reference outputs, build-time baseline.

Canary inputs come from the evaluation text (never the calibration text). The UNQUANTIZED ONNX gives
the reference outputs; the quantized ONNX is scored against them with the same code the device
monitor uses (``edgeq.sdk.health.canary``), and those scores are the baseline the 2 % rule is applied to.
Both run on ONNX Runtime CPU.

Drift calibration: the quantized model's canaries are run again the other ways a healthy backend may
run them (1 and 2 intra-op threads, row by row and in one batch) and with its outputs perturbed by one
rounding unit of the graph's compute dtype (what any backend computing in FP16, say, does to them at
least). The largest ``canary.drift`` among those is the bundle's ``drift_scale``: the device judges drift
in multiples of it, so one limit means the same on a peaked model and on a near-uniform one.

What is stored (kept small): LMs — C canary sequences of L tokens and, at every position, the
reference top-k token ids and log-probs (int32 + float32; C=4, L=32, k=16 → 16 KiB before
compression), not the full logits (SmolLM2's vocabulary would make that 25 MB). Encoders — C padded
sentences and their reference sentence embeddings. Generic models — the inputs and full reference
outputs of one seeded random batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgeq._fs import atomic_write_bytes, atomic_write_text
from edgeq._version import __version__
from edgeq.errors import ConfigError, ModelNotFoundError, ValidationError
from edgeq.sdk.bundle.graph_io import lm_prefill_feeds
from edgeq.sdk.health.canary import CANARY_KINDS, CanaryResult, drift, lm_topk_reference, run_canary
from edgeq.sdk.bundle.graph_io import session_input_dtypes
from edgeq.sdk.bundle.health import CANARIES_NPZ, HEALTH_JSON, TASK_METRICS, HealthSpec, Thresholds, npz_bytes
from edgeq.sdk.bundle.model_info import FEATURE_EXTRACTION, MODEL_INFO_NAME, TEXT_GENERATION, ModelInfo
from edgeq.sdk.bundle.graph_io import pool
from edgeq.sdk.runtime.tokenizer import TOKENIZER_FILES, DeviceTokenizer

EVAL_TEXT = Path(__file__).parent / "data" / "eval.txt"
#: unit roundoff per compute dtype: the relative error one rounding to it may add to an output
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11}
#: intra-op thread counts the calibration reruns with (ORT splits GEMMs differently per count)
_CALIBRATION_THREADS = (1, 2)
#: seeded output perturbations per calibration (the largest counts)
_ROUNDING_DRAWS = 3


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


def _compute_dtype(q_dir: Path) -> str:
    """The quantized graph's compute dtype, from the quantizer's record beside it (an FP export: float32)."""
    from edgeq.converters.quantize import QUANT_CONFIG

    p = q_dir / QUANT_CONFIG if q_dir.is_dir() else q_dir.parent / QUANT_CONFIG
    dtype = json.loads(p.read_text()).get("compute_dtype", "float32") if p.is_file() else "float32"
    if dtype not in UNIT_ROUNDOFF:
        raise ConfigError(f"no rounding unit known for compute dtype {dtype!r}", hint=f"one of {sorted(UNIT_ROUNDOFF)}")
    return dtype


def _perturbed(run: Any, unit: float, rng: np.random.Generator) -> Any:
    """``run`` with every float output multiplied by (1 + unit * U(-1, 1)): one rounding unit of noise."""
    def wrapped(feeds: Any) -> dict[str, np.ndarray]:
        outs = run(feeds)
        return {k: v * (1.0 + unit * rng.uniform(-1.0, 1.0, v.shape)).astype(v.dtype)
                if np.issubdtype(v.dtype, np.floating) else v for k, v in outs.items()}
    return wrapped


def calibrate_drift(q_dir: Path, arrays: dict[str, np.ndarray], info: ModelInfo, base: CanaryResult, *,
                    compute_dtype: str, threads: int = 0, session: Any = None,
                    seed: int = 0) -> tuple[float | None, dict[str, Any]]:
    """The healthy run-to-run spread of the quantized model's canary fingerprint, in ``canary.drift`` units.

    Args:
        q_dir: the quantized model.
        arrays / info: the canary arrays and the model's facts.
        base: the canary result the baseline came from (the reference fingerprint).
        compute_dtype: the graph's compute dtype ("float32" | "float16"): sets the rounding unit.
        threads: the baseline's intra-op threads (0 = ONNX Runtime's default).
        session: the baseline's session (``threads``), reused instead of loading the model again.
    Returns (drift_scale, record): None when the task has no fingerprint; the record lists every spread.
    """
    if base.fingerprint is None:
        return None, {}
    sessions = {threads: session} if session is not None else {}
    reruns: dict[str, float] = {}
    # a task run row by row on the device also runs as one batch here (other GEMM shapes); a generic
    # model's first axis need not be a batch, so it keeps its one way
    batchings = (True, False) if CANARY_KINDS[info.task].row_by_row else (False,)
    for t in sorted({*_CALIBRATION_THREADS, threads}):
        if t not in sessions:
            sessions[t] = _session(q_dir, t)
        s = sessions[t]
        for rows in batchings:
            res = run_canary(_runner(s), arrays, session_input_dtypes(s), info, row_by_row=rows)
            reruns[f"threads={t or 'default'},{'row_by_row' if rows else 'batched'}"] = drift(res.fingerprint, base.fingerprint)
    unit = UNIT_ROUNDOFF[compute_dtype]
    rng = np.random.default_rng(seed)
    s = sessions[threads]
    rounding = max(drift(run_canary(_perturbed(_runner(s), unit, rng), arrays, session_input_dtypes(s),
                                    info).fingerprint, base.fingerprint) for _ in range(_ROUNDING_DRAWS))
    scale = max(rounding, *reruns.values())
    if not (np.isfinite(scale) and scale > 0.0):
        raise ValidationError(f"drift calibration gave a spread of {scale!r}",
                              hint="the quantized model's canary outputs are not finite or not reproducible")
    record = {"compute_dtype": compute_dtype, "unit_roundoff": unit, "rounding_spread": rounding,
              "rerun_spread": reruns, "scale": scale}
    return float(scale), record


def build_health_data(
    task: str, fp_onnx_dir: str | Path, q_onnx_dir: str | Path, out_dir: str | Path, *,
    count: int = 4, length: int = 32, top_k: int = 16, thresholds: Thresholds | None = None, threads: int = 0,
    compute_dtype: str | None = None,
) -> list[tuple[str, str]]:
    """Write ``health/health.json`` and ``health/canaries.npz`` under ``out_dir``; return [(relpath, role)].

    Args:
        task: "text-generation" | "feature-extraction" | "generic".
        fp_onnx_dir: the unquantized export (model.onnx, tokenizer, edgeq_model.json): the reference.
        q_onnx_dir: the quantized model whose build-time agreement with the reference is the baseline.
        out_dir: bundle staging directory (``health/`` is created in it).
        count / length: canaries and tokens per canary (LM) or max tokens per sentence (encoders).
        top_k: reference tokens stored per LM position.
        thresholds: rollback thresholds (default: 2 % quality drop, drift within 30 healthy spreads).
        threads: ONNX Runtime intra-op threads for the baseline (0 = its default).
        compute_dtype: the quantized graph's compute dtype (default: from its quant_config.json, else
            float32): the rounding unit of the drift calibration.
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
    scale, calibration = calibrate_drift(q_dir, arrays, info, res, threads=threads, session=q,
                                         compute_dtype=compute_dtype or _compute_dtype(q_dir))
    if calibration:
        meta["drift_calibration"] = calibration
    spec = HealthSpec(task=task, metrics=TASK_METRICS[task], baseline=res.scores,
                      thresholds=thresholds or Thresholds(), online_baseline=res.online, canary=meta,
                      reference=f"unquantized ONNX ({fp_dir.name}), ONNX Runtime CPU",
                      created_by=f"edgeq {__version__}", drift_scale=scale)
    (out / "health").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / CANARIES_NPZ, npz_bytes(arrays))
    atomic_write_text(out / HEALTH_JSON, spec.dumps())
    return [(HEALTH_JSON, "health"), (CANARIES_NPZ, "health")]

