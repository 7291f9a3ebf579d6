"""The candidates every benchmark compares: edgeq's schemes and the peers, as one registry.

A candidate turns the cached FP32 export into ``.cache/benchmarks/models/<model>/<label>/model.onnx``.
``bench_quality`` produces them fresh (and times that); ``bench_size``/``bench_speed`` reuse what it left,
producing any that are missing.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import peers
from benchmarks.common import CACHE, cached_export

logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
logging.getLogger("onnxruntime").setLevel(logging.WARNING)

MODELS_DIR = CACHE / "models"
TIERS = ("quick", "full", "all")


@dataclass(frozen=True)
class Candidate:
    label: str
    family: str  # "reference" | "edgeq" | "peer"
    produce: Callable[[Path, Path], Path] | None  # (fp32_dir, out_dir) -> model.onnx; None = the FP32 itself
    settings: str  # what exactly was run, for the table
    tier: str = "quick"  # "quick" ⊂ "full" (the default run) ⊂ "all" (--all): which runs include it

    def runs_in(self, tier: str) -> bool:
        return TIERS.index(self.tier) <= TIERS.index(tier)


def _edgeq(scheme: str, **opts: object) -> Callable[[Path, Path], Path]:
    def produce(src_dir: Path, out_dir: Path) -> Path:
        from benchmarks.edgeq_adapter import quantize

        return quantize(src_dir, out_dir, scheme, **opts)

    return produce


LM: tuple[Candidate, ...] = (
    Candidate("fp32", "reference", None, "optimum export, opset 21"),
    Candidate("edgeq fp8", "edgeq", _edgeq("fp8"), "E4M3 W8A8, per-channel weights, static per-tensor activations"),
    Candidate("edgeq int8-wo", "edgeq", _edgeq("int8-wo"), "INT8 weight-only per-channel (W8A16), GPTQ rounding (default)", tier="full"),
    Candidate("edgeq int8-wo nearest", "edgeq", _edgeq("int8-wo", rounding="nearest"), "INT8 weight-only per-channel, round to nearest (no calibration)", tier="full"),
    Candidate("edgeq int8-sq", "edgeq", _edgeq("int8"), "INT8 W8A8 SmoothQuant (alpha searched per layer)"),
    Candidate("edgeq int4-rtn g128", "edgeq", _edgeq("int4-rtn", block_size=128), "INT4 RTN asymmetric (offsets as an exact correction term), block 128 requested (64 where 128 does not divide the input size)", tier="full"),
    Candidate("edgeq int4-rtn g128 sym", "edgeq", _edgeq("int4-rtn", block_size=128, asymmetric=False), "INT4 RTN symmetric, block 128 requested", tier="full"),
    Candidate("edgeq int4-awq g128", "edgeq", _edgeq("int4-awq", block_size=128), "INT4 AWQ asymmetric (default), block 128 requested (64 where 128 does not divide the input size)"),
    Candidate("edgeq int4-awq g128 sym", "edgeq", _edgeq("int4-awq", block_size=128, asymmetric=False), "INT4 AWQ symmetric (no correction term), block 128 requested", tier="full"),
    Candidate("edgeq int4-awq g128 gptq", "edgeq", _edgeq("int4-awq", block_size=128, rounding="gptq"), "INT4 AWQ asymmetric + GPTQ rounding (damp 0.01), block 128 requested", tier="full"),
    Candidate("edgeq int4-rtn g32", "edgeq", _edgeq("int4-rtn", block_size=32),
              "INT4 RTN asymmetric, block 32: the GGUF Q4_1 grid this SmolLM2 came from (expected lossless)", tier="full"),
    Candidate("edgeq int4-awq g64", "edgeq", _edgeq("int4-awq", block_size=64), "INT4 AWQ, block 64", tier="full"),
    Candidate("edgeq int4-awq g32", "edgeq", _edgeq("int4-awq", block_size=32), "INT4 AWQ, block 32", tier="all"),
    Candidate("edgeq int4-awq g64 head8", "edgeq", _edgeq("int4-awq", block_size=64, quantize_lm_head=True),
              "INT4 AWQ block 64 + LM head INT8 per channel (tied: FP embedding table kept for the lookup)", tier="full"),
    Candidate("edgeq int4-awq g64 head4", "edgeq", _edgeq("int4-awq", block_size=64, quantize_lm_head=True, head_bits=4),
              "INT4 AWQ block 64 + LM head INT4 block 64 (tied: FP embedding table kept for the lookup)", tier="full"),
    Candidate("edgeq int4-awq g64 sym head4", "edgeq", _edgeq("int4-awq", block_size=64, quantize_lm_head=True, head_bits=4, asymmetric=False),
              "INT4 AWQ symmetric block 64 + LM head INT4 (no offset correction nodes: the fastest file)", tier="full"),
    Candidate("edgeq fp8 fp16-compute", "edgeq", _edgeq("fp8", compute_dtype="float16"),
              "FP8 W8A8 in the FP16-compute graph GPU engines get (norms/rotary FP32; run here by ORT CPU)", tier="full"),
    Candidate("fp16 (fp16-compute)", "edgeq", _edgeq("fp16", compute_dtype="float16"),
              "unquantized, FP16-compute graph (what an fp16 GPU engine runs; run here by ORT CPU)", tier="full"),
    Candidate("edgeq int8-wo fp16-compute", "edgeq", _edgeq("int8-wo", compute_dtype="float16"),
              "INT8 weight-only in the FP16-compute graph (run here by ORT CPU)", tier="full"),
    Candidate("edgeq int4-rtn g128 fp16-compute", "edgeq", _edgeq("int4-rtn", block_size=128, compute_dtype="float16"),
              "INT4 RTN block 128 in the FP16-compute graph (run here by ORT CPU)", tier="all"),
    Candidate("edgeq int4-awq g128 fp16-compute", "edgeq", _edgeq("int4-awq", block_size=128, compute_dtype="float16"),
              "INT4 AWQ block 128 in the FP16-compute graph GPU engines get (run here by ORT CPU)", tier="full"),
    Candidate("edgeq fp8 mixed", "edgeq", _edgeq("fp8", accuracy_budget="ppl+1%"),
              "FP8 W8A8 + mixed precision, budget ppl+1% on held-out calibration text", tier="full"),
    Candidate("edgeq int8-sq mixed", "edgeq", _edgeq("int8", accuracy_budget="ppl+2%"),
              "INT8 W8A8 SmoothQuant + mixed precision, budget ppl+2% on held-out calibration text", tier="all"),
    Candidate("ORT RTN g128", "peer", peers.ort_nbits("rtn", 128), "MatMulNBitsQuantizer default (RTN, asym), QDQ, block 128"),
    Candidate("ORT RTN g64", "peer", peers.ort_nbits("rtn", 64), "MatMulNBitsQuantizer default (RTN, asym), QDQ, block 64", tier="full"),
    Candidate("ORT RTN g32", "peer", peers.ort_nbits("rtn", 32), "MatMulNBitsQuantizer default (RTN, asym), QDQ, block 32", tier="all"),
    Candidate("ORT HQQ g128", "peer", peers.ort_nbits("hqq", 128), "MatMulNBitsQuantizer HQQ 4-bit, QDQ, block 128"),
    Candidate("ORT HQQ g64", "peer", peers.ort_nbits("hqq", 64), "MatMulNBitsQuantizer HQQ 4-bit, QDQ, block 64", tier="all"),
    Candidate("ORT static int8", "peer", peers.ort_static("int8"), "quantize_static QDQ, per-channel s8 W, per-tensor u8 A, MinMax, 8×128 calib tokens"),
    Candidate("ORT static int8 s8-act", "peer", peers.ort_static("int8", signed_act=True),
              "as above with s8 activations (ORT's QDQ default)", tier="all"),
    Candidate("ORT static fp8", "peer", peers.ort_static("fp8", n_windows=4), "quantize_static QDQ FP8 E4M3 (Distribution calib forced), 4×128 calib tokens", tier="full"),
    Candidate("ORT dynamic int8", "peer", peers.ort_dynamic, "quantize_dynamic per-channel QInt8 (MatMulInteger, ORT-only ops)"),
)

ENCODER: tuple[Candidate, ...] = (
    Candidate("fp32", "reference", None, "optimum export, opset 21"),
    Candidate("edgeq fp8", "edgeq", _edgeq("fp8"), "E4M3 W8A8"),
    Candidate("edgeq int8-sq", "edgeq", _edgeq("int8"), "INT8 W8A8 SmoothQuant"),
    Candidate("edgeq int8-wo", "edgeq", _edgeq("int8-wo"), "INT8 weight-only, GPTQ rounding"),
    Candidate("edgeq int8-wo nearest", "edgeq", _edgeq("int8-wo", rounding="nearest"), "INT8 weight-only, round to nearest"),
    Candidate("edgeq int4-awq g128", "edgeq", _edgeq("int4-awq", block_size=128), "INT4 AWQ asymmetric block 128"),
    Candidate("edgeq int4-awq g128 sym", "edgeq", _edgeq("int4-awq", block_size=128, asymmetric=False), "INT4 AWQ symmetric block 128"),
    Candidate("edgeq int4-awq g128 gptq", "edgeq", _edgeq("int4-awq", block_size=128, rounding="gptq"), "INT4 AWQ asymmetric + GPTQ rounding block 128"),
    Candidate("edgeq int4-awq g32 gptq", "edgeq", _edgeq("int4-awq", block_size=32, rounding="gptq", calib_tokens=32768),
              "INT4 AWQ asymmetric + GPTQ rounding, block 32, 32768 calibration tokens"),
    Candidate("edgeq int8-sq mixed", "edgeq", _edgeq("int8", accuracy_budget="cosine>=0.997"),
              "INT8 W8A8 SmoothQuant + mixed precision, budget cosine>=0.997 on held-out calibration text "
              "(0.995 there gave 0.9938 on eval.txt: the held-out text is easier)"),
    Candidate("ORT dynamic int8", "peer", peers.ort_dynamic, "quantize_dynamic per-channel QInt8"),
    Candidate("optimum avx512_vnni (sentence-transformers int8)", "peer", peers.optimum_avx512_vnni,
              "ORTQuantizer AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)"),
    Candidate("ORT RTN g128", "peer", peers.ort_nbits("rtn", 128), "MatMulNBitsQuantizer RTN QDQ block 128"),
)

REGISTRY: dict[str, tuple[Candidate, ...]] = {"smollm2-135m": LM, "minilm-l6": ENCODER}


def slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in label)


def model_path(model: str, cand: Candidate) -> Path:
    if cand.produce is None:
        return cached_export(model) / "model.onnx"
    return MODELS_DIR / model / slug(cand.label) / "model.onnx"


def produce(model: str, cand: Candidate, *, fresh: bool) -> tuple[Path, float | None]:
    """The candidate's ONNX (made now when ``fresh`` or missing) and the seconds making it took (None if reused)."""
    src = cached_export(model)
    if cand.produce is None:
        return src / "model.onnx", None
    out = model_path(model, cand).parent
    if out.exists() and not fresh and (out / "model.onnx").is_file():
        return out / "model.onnx", None
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    cand.produce(src, tmp)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out / "model.onnx", seconds
