"""The configs of the ``prequantized`` and ``fp8-block`` schemes (torch-free; their handlers are in ``handlers``)."""

from __future__ import annotations

from dataclasses import dataclass

from edgeq.converters.quantize.config import ACT_CALIB_METHODS, QuantConfig
from edgeq.errors import ConfigError

FP8_ACTIVATIONS = ("auto", "static", "none")
FP8_BLOCK_ACTIVATIONS = ("dynamic", "none")


@dataclass(frozen=True)
class PrequantizedConfig(QuantConfig):
    """Keep a pre-quantized checkpoint's published weights exactly (see the module docstring).

    Args:
        quantize_lm_head: on by default here: a head the checkpoint publishes quantized stays as published
            (a head it left in FP stays FP either way).
        fp8_activations: ``auto`` (default: ``static`` for per-channel/per-tensor FP8 weights, ``none`` for
            block-scaled ones), ``static`` (per-tensor FP8 scales on FP8 layers' inputs, W8A8: calibrated, or
            the checkpoint's ``input_scale``) or ``none`` (weight-only FP8).
        act_calib / percentile: how ``static`` scales are calibrated (as the ``fp8`` scheme).
        max_kl / min_cosine: the ONNX is checked against the dequantized FP model, which it equals up to
            activation quantization and summation order.
    """

    quantize_lm_head: bool = True
    fp8_activations: str = "auto"
    act_calib: str = "max"
    percentile: float = 99.99
    max_kl: float = 0.1
    min_cosine: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fp8_activations not in FP8_ACTIVATIONS:
            raise ConfigError(f"fp8_activations must be one of {FP8_ACTIVATIONS}, got {self.fp8_activations!r}")
        if self.act_calib not in ("max", "percentile"):
            raise ConfigError(f"act_calib must be max or percentile here (of {ACT_CALIB_METHODS}), got {self.act_calib!r}")
        if not 90.0 <= self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in [90, 100], got {self.percentile}")

    @property  # type: ignore[override]
    def needs_calibration(self) -> bool:
        return self.fp8_activations != "none"


@dataclass(frozen=True)
class Fp8BlockConfig(QuantConfig):
    """FP8 E4M3 weights, one FP32 scale per square block, nearest rounding (see fp8_block.py).

    Args:
        block_size: the block's edge; None (default) picks 128, the released checkpoints' block, when every
            quantized linear's sizes are multiples of it, else the largest power of two >= 16 dividing them all
            (SmolLM2's 576: 64), since the readers' activation quantizer takes only whole blocks of input.
        activations: ``dynamic`` (default): the ONNX quantizes each input per token and ``block_size`` channels,
            as the checkpoint's readers do (transformers' FP8Linear, vLLM), so both compute the same;
            ``none``: weight-only (W8A16).
    """

    block_size: int | None = None
    activations: str = "dynamic"
    max_kl: float = 0.05
    min_cosine: float = 0.995

    def __post_init__(self) -> None:
        super().__post_init__()
        b = self.block_size
        if b is not None and (b < 16 or b & (b - 1)):
            raise ConfigError(f"block_size must be a power of two >= 16, got {b}")
        if self.activations not in FP8_BLOCK_ACTIVATIONS:
            raise ConfigError(f"activations must be one of {FP8_BLOCK_ACTIVATIONS}, got {self.activations!r}")
