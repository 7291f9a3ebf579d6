"""Quantization schemes as frozen, typed, versioned configs.

Each scheme is one dataclass; its handler (``registry.py``, keyed by the config type) gives it its name.
``get_config("int4-awq", block_size=64)`` builds a validated instance and ``to_dict``/``from_dict``
round-trip it through JSON (the bundle manifest records it). Validation raises ConfigError from
``__post_init__`` (never ``assert``). Torch-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from edgeq.converters.quantize.registry import handler_for, handler_named
from edgeq.errors import ConfigError
# what the emitted graph may compute in: one table with the target profiles (the bundle format's)
from edgeq.sdk.bundle.flavours import COMPUTE_DTYPES

CONFIG_VERSION = 1
ACT_CALIB_METHODS = ("max", "percentile", "mse")
ROUNDINGS = ("gptq", "nearest")


@dataclass(frozen=True)
class QuantConfig:
    """Fields shared by every scheme.

    Args:
        keep_fp16: globs of linear names (torch module paths, e.g. ``model.layers.0.*``) left unquantized.
        quantize_lm_head: quantize the LM head too (off: the head is the most sensitive layer of small LMs).
        compute_dtype: activation dtype of the emitted graph. ``float32`` (default) is what ONNX Runtime CPU
            runs fastest and what its int4 MatMulNBits fusion takes; ``float16`` is for GPU engines.
        calib_tokens: calibration tokens used for statistics (bounds memory: one block's activations).
        calib_seq_len: tokens per calibration sequence (capped by the model's max positions).
        holdout_tokens: tokens at the end of the calibration text held out for budget/validation checks (2048:
            a perplexity on 1024 tokens moves by ~0.5-1% between graphs whose KL differs by 2%, which is a whole
            accuracy budget).
        validate: compare the quantized ONNX with the FP reference on held-out text and fail past ``max_kl``
            (LMs) or below ``min_cosine`` (encoders).
    """

    #: whether the scheme needs activation statistics (calibration forward passes)
    needs_calibration: ClassVar[bool] = False
    #: whether the scheme rewrites FP weights (scale folding), which forces a fresh export
    folds_scales: ClassVar[bool] = False

    keep_fp16: tuple[str, ...] = ()
    quantize_lm_head: bool = False
    compute_dtype: str = "float32"
    calib_tokens: int = 4096
    calib_seq_len: int = 512
    holdout_tokens: int = 2048
    validate: bool = True
    max_kl: float = 0.5
    min_cosine: float = 0.95

    def __post_init__(self) -> None:
        if isinstance(self.keep_fp16, (list, str)):
            object.__setattr__(self, "keep_fp16", (self.keep_fp16,) if isinstance(self.keep_fp16, str) else tuple(self.keep_fp16))
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        for name in ("calib_tokens", "calib_seq_len", "holdout_tokens"):
            if int(getattr(self, name)) < 16:
                raise ConfigError(f"{name} must be >= 16, got {getattr(self, name)}")
        if self.max_kl <= 0 or not 0 < self.min_cosine <= 1:
            raise ConfigError("max_kl must be > 0 and min_cosine in (0, 1]")

    @property
    def scheme(self) -> str:
        """The scheme name, which the config type's registered handler owns."""
        return handler_for(self).name

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        return {"version": CONFIG_VERSION, "scheme": self.scheme, **d}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> QuantConfig:
        data = dict(data)
        version = data.pop("version", None)
        if version != CONFIG_VERSION:
            raise ConfigError(f"unsupported quant config version {version!r} (this edgeq reads {CONFIG_VERSION})")
        scheme = data.pop("scheme", None)
        return get_config(str(scheme), **data)

    def with_overrides(self, **overrides: Any) -> QuantConfig:
        """A copy with ``overrides`` applied and validated."""
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return _build(type(self), {**current, **overrides})


@dataclass(frozen=True)
class Fp16Config(QuantConfig):
    """No quantization: the reference and the fallback (weights stay in the compute dtype)."""


@dataclass(frozen=True)
class _ActCalib(QuantConfig):
    """Static per-tensor activation scales from calibration: ``max`` of |x|, the ``percentile`` of |x|, or
    ``mse``: the clipped range (a grid below the max) minimising the linear's output error."""

    needs_calibration: ClassVar[bool] = True
    act_calib: str = "max"
    percentile: float = 99.99

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.act_calib not in ACT_CALIB_METHODS:
            raise ConfigError(f"act_calib must be one of {ACT_CALIB_METHODS}, got {self.act_calib!r}")
        if not 90.0 <= self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in [90, 100], got {self.percentile}")


@dataclass(frozen=True)
class Fp8Config(_ActCalib):
    """FP8 E4M3 W8A8: per-output-channel weight scales, per-tensor static activation scales. ``act_calib``: the max
    (default), or ``mse``, the clipped range with the least output error of the linears reading each input
    (SmolLM2, FP16 graph, held-out calibration text: mean KL 0.0377 against 0.0396 with the max, for 30 s more
    calibration on 2 cores; ``percentile`` at 99.99 breaks it, KL 1.64: E4M3's outliers carry the signal)."""

    max_kl: float = 0.1
    min_cosine: float = 0.99


@dataclass(frozen=True)
class Fp8DynamicConfig(QuantConfig):
    """FP8 E4M3 weights per output channel, activations quantized at run time with one scale per token (the
    ``FP8_DYNAMIC`` scheme of llm-compressor, which vLLM runs from a compressed-tensors checkpoint). No
    calibration pass. TensorRT has no per-token FP8 quantizer, so this is a checkpoint scheme (``edgeq quantize
    -s fp8-dynamic --format hf``); its ONNX writes the arithmetic out for ONNX Runtime (``qdq.dynamic_fp8_nodes``)."""

    max_kl: float = 0.1
    min_cosine: float = 0.99


@dataclass(frozen=True)
class Int8SmoothQuantConfig(_ActCalib):
    """INT8 W8A8 with SmoothQuant: migration strength ``alpha``; ``None`` searches it per layer group."""

    folds_scales: ClassVar[bool] = True
    act_calib: str = "max"
    alpha: float | None = None
    alpha_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    max_kl: float = 0.3
    min_cosine: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "alpha_grid", tuple(float(a) for a in self.alpha_grid))
        for a in ((self.alpha,) if self.alpha is not None else ()) + self.alpha_grid:
            if not 0.0 <= a <= 1.0:
                raise ConfigError(f"SmoothQuant alpha must be in [0, 1], got {a}")
        if self.alpha is None and not self.alpha_grid:
            raise ConfigError("alpha_grid must not be empty when alpha is searched")


@dataclass(frozen=True)
class _Rounding(QuantConfig):
    """How weight-only schemes pick integers on their grid: ``gptq`` rounds one input column at a
    time and compensates its error in the columns left, through the inverse Hessian of calibration inputs
    (Frantar et al. 2023; ``gptq_damp`` is the dampening as a fraction of the mean diagonal); ``nearest``
    is plain round-to-nearest. Both write the same grid and the same QDQ file format."""

    rounding: str = "gptq"
    gptq_damp: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if not 0.0 < self.gptq_damp <= 1.0:
            raise ConfigError(f"gptq_damp must be in (0, 1], got {self.gptq_damp}")


@dataclass(frozen=True)
class Int8WeightOnlyConfig(_Rounding):
    """INT8 weight-only (W8A16): symmetric per-output-channel scales; GPTQ rounding on calibration inputs
    (``rounding="nearest"``: plain rounding, no calibration)."""

    max_kl: float = 0.05
    min_cosine: float = 0.995

    @property  # type: ignore[override]
    def needs_calibration(self) -> bool:
        return self.rounding == "gptq"


@dataclass(frozen=True)
class _Int4(QuantConfig):
    """INT4 block-wise along the input dimension.

    ``asymmetric`` (default): each block's [min, max] maps onto the 16 codes, ``w = q * scale + offset``, as
    a zero point would; TensorRT takes no INT4 zero points, so the file keeps a symmetric DequantizeLinear
    and adds the offsets as an exact correction ``(x @ block indicator) @ offsets`` (two small MatMuls per
    layer, block sums shared by layers reading one input). ``False``: symmetric blocks, nothing extra.

    ``block_size`` is the requested size; a layer whose input size it does not divide gets the largest
    power of two (>= 16, what ORT's int4 kernels take) up to it that does, recorded per layer.
    ``head_bits``: with ``quantize_lm_head``, the head's weights are INT8 per channel (8, default: the most
    sensitive layer of a small LM loses little) or INT4 blocks like the rest (4: smallest and fastest).
    """

    block_size: int = 128
    head_bits: int = 8
    asymmetric: bool = True
    max_kl: float = 0.5
    min_cosine: float = 0.95

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_bits not in (4, 8):
            raise ConfigError(f"head_bits must be 4 or 8, got {self.head_bits}")
        if not isinstance(self.asymmetric, bool):
            raise ConfigError(f"asymmetric must be true or false, got {self.asymmetric!r}")
        b = int(self.block_size)
        if b < 16 or b & (b - 1):
            raise ConfigError(f"block_size must be a power of two >= 16, got {self.block_size}",
                              hint="use 32, 64 or 128")


@dataclass(frozen=True)
class Int4RtnConfig(_Int4):
    """INT4 round-to-nearest: the baseline at the same block size."""


@dataclass(frozen=True)
class Int4AwqConfig(_Int4, _Rounding):
    """INT4 AWQ: per-channel scale search (``s = mean|x|^r`` over ``n_grid`` exponents), inverse folded
    into the preceding norm/linear, then a per-block clipping search over ``clip_steps`` shrink steps, and
    round to nearest (``rounding="nearest"``, default: AWQ as published). ``"gptq"`` rounds the scaled
    weights with GPTQ instead, each block's clip searched as GPTQ reaches it (measured: better on MiniLM,
    worse on the offline SmolLM2, whose weights sit on a GGUF Q4_1 grid that nearest rounding finds again)."""

    rounding: str = "nearest"

    needs_calibration: ClassVar[bool] = True
    folds_scales: ClassVar[bool] = True
    n_grid: int = 20
    clip_search: bool = True
    max_shrink: float = 0.5
    clip_steps: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_grid < 1 or self.clip_steps < 1:
            raise ConfigError("n_grid and clip_steps must be >= 1")
        if not 0.0 <= self.max_shrink < 1.0:
            raise ConfigError(f"max_shrink must be in [0, 1), got {self.max_shrink}")


@dataclass(frozen=True)
class NvFp4Config(_ActCalib):
    """NVFP4 W4A4 for Blackwell (``nvfp4.py``): E2M1 weights with an E4M3 scale per 16-block and one FP32 scale
    per tensor; each linear's input quantized the same way at run time (TensorRT's DynamicQuantize, per 16-block
    along the hidden axis) under a static per-tensor scale from calibration (``act_calib``: max or percentile)."""

    #: W4A4 (this config) or W4A16 (``NvFp4WeightOnlyConfig``): a class constant, not an option
    activations: ClassVar[bool] = True
    max_kl: float = 0.5
    min_cosine: float = 0.95

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.act_calib == "mse":
            raise ConfigError("nvfp4 calibrates its activation scale by max or percentile, not mse")


@dataclass(frozen=True)
class NvFp4WeightOnlyConfig(QuantConfig):
    """NVFP4 weight-only (W4A16): the weights of ``NvFp4Config``, activations in the compute dtype. Plain
    nearest rounding on the E2M1 grid: no calibration pass."""

    activations: ClassVar[bool] = False
    max_kl: float = 0.3
    min_cosine: float = 0.97


def _build(cls: type[QuantConfig], kwargs: dict[str, Any]) -> QuantConfig:
    name = handler_for(cls).name
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for scheme {name!r}; valid: {sorted(known)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad options for scheme {name!r}: {exc}") from exc


def get_config(scheme: str, **overrides: Any) -> QuantConfig:
    """Scheme name -> frozen config with ``overrides`` applied and validated. ``None`` values are ignored.

    Raises ConfigError for an unknown scheme (listing the valid ones) or an invalid/unknown option.
    """
    cls = handler_named(scheme).config
    return _build(cls, {k: v for k, v in overrides.items() if v is not None or k == "alpha"})
