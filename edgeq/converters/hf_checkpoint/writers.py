"""Checkpoint tensors and ``quantization_config`` for each format, from representable plans (``snap``).

Layouts, as the readers of each format expect them (and ``prequant.readers`` reads them back):

- compressed-tensors ``pack-quantized``: ``weight_packed`` int32 ``[out, in/8]`` (code ``c`` stored as
  ``c + 8`` at bits ``4i``), ``weight_scale`` ``[out, in/g]``, ``weight_zero_point`` int32 packed along the
  output axis ``[ceil(out/8), in/g]`` (asymmetric only), ``weight_shape``;
- compressed-tensors ``float-quantized``: ``weight`` E4M3, ``weight_scale`` FP32 (``[out, 1]`` per channel or
  ``[ceil(out/b), ceil(in/b)]`` per b x b block), ``input_scale`` ``[1]`` for static activations (dynamic ones,
  per token or per token group, are only named in ``input_activations``);
- AutoAWQ GEMM: ``qweight`` ``[in, out/8]`` and ``qzeros`` ``[in/g, out/8]`` int32 with unsigned codes in the
  nibble order 0, 2, 4, 6, 1, 3, 5, 7, ``scales`` FP16 ``[in/g, out]``;
- fine-grained FP8: ``weight`` E4M3 and ``weight_scale_inv`` FP32 ``[ceil(out/b), ceil(in/b)]``, ``b`` the
  config's ``weight_block_size`` (128 in the released checkpoints).
"""

from __future__ import annotations

from typing import Any

import torch

from edgeq.converters.hf_checkpoint.config import AWQ, COMPRESSED_TENSORS, FP8_BLOCK, FP8_BLOCK_SHAPE
from edgeq.converters.hf_checkpoint.snap import checkpoint_block, fp8_block_scales
from edgeq.converters.prequant.readers import AWQ_ORDER
from edgeq.converters.quantize.numerics import LinearPlan
from edgeq.errors import QuantizationError

_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """uint32 values held in int64 -> the same bits as int32."""
    return torch.where(words >= (1 << 31), words - (1 << 32), words).to(torch.int32)


def pack_ct(codes: torch.Tensor) -> torch.Tensor:
    """Signed INT4 codes ``[rows, cols]`` -> compressed-tensors int32 ``[rows, ceil(cols/8)]``."""
    pad = (-codes.shape[1]) % 8
    nib = torch.nn.functional.pad(codes.to(torch.int32) + 8, (0, pad))  # padding holds code 0 (+8), never read
    return _to_int32((nib.reshape(nib.shape[0], -1, 8).to(torch.int64) << _SHIFTS.to(torch.int64)).sum(-1))


