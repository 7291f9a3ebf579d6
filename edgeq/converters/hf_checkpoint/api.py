"""``quantize_to_hf``: one calibrated plan -> a Hugging Face checkpoint (``out/``) and its QDQ ONNX (``out/onnx``).

``out/`` holds ``config.json`` (with the format's ``quantization_config``), ``model.safetensors``, the tokenizer
and generation config, ``edgeq_checkpoint.json`` (how it was made) and, for LMs, ``edgeq_greedy.json``: the
ONNX's greedy continuation of a few prompts, which a loader checked on another machine must reproduce
(``benchmarks/gpu_fp8_loader_check.py``).
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeq._fs import atomic_output_dir, check_parent_writable
from edgeq.converters.hf_checkpoint.config import AWQ, COMPRESSED_TENSORS, FP8_BLOCK, HfCheckpointConfig
from edgeq.converters.hf_checkpoint.snap import snap_plans
from edgeq.converters.hf_checkpoint.writers import quantization_config, tensors_for
from edgeq.converters.quantize import QuantConfig, QuantizeResult, get_config, quantize
from edgeq.converters.sources import TEXT_GENERATION, LoadedModel, load_model
from edgeq.errors import ConfigError, OutputExistsError

CHECKPOINT_REPORT = "edgeq_checkpoint.json"
GREEDY_RECORD = "edgeq_greedy.json"
ONNX_SUBDIR = "onnx"
#: ``edgeq quantize --format`` values -> checkpoint format
CLI_FORMATS = {"hf": COMPRESSED_TENSORS, "hf-awq": AWQ, "hf-fp8": FP8_BLOCK}


@dataclass(frozen=True)
class HfCheckpointResult:
    out_dir: Path
    onnx_dir: Path
    hf: HfCheckpointConfig
    quantized: QuantizeResult = field(repr=False)
    greedy: list[dict[str, Any]] = field(default_factory=list)


def hf_config_for(cli_format: str, **overrides: Any) -> HfCheckpointConfig:
    """``--format hf | hf-awq | hf-fp8`` -> HfCheckpointConfig (ConfigError for anything else)."""
    if cli_format not in CLI_FORMATS:
        raise ConfigError(f"unknown --format {cli_format!r}; valid: onnx, {', '.join(CLI_FORMATS)}")
    return HfCheckpointConfig(format=CLI_FORMATS[cli_format], **overrides)


def quantize_to_hf(model: str | Path | LoadedModel, config: QuantConfig | str, out_dir: str | Path, *,
                   hf: HfCheckpointConfig | None = None, overwrite: bool = False, **quantize_kwargs: Any) -> HfCheckpointResult:
    """Quantize ``model`` with ``config`` and write the checkpoint and the ONNX of the same weights.

    Args:
        model: as ``quantize`` takes it (never modified: the work happens on a copy).
        config: a QuantConfig or scheme name: INT4 schemes for compressed-tensors/AWQ, ``fp8`` for
            compressed-tensors FP8, ``fp8-block`` for the fine-grained FP8 format; ``prequantized`` writes a
            pre-quantized checkpoint's own weights back out.
        out_dir: the checkpoint directory to create (appears only when complete).
        hf: which format and dtype (default: compressed-tensors, FP16).
        quantize_kwargs: passed to ``quantize`` (``calib_text``, ``accuracy_budget``, ``report_dir``).
    """
    hf = hf or HfCheckpointConfig()
    cfg = get_config(config) if isinstance(config, str) else config
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"output already exists: {out_dir}", hint="pass --overwrite or choose another --out")
    check_parent_writable(out_dir.absolute())
    loaded = copy.deepcopy(model) if isinstance(model, LoadedModel) else load_model(str(model))
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        res = quantize(loaded, cfg, tmp / ONNX_SUBDIR, plan_hook=functools.partial(snap_plans, hf=hf), **quantize_kwargs)
        assert res.loaded is not None and res.plans is not None  # quantize returns what it emitted
        unquantized = write_checkpoint(res.loaded, res.plans, tmp, hf)
        greedy = []
        if res.loaded.task == TEXT_GENERATION and hf.prompts:
            greedy = record_greedy(res.loaded.tokenizer, tmp / ONNX_SUBDIR / "model.onnx", hf)
            (tmp / GREEDY_RECORD).write_text(json.dumps({"onnx": f"{ONNX_SUBDIR}/model.onnx", "new_tokens": hf.new_tokens,
                                                         "prompts": greedy}, indent=2) + "\n")
        report = {"model": res.loaded.name, "model_id": res.loaded.model_id, "scheme": cfg.scheme, "config": cfg.to_dict(),
                  "checkpoint": hf.to_dict(), "unquantized_linears": unquantized,
                  "snap": res.report["scheme_stats"].get("hf_checkpoint"), "validation": res.report.get("validation")}
        (tmp / CHECKPOINT_REPORT).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return HfCheckpointResult(out_dir=out_dir, onnx_dir=out_dir / ONNX_SUBDIR, hf=hf, quantized=res, greedy=greedy)


def write_checkpoint(loaded: LoadedModel, plans: dict[str, Any], out: Path, hf: HfCheckpointConfig) -> list[str]:
    """Write ``model.safetensors`` + configs + tokenizer of ``loaded`` with ``plans`` into ``out``.
    Returns the linears left unquantized."""
    import torch
    from safetensors.torch import save_file

    model = loaded.model
    dtype = getattr(torch, hf.dtype)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    tensors: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if (module in plans and leaf == "weight") or (tied and key == "lm_head.weight"):
            continue  # replaced by the format's tensors / stored once as the embedding
        tensors[key] = value.to(dtype) if value.is_floating_point() else value
    tensors.update(tensors_for(hf.format, plans, dtype))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    unquantized = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in plans)
    cfg = model.config.to_dict()
    cfg["architectures"] = cfg.get("architectures") or [type(model).__name__]  # vLLM picks its model class by it
    cfg["torch_dtype"] = hf.dtype
    cfg["quantization_config"] = quantization_config(hf.format, plans, unquantized)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    return unquantized


def record_greedy(tokenizer: Any, onnx_path: Path, hf: HfCheckpointConfig) -> list[dict[str, Any]]:
    """Per prompt: its ids, the ONNX's greedy ids and each step's top-5 (id, logit) pairs."""
    from edgeq.converters.hf_checkpoint.greedy import onnx_greedy_logits

    rows = []
    for text in hf.prompts:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        greedy, tops = onnx_greedy_logits(onnx_path, ids, hf.new_tokens, top_k=5)
        rows.append({"text": text, "prompt_ids": ids, "greedy_ids": greedy, "top_logits": tops})
    return rows
