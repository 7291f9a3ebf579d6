"""Read each format's tensors into PublishedLinears (codes unpacked, scales as published).

The unpacking is written here from the published layouts (formats.py), not borrowed from a writer, so the
tests can hold it against the writers' own code (compressed-tensors' compressors and converters).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from edgeq.converters.prequant.formats import (
    AWQ_GEMM, CT_FLOAT, CT_PACK, FP8_FINEGRAINED, PublishedLinear, QuantFormat,
)
from edgeq.errors import CorruptWeightsError, ModelNotFoundError

#: output column held by each 4-bit nibble (bits 4i) of an AutoAWQ GEMM int32 word
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)


class TensorSource:
    """The safetensors files of a checkpoint directory, read lazily by tensor name (CPU, no transformers)."""

    def __init__(self, directory: Path) -> None:
        from safetensors import safe_open

        index = directory / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in directory.glob("*.safetensors"))
        if not files:
            raise ModelNotFoundError(f"no safetensors weights in {directory}",
                                     hint="pre-quantized checkpoints are read from *.safetensors files")
        self._handles: dict[str, Any] = {}
        self._where: dict[str, Any] = {}
        for name in files:
            try:
                h = safe_open(str(directory / name), framework="pt")
            except Exception as exc:  # SafetensorError / OSError on a truncated or garbled header
                raise CorruptWeightsError(f"corrupt or truncated safetensors file {directory / name}: {exc}") from exc
            self._handles[name] = h
            for key in h.keys():
                self._where[key] = h

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._where[key].get_tensor(key)
        except KeyError:
            raise CorruptWeightsError(f"tensor {key} is missing from the checkpoint") from None
        except Exception as exc:
            raise CorruptWeightsError(f"cannot read tensor {key}: {exc}") from exc


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """int32 ``[rows, words]`` -> ``[rows, words, 8]`` unsigned 4-bit values, nibble i = bits 4i..4i+3."""
    if packed.dtype != torch.int32:
        raise CorruptWeightsError(f"packed INT4 tensor must be int32, got {packed.dtype}")
    return (packed.unsqueeze(-1) >> _SHIFTS) & 0xF


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """AutoAWQ GEMM int32 ``[rows, cols/8]`` -> unsigned codes ``[rows, cols]`` (int8, 0..15) in column order."""
    nib = _nibbles(packed)
    out = torch.empty_like(nib)
    out[..., list(AWQ_ORDER)] = nib  # nibble i holds column AWQ_ORDER[i] of its group of eight
    return out.reshape(packed.shape[0], -1).to(torch.int8)


def unpack_ct(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """compressed-tensors int32 ``[rows, ceil(cols/8)]`` -> signed codes ``[rows, cols]`` (stored as code + 8)."""
    nib = _nibbles(packed).reshape(packed.shape[0], -1)[:, :cols]
    return (nib - 8).to(torch.int8)


def read_published(src: TensorSource, fmt: QuantFormat) -> dict[str, PublishedLinear]:
    """{module path: PublishedLinear} for every linear the checkpoint publishes quantized."""
    readers = {FP8_FINEGRAINED: _read_fp8, AWQ_GEMM: _read_awq, CT_PACK: _read_ct_pack, CT_FLOAT: _read_ct_float}
    return readers[fmt.name](src, fmt)


def published_tensor_names(module: str, fmt: QuantFormat) -> tuple[str, ...]:
    """The checkpoint tensors that make up one published linear (they replace its ``weight``)."""
    suffix = {FP8_FINEGRAINED: ("weight", "weight_scale_inv"), AWQ_GEMM: ("qweight", "qzeros", "scales"),
              CT_PACK: ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape"),
              CT_FLOAT: ("weight", "weight_scale", "input_scale")}[fmt.name]
    return tuple(f"{module}.{s}" for s in suffix)


def _modules_with(src: TensorSource, suffix: str) -> list[str]:
    return sorted(k[: -len(suffix) - 1] for k in src.keys() if k.endswith("." + suffix))


def _read_fp8(src: TensorSource, fmt: QuantFormat) -> dict[str, PublishedLinear]:
    assert fmt.weight_block is not None  # parse_quantization_config requires weight_block_size
    out = {}
    for m in _modules_with(src, "weight_scale_inv"):
        q = src.get(f"{m}.weight")
        if q.dtype != torch.float8_e4m3fn:
            raise CorruptWeightsError(f"{m}.weight has dtype {q.dtype}, an FP8 checkpoint stores float8_e4m3fn")
        out[m] = PublishedLinear(m, "fp8", q, src.get(f"{m}.weight_scale_inv"), fmt.weight_block)
    return out


def _read_awq(src: TensorSource, fmt: QuantFormat) -> dict[str, PublishedLinear]:
    assert fmt.weight_block is not None
    group = fmt.weight_block[1]
    out = {}
    for m in _modules_with(src, "qweight"):
        codes = unpack_awq(src.get(f"{m}.qweight"))  # [in, out]
        scales = src.get(f"{m}.scales")  # [in/g, out]
        # qzeros is written whatever zero_point says; without it the codes are symmetric about 8
        zeros = unpack_awq(src.get(f"{m}.qzeros")) if f"{m}.qzeros" in src else None
        if codes.shape[0] != scales.shape[0] * group or codes.shape[1] != scales.shape[1]:
            raise CorruptWeightsError(f"{m}: qweight {list(codes.shape)} does not fit scales {list(scales.shape)} "
                                      f"at group size {group}")
        # to edgeq's [out, in] layout with signed codes: w = (q - z) * s = ((q - 8) - (z - 8)) * s
        q = (codes.T.contiguous() - 8).to(torch.int8)
        zero = None if zeros is None else (zeros[:, : scales.shape[1]].T.contiguous() - 8).to(torch.int8)
        out[m] = PublishedLinear(m, "int4", q, scales.T.contiguous(), (1, group), zero=zero)
    return out


def _read_ct_pack(src: TensorSource, fmt: QuantFormat) -> dict[str, PublishedLinear]:
    out = {}
    for m in _modules_with(src, "weight_packed"):
        shape = [int(v) for v in src.get(f"{m}.weight_shape").tolist()]
        scale = src.get(f"{m}.weight_scale")
        if len(shape) != 2 or scale.dim() != 2 or shape[1] % scale.shape[1]:
            raise CorruptWeightsError(f"{m}: weight_shape {shape} and weight_scale {list(scale.shape)} do not fit")
        group = shape[1] // scale.shape[1]
        q = unpack_ct(src.get(f"{m}.weight_packed"), shape[1])
        zero = None
        if f"{m}.weight_zero_point" in src:
            zp = src.get(f"{m}.weight_zero_point")  # [ceil(out/8), groups], packed along the output axis
            zero = unpack_ct(zp.T.contiguous(), shape[0]).T.contiguous()
        out[m] = PublishedLinear(m, "int4", q, scale, (1, group), zero=zero)
    return out


def _ct_block(fmt: QuantFormat) -> tuple[int, int] | None:
    for g in (fmt.raw.get("config_groups") or {}).values():
        w = g.get("weights") or {}
        if w.get("strategy") == "block" and w.get("block_structure"):
            return int(w["block_structure"][0]), int(w["block_structure"][1])
    return None


def _read_ct_float(src: TensorSource, fmt: QuantFormat) -> dict[str, PublishedLinear]:
    out = {}
    for m in _modules_with(src, "weight_scale"):
        q = src.get(f"{m}.weight")
        if q.dtype != torch.float8_e4m3fn:
            continue  # a module quantized some other way under a second group: left to the FP path
        scale = src.get(f"{m}.weight_scale")
        out_f, in_f = q.shape
        found = _ct_block(fmt)
        if found is not None and scale.dim() == 2 and tuple(scale.shape) == (-(-out_f // found[0]), -(-in_f // found[1])):
            block = found
        elif scale.numel() == 1:
            block, scale = (out_f, in_f), scale.reshape(1, 1)
        elif scale.dim() == 2 and scale.shape == (out_f, 1):
            block = (1, in_f)
        else:
            raise CorruptWeightsError(f"{m}: weight_scale {list(scale.shape)} is neither per tensor, channel nor block")
        act = float(src.get(f"{m}.input_scale").float().reshape(-1)[0]) if f"{m}.input_scale" in src else None
        out[m] = PublishedLinear(m, "fp8", q, scale, block, act_scale=act)
    return out


def is_ignored(module: str, patterns: tuple[str, ...]) -> bool:
    """compressed-tensors / transformers ignore lists: ``re:<regex>`` or a module name (or its last parts)."""
    for p in patterns:
        if p.startswith("re:"):
            if re.match(p[3:], module):
                return True
        elif module == p or module.endswith("." + p):
            return True
    return False
