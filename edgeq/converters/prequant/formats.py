"""What a pre-quantized checkpoint publishes, format by format, and the exact dequantization of each.

Three families, as their writers lay them out (layouts checked against compressed-tensors' own converters):

- fine-grained FP8 (``quant_method: fp8``; DeepSeek-V3, Qwen3-*-FP8): ``weight`` E4M3 ``[out, in]`` and
  ``weight_scale_inv`` ``[ceil(out/bo), ceil(in/bi)]`` (FP32 or BF16), one scale per ``bo x bi`` block,
  ``w = q * scale_inv``;
- AutoAWQ GEMM (``quant_method: awq``, ``version: gemm``): ``qweight`` ``[in, out/8]`` int32 holding eight
  unsigned 4-bit codes per word in the order 0, 2, 4, 6, 1, 3, 5, 7; ``qzeros`` ``[in/g, out/8]`` packed the
  same way; ``scales`` ``[in/g, out]`` FP16; ``w = (q - z) * s``;
- compressed-tensors (``quant_method: compressed-tensors``, llm-compressor): ``pack-quantized`` (``weight_packed``
  ``[out, in/8]`` int32, code ``c`` at bits ``4i`` stored as ``c + 8``; ``weight_zero_point`` packed along the
  output axis; ``weight_scale`` ``[out, in/g]``; ``w = (q - zp) * s``) and ``float-quantized`` (``weight`` E4M3,
  ``weight_scale`` per tensor, channel or block; ``w = q * s``).

Every PublishedLinear keeps the codes as signed values (INT4 in [-8, 7], so AWQ's unsigned codes and zeros are
shifted by 8) and the scales in the dtype they were published in. ``dequant`` computes in FP32: for 16-bit
scales the INT4 product is exact and the FP8 product is exact, so the result rounds to the published dtype
exactly as the writers' own dequantization in that dtype does; FP32 scales give FP8 products rounded once, as
the reference dequantizers (which upcast to FP32) compute them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from edgeq.errors import ConfigError, UnsupportedArchitectureError

FP8_FINEGRAINED = "fp8"
AWQ_GEMM = "awq"
CT_PACK = "compressed-tensors/pack-quantized"
CT_FLOAT = "compressed-tensors/float-quantized"
FORMATS = (FP8_FINEGRAINED, AWQ_GEMM, CT_PACK, CT_FLOAT)
#: the kind of plan each format becomes
FORMAT_KIND = {FP8_FINEGRAINED: "fp8", AWQ_GEMM: "int4", CT_PACK: "int4", CT_FLOAT: "fp8"}


@dataclass(frozen=True)
class QuantFormat:
    """The checkpoint's ``quantization_config``, reduced to what edgeq reads and validated.

    Args:
        name: one of ``FORMATS``.
        weight_block: ``(rows, cols)`` sharing one scale for fine-grained FP8 (``weight_block_size``);
            ``(1, group_size)`` for AWQ; None where each tensor's scale shape says it (compressed-tensors).
        zero_point: whether INT4 codes carry zero points (AWQ ``zero_point``, compressed-tensors ``symmetric: false``).
        activation_scheme: what the checkpoint asks of activations (``dynamic`` for fine-grained FP8, ``static``
            when compressed-tensors publishes ``input_scale``, ``none`` for weight-only).
        ignore: module names (or ``re:`` patterns) the checkpoint leaves unquantized.
        raw: the ``quantization_config`` as published (recorded in reports).
    """

    name: str
    weight_block: tuple[int, int] | None = None
    zero_point: bool = False
    activation_scheme: str = "none"
    ignore: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.name not in FORMATS:
            raise ConfigError(f"unknown pre-quantized format {self.name!r}; edgeq reads {', '.join(FORMATS)}")
        if self.weight_block is not None:
            if len(self.weight_block) != 2 or min(int(b) for b in self.weight_block) < 1:
                raise ConfigError(f"weight block must be two positive integers, got {self.weight_block!r}")
            object.__setattr__(self, "weight_block", (int(self.weight_block[0]), int(self.weight_block[1])))
        if self.activation_scheme not in ("none", "dynamic", "static"):
            raise ConfigError(f"activation scheme must be none, dynamic or static, got {self.activation_scheme!r}")
        object.__setattr__(self, "ignore", tuple(self.ignore))

    @property
    def kind(self) -> str:
        """``fp8`` or ``int4``: the plan kind these weights become."""
        return FORMAT_KIND[self.name]

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.name, "kind": self.kind, "weight_block": list(self.weight_block or ()) or None,
                "zero_point": self.zero_point, "activation_scheme": self.activation_scheme,
                "quantization_config": self.raw}


def parse_quantization_config(qc: dict[str, Any]) -> QuantFormat:
    """``config.json``'s ``quantization_config`` -> QuantFormat. UnsupportedArchitectureError for what edgeq
    cannot keep exactly (other methods, GEMV/Marlin AWQ, non-4-bit AWQ, other compressed-tensors formats)."""
    method = str(qc.get("quant_method", "")).lower()
    if method == "fp8":
        block = qc.get("weight_block_size")
        if block is None:
            raise UnsupportedArchitectureError(
                "FP8 checkpoint without weight_block_size (per-tensor FP8) is not supported",
                hint="edgeq reads the fine-grained (block-wise) FP8 layout of DeepSeek-V3 and Qwen3-*-FP8")
        if str(qc.get("fmt", "e4m3")).lower() != "e4m3":
            raise UnsupportedArchitectureError(f"FP8 format {qc.get('fmt')!r} is not supported (only e4m3)")
        return QuantFormat(FP8_FINEGRAINED, tuple(block), activation_scheme=str(qc.get("activation_scheme", "dynamic")),
                           ignore=tuple(qc.get("modules_to_not_convert") or qc.get("ignored_layers") or ()), raw=qc)
    if method == "awq":
        version = str(qc.get("version", "gemm")).lower()
        bits, group = int(qc.get("bits", qc.get("w_bit", 4))), int(qc.get("group_size", qc.get("q_group_size", 128)))
        if version != "gemm" or bits != 4 or group < 1:
            raise UnsupportedArchitectureError(
                f"AWQ {version} with {bits} bits, group {group} is not supported",
                hint="edgeq reads AutoAWQ GEMM checkpoints: 4 bits, a positive group size")
        return QuantFormat(AWQ_GEMM, (1, group), zero_point=bool(qc.get("zero_point", True)),
                           ignore=tuple(qc.get("modules_to_not_convert") or ()), raw=qc)
    if method == "compressed-tensors":
        return _parse_compressed_tensors(qc)
    raise UnsupportedArchitectureError(
        f"pre-quantized checkpoints with quant_method {method!r} are not supported",
        hint="edgeq reads fine-grained FP8 (fp8), AutoAWQ GEMM (awq) and compressed-tensors "
             "(pack-quantized, float-quantized) checkpoints")


def _parse_compressed_tensors(qc: dict[str, Any]) -> QuantFormat:
    groups = list((qc.get("config_groups") or {}).values())
    formats = {str(g.get("format") or qc.get("format") or "") for g in groups}
    if len(formats) != 1 or not groups:
        raise UnsupportedArchitectureError(f"compressed-tensors checkpoint with formats {sorted(formats)} is not supported",
                                           hint="edgeq reads one format per checkpoint: pack-quantized or float-quantized")
    fmt = formats.pop()
    weights = [g.get("weights") or {} for g in groups]
    acts = [g.get("input_activations") for g in groups]
    if fmt == "pack-quantized":
        bad = [w for w in weights if int(w.get("num_bits", 0)) != 4 or w.get("type") != "int"
               or w.get("strategy") != "group" or w.get("actorder")]
        if bad or any(a is not None for a in acts):
            raise UnsupportedArchitectureError(
                "compressed-tensors pack-quantized is supported as INT4 weight-only, group strategy, no act-order",
                hint=f"this checkpoint has weights {bad[0] if bad else weights[0]} and activations {acts[0]}")
        sym = {bool(w.get("symmetric", True)) for w in weights}
        return QuantFormat(CT_PACK, zero_point=False in sym, ignore=tuple(qc.get("ignore") or ()), raw=qc)
    if fmt == "float-quantized":
        bad = [w for w in weights if int(w.get("num_bits", 0)) != 8 or w.get("type") != "float"
               or w.get("strategy") not in ("tensor", "channel", "block") or not w.get("symmetric", True)]
        if bad:
            raise UnsupportedArchitectureError(
                "compressed-tensors float-quantized is supported as FP8 E4M3 weights per tensor, channel or block",
                hint=f"this checkpoint has weights {bad[0]}")
        static = any(a is not None and not a.get("dynamic", False) for a in acts)
        dynamic = any(a is not None and a.get("dynamic", False) for a in acts)
        return QuantFormat(CT_FLOAT, activation_scheme="static" if static else "dynamic" if dynamic else "none",
                           ignore=tuple(qc.get("ignore") or ()), raw=qc)
    raise UnsupportedArchitectureError(
        f"compressed-tensors format {fmt!r} is not supported", hint="edgeq reads pack-quantized and float-quantized")


@dataclass
class PublishedLinear:
    """One linear's published quantization, kept as the checkpoint stores it (codes signed).

    ``q``: ``[out, in]`` float8_e4m3fn (FP8) or int8 codes in [-8, 7] (INT4). ``scale``: ``[ceil(out/block[0]),
    ceil(in/block[1])]`` in the published dtype (INT4: ``[out, in/group]``). ``zero``: INT4 zero points, int8 in
    [-8, 7], same shape as ``scale``, or None (symmetric). ``act_scale``: a published static input scale.
    """

    name: str
    kind: str
    q: torch.Tensor
    scale: torch.Tensor
    block: tuple[int, int]
    zero: torch.Tensor | None = None
    act_scale: float | None = None

    def __post_init__(self) -> None:
        out_f, in_f = self.q.shape
        want = (-(-out_f // self.block[0]), -(-in_f // self.block[1]))
        if tuple(self.scale.shape) != want:
            raise UnsupportedArchitectureError(
                f"{self.name}: scale shape {list(self.scale.shape)} does not match weight {[out_f, in_f]} "
                f"in blocks of {list(self.block)} (expected {list(want)})")
        if self.zero is not None and self.zero.shape != self.scale.shape:
            raise UnsupportedArchitectureError(f"{self.name}: zero points {list(self.zero.shape)} vs scales {list(self.scale.shape)}")

    def expanded(self, t: torch.Tensor) -> torch.Tensor:
        """A per-block tensor repeated to one value per weight element ``[out, in]``."""
        out_f, in_f = self.q.shape
        return t.repeat_interleave(self.block[0], 0)[:out_f].repeat_interleave(self.block[1], 1)[:, :in_f]

    def dequant(self) -> torch.Tensor:
        """The FP32 weight ``[out, in]`` (see the module docstring for why FP32 is exact here)."""
        codes = self.q.float()
        if self.zero is not None:
            codes = codes - self.expanded(self.zero).float()
        return codes * self.expanded(self.scale.float())

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": list(self.q.shape), "block": list(self.block),
                "scale_dtype": str(self.scale.dtype).removeprefix("torch."), "zero_point": self.zero is not None,
                **({"act_scale": self.act_scale} if self.act_scale is not None else {})}


@dataclass
class Published:
    """A checkpoint's format and its published linears (by torch module path)."""

    format: QuantFormat
    linears: dict[str, PublishedLinear]
    source_dtype: str = "float32"  # torch_dtype of the checkpoint's unquantized tensors

    def summary(self) -> dict[str, Any]:
        dtypes = sorted({p.summary()["scale_dtype"] for p in self.linears.values()})
        return {**self.format.to_dict(), "published_layers": len(self.linears), "scale_dtypes": dtypes,
                "source_dtype": self.source_dtype}