def pack_awq(codes: torch.Tensor) -> torch.Tensor:
    """Unsigned codes ``[rows, cols]`` (0..15, cols % 8 == 0) -> AutoAWQ GEMM int32 ``[rows, cols/8]``."""
    rows, cols = codes.shape
    grouped = codes.to(torch.int64).reshape(rows, cols // 8, 8)[..., list(AWQ_ORDER)]  # nibble i <- column ORDER[i]
    return _to_int32((grouped << _SHIFTS.to(torch.int64)).sum(-1))


def _zero_points(p: LinearPlan) -> torch.Tensor:
    """Integer zero points ``[out, blocks]`` of a snapped INT4 plan (0 for symmetric)."""
    if p.offset is None:
        return torch.zeros_like(p.scale, dtype=torch.int8)
    return torch.round(-p.offset / p.scale).to(torch.int8)


def fp8_strategy(p: LinearPlan) -> str:
    """``block`` for FP8 plans made on square blocks (their rows may look per-channel when a layer has one block
    of inputs), else ``channel``."""
    made_blockwise = p.block_size is not None or checkpoint_block(p) is not None
    return "block" if made_blockwise and fp8_block_scales(p) is not None else "channel"


def _fp8_block_of(plans: dict[str, LinearPlan]) -> list[int]:
    """The one ``weight_block_size`` of a model's block-scaled FP8 plans (formats store one per model)."""
    blocks = {checkpoint_block(p) or FP8_BLOCK_SHAPE for p in plans.values() if p.kind == "fp8" and fp8_strategy(p) == "block"}
    if len(blocks) > 1:
        raise QuantizationError(f"the checkpoint stores one FP8 block size; the plans have {sorted(blocks)}")
    return list(blocks.pop() if blocks else FP8_BLOCK_SHAPE)


def _input_args(p: LinearPlan) -> dict[str, Any] | None:
    """compressed-tensors ``input_activations`` of an FP8 plan: static per tensor, dynamic per token or per token
    group, or None (weight-only)."""
    if p.act_group is not None:
        if p.act_group == p.q.shape[1]:
            return _weight_args(strategy="token", dynamic=True, observer=None)
        return _weight_args(strategy="group", group_size=p.act_group, dynamic=True, observer=None)
    return _weight_args(strategy="tensor") if p.act_scale is not None else None


def _weight_args(**kw: Any) -> dict[str, Any]:
    base = {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False,
            "group_size": None, "block_structure": None, "actorder": None, "observer": "minmax", "observer_kwargs": {}}
    return {**base, **kw}


def tensors_for(fmt: str, plans: dict[str, LinearPlan], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The checkpoint tensors replacing each planned linear's ``weight``."""
    out: dict[str, torch.Tensor] = {}
    for name, p in plans.items():
        if p.kind == "int4":
            zp = _zero_points(p)
            if fmt == AWQ:
                out[f"{name}.qweight"] = pack_awq((p.q.to(torch.int32) + 8).T.contiguous())
                out[f"{name}.qzeros"] = pack_awq((zp.to(torch.int32) + 8).T.contiguous())
                out[f"{name}.scales"] = p.scale.T.contiguous().to(dtype)
                continue
            out[f"{name}.weight_packed"] = pack_ct(p.q)
            out[f"{name}.weight_scale"] = p.scale.to(dtype).contiguous()
            out[f"{name}.weight_shape"] = torch.tensor(list(p.q.shape), dtype=torch.int64)
            if p.offset is not None:
                out[f"{name}.weight_zero_point"] = pack_ct(zp.T.contiguous()).T.contiguous()
            continue
        out[f"{name}.weight"] = p.q
        grid = fp8_block_scales(p)
        if fmt == FP8_BLOCK:
            assert grid is not None  # snap_plans refused the others
            out[f"{name}.weight_scale_inv"] = grid.float()
        elif fp8_strategy(p) == "channel":
            out[f"{name}.weight_scale"] = p.scale.float().reshape(-1, 1)
        else:
            assert grid is not None
            out[f"{name}.weight_scale"] = grid.float()
        if fmt == COMPRESSED_TENSORS and p.act_scale is not None:
            out[f"{name}.input_scale"] = torch.tensor([p.act_scale], dtype=torch.float32)
    return out


def quantization_config(fmt: str, plans: dict[str, LinearPlan], unquantized: list[str]) -> dict[str, Any]:
    """The ``quantization_config`` of ``config.json`` for ``plans``; ``unquantized`` linears are listed as such."""
    if fmt == AWQ:
        group = next(iter({int(p.block_size or 0) for p in plans.values()}))
        return {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm",
                "modules_to_not_convert": unquantized or None}
    if fmt == FP8_BLOCK:
        return {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                "weight_block_size": _fp8_block_of(plans), "modules_to_not_convert": unquantized or None}
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, p in plans.items():
        if p.kind == "int4":
            key: tuple[Any, ...] = ("int4", int(p.block_size or 0), p.offset is None)
        else:
            acts = _input_args(p)
            key = ("fp8", fp8_strategy(p), None if acts is None else (acts["strategy"], acts["group_size"]))
        groups.setdefault(key, []).append(name)
    config_groups: dict[str, Any] = {}
    formats = set()
    for i, (key, names) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        # one group: the conventional "Linear" target; several: each names its modules
        targets = ["Linear"] if len(groups) == 1 else sorted(names)
        if key[0] == "int4":
            weights = _weight_args(num_bits=4, type="int", strategy="group", group_size=key[1], symmetric=key[2])
            group = {"targets": targets, "weights": weights, "input_activations": None, "format": "pack-quantized"}
        else:
            weights = _weight_args(strategy=key[1], block_structure=_fp8_block_of(plans) if key[1] == "block" else None)
            acts = _input_args(plans[names[0]])
            group = {"targets": targets, "weights": weights, "input_activations": acts, "format": "float-quantized"}
        group["output_activations"] = None
        formats.add(group["format"])
        config_groups[f"group_{i}"] = group
    return {"quant_method": "compressed-tensors", "format": formats.pop() if len(formats) == 1 else "mixed-precision",
            "quantization_status": "compressed", "config_groups": config_groups, "ignore": unquantized,
            "kv_cache_scheme": None, "sparsity_config": {}, "global_compression_ratio": None}
