"""The built-in scheme handlers: the plugin module that registers edgeq's schemes (imported by the package).

Each handler says what its scheme costs (weight bits), what hardware it needs (the target checks) and
where its math lives; the implementations (torch) are imported when a handler quantizes, so listing or
validating schemes stays cheap. A new scheme is one config class plus one handler like these, in any
module that is imported before the scheme is used.
"""

from __future__ import annotations

from typing import Any

from edgeq.converters.quantize.config import (
    Fp8Config,
    Fp8DynamicConfig,
    Fp16Config,
    Int4AwqConfig,
    Int4RtnConfig,
    Int8SmoothQuantConfig,
    Int8WeightOnlyConfig,
    NvFp4Config,
    NvFp4WeightOnlyConfig,
)
from edgeq.converters.quantize.registry import QuantContext, SchemeHandler, register_handler
from edgeq.sdk.bundle.flavours import TENSORRT_FLAVOURS

#: bits of one stored scale or offset: DQ scales are FP16 in the graphs GPU engines run (quantize/half.py)
_SCALE_BITS = 16


@register_handler
class Fp16(SchemeHandler):
    """The reference and the fallback: nothing is quantized."""

    name = "fp16"
    config = Fp16Config

    def weight_bits(self, cfg: Any) -> float:
        return 16.0

    def quantize(self, ctx: QuantContext) -> dict:
        return {}


@register_handler
class Fp8(SchemeHandler):
    """FP8 E4M3 W8A8 (``fp8.py``)."""

    name = "fp8"
    config = Fp8Config
    # FP8 tensor cores arrive with Ada (sm89); Ampere (sm86) and Jetson Orin (sm87) have none
    min_compute_capability = "8.9"

    def weight_bits(self, cfg: Any) -> float:
        return 8.0  # one scale per output channel: negligible per weight

    def quantize(self, ctx: QuantContext) -> dict:
        from edgeq.converters.quantize.fp8 import quantize_fp8

        return quantize_fp8(ctx)


#: why no TensorRT flavour builds dynamic FP8 activations: TensorRT's DynamicQuantize takes NVFP4 16-blocks and MXFP8
#: 32-blocks only (its operator docs), and TensorRT-RTX 1.7 refuses the written-out form (measured on tiny-llama,
#: sm89: "has datatype FP8 but is not produced by ... IQuantizeLayer")
NO_DYNAMIC_FP8 = ("TensorRT has no per-token FP8 quantizer (its DynamicQuantize takes NVFP4 and MXFP8 blocks only); "
                  "fp8-dynamic checkpoints are for vLLM: use fp8 for TensorRT targets")


@register_handler
class Fp8Dynamic(SchemeHandler):
    """FP8 E4M3 weights per channel, per-token dynamic FP8 activations (``fp8.py``)."""

    name = "fp8-dynamic"
    config = Fp8DynamicConfig
    min_compute_capability = "8.9"
    refused_flavours = dict.fromkeys(TENSORRT_FLAVOURS, NO_DYNAMIC_FP8)

    def weight_bits(self, cfg: Any) -> float:
        return 8.0

    def quantize(self, ctx: QuantContext) -> dict:
        from edgeq.converters.quantize.fp8 import quantize_fp8_dynamic

        return quantize_fp8_dynamic(ctx)


@register_handler
class Int8SmoothQuant(SchemeHandler):
    """INT8 W8A8 with SmoothQuant (``smoothquant.py``)."""

    name = "int8"
    config = Int8SmoothQuantConfig
    refused_flavours = {
        "tensorrt_rtx": "TensorRT-RTX runs INT8 only as weight-only GEMM (its support matrix); use int8-wo or fp8",
    }

    def weight_bits(self, cfg: Any) -> float:
        return 8.0

    def quantize(self, ctx: QuantContext) -> dict:
        from edgeq.converters.quantize.smoothquant import quantize_int8_sq

        return quantize_int8_sq(ctx)


@register_handler
class Int8WeightOnly(SchemeHandler):
    """INT8 weight-only, GPTQ or nearest rounding (``rtn.py``, ``gptq.py``)."""

    name = "int8-wo"
    config = Int8WeightOnlyConfig

    def weight_bits(self, cfg: Any) -> float:
        return 8.0

    def quantize(self, ctx: QuantContext) -> dict:
        from edgeq.converters.quantize.rtn import quantize_int8_wo

        return quantize_int8_wo(ctx)


class _Int4Blocks(SchemeHandler):
    """INT4 blocks along the input dimension: a scale per block, and an offset per block when asymmetric."""

    block_int4 = True

    def weight_bits(self, cfg: Any) -> float:
        per_block = _SCALE_BITS * (2 if cfg.asymmetric else 1)
        return 4.0 + per_block / cfg.block_size


@register_handler
class Int4Rtn(_Int4Blocks):
    """INT4 round-to-nearest (``rtn.py``)."""

    name = "int4-rtn"
    config = Int4RtnConfig

    def quantize(self, ctx: QuantContext) -> dict:
        from edgeq.converters.quantize.rtn import quantize_int4_rtn

        return quantize_int4_rtn(ctx)


@register_handler
class Int4Awq(_Int4Blocks):
    """INT4 AWQ (``awq.py``)."""

    name = "int4-awq"
    config = Int4AwqConfig

    def quantize(self, ctx: QuantContext) -> dict:
        from edgeq.converters.quantize.awq import quantize_int4_awq

        return quantize_int4_awq(ctx)


class _NvFp4(SchemeHandler):
    """NVFP4 (``nvfp4.py``): E2M1 weights, an E4M3 scale per 16-block and an FP32 scale per tensor."""

    # FP4 tensor cores arrive with Blackwell: sm100/sm110 (B200, Jetson Thor), sm120/sm121 (RTX 50xx, DGX Spark)
    min_compute_capability = "10.0"
    #: ONNX Runtime CPU has no DequantizeLinear(23) kernel for FLOAT4E2M1 (checked with onnxruntime 1.32):
    #: the quantizer validates this scheme through its torch simulation of the graph instead
    runs_on_onnxruntime_cpu = False

    def weight_bits(self, cfg: Any) -> float:
        return 4.0 + 8 / 16  # one E4M3 scale per 16 weights; the tensor's FP32 scale is negligible

    def target_problem(self, profile: Any) -> str | None:
        problem = super().target_problem(profile)
        if problem is not None and self.min_compute_capability and "compute capability" in problem:
            return (f"{self.name} needs Blackwell FP4 tensor cores (compute capability >= {self.min_compute_capability}); "
                    f"{profile.name} is {profile.compute_capability}, where TensorRT refuses FP4 "
                    "('the model contains HW-specific datatypes: fp4_e2m1')")
        return problem

    def quantize(self, ctx: QuantContext) -> dict:
        from edgeq.converters.quantize.nvfp4 import quantize_nvfp4

        return quantize_nvfp4(ctx)


@register_handler
class NvFp4(_NvFp4):
    """NVFP4 W4A4: weights and (dynamically, per 16-block) activations in FP4."""

    name = "nvfp4"
    config = NvFp4Config


@register_handler
class NvFp4WeightOnly(_NvFp4):
    """NVFP4 W4A16: FP4 weights, FP16 activations."""

    name = "nvfp4-wo"
    config = NvFp4WeightOnlyConfig
