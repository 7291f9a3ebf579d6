"""What fits where, from a model's ``config.json`` alone: no weights, no torch model, no transformers import.

Parameters are counted by each architecture's arithmetic (``count_from_config``), split the way
``build_checks.count_params`` splits a loaded model: quantizable linear weights (attention, MLPs, every
expert) and everything else (embeddings, an LM head the schemes keep in FP16, norms, biases, MoE routers).
The counts then go through the build's own memory check (``build_checks.estimate_memory``: weights at the
precision's bits + FP16 KV cache at the profile's max batch x context, fitted to the model's positions, + the
builder workspace) for every precision and memory variant of a target (``plan_from_config``).
Defaults for fields a ``config.json`` leaves out are those of the transformers config classes (a test holds
them equal).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from edgeq.converters.build_checks import MemoryEstimate, estimate_memory
from edgeq.converters.build_plan import fit_shapes
from edgeq.converters.sources import SUPPORTED_MODEL_TYPES
from edgeq.errors import ConfigError, UnsupportedArchitectureError
from edgeq.converters.quantize import scheme_names
from edgeq.targets import TargetProfile, get_profile

#: per model type edgeq supports (``sources.SUPPORTED_MODEL_TYPES``, which also gives the task): the defaults
#: transformers' config class gives the fields read here
#: (``head_dim`` None: hidden_size // num_attention_heads; ``num_key_value_heads`` None: the head count).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": {"num_key_value_heads": None, "head_dim": None, "tie_word_embeddings": False,
              "attention_bias": False, "mlp_bias": False, "max_position_embeddings": 2048},
    "mistral": {"num_key_value_heads": 8, "head_dim": None, "tie_word_embeddings": False,
                "max_position_embeddings": 4096 * 32},
    "qwen2": {"num_key_value_heads": 32, "head_dim": None, "tie_word_embeddings": False,
              "max_position_embeddings": 32768},
    "qwen3": {"num_key_value_heads": 32, "head_dim": 128, "tie_word_embeddings": False,
              "attention_bias": False, "max_position_embeddings": 32768},
    "qwen3_moe": {"num_key_value_heads": 4, "head_dim": None, "tie_word_embeddings": False,
                  "attention_bias": False, "max_position_embeddings": 32768, "num_experts": 128,
                  "num_experts_per_tok": 8, "moe_intermediate_size": 768, "decoder_sparse_step": 1,
                  "mlp_only_layers": []},
    "bert": {"max_position_embeddings": 512, "type_vocab_size": 2},
}
#: fields every config.json of these architectures carries (no default is guessed for them)
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts from a config. ``linear``: weights the schemes quantize (attention, MLPs, every expert);
    ``other``: kept in the compute dtype (embeddings, the LM head, norms, biases, MoE routers)."""

    linear: int
    other: int
    expert: int = 0  # of ``linear``: all experts' weights
    active: int = 0  # parameters one token uses (the top-k experts, not all of them)
    num_experts: int = 0
    experts_per_token: int = 0
    moe_layers: int = 0

    @property
    def total(self) -> int:
        return self.linear + self.other


def read_config(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A config.json (path, its directory, or the parsed dict) with its architecture's defaults filled in."""
    if isinstance(source, dict):
        raw = dict(source)
    else:
        path = Path(source)
        path = path / "config.json" if path.is_dir() else path
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read model config {path}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    model_type = raw.get("model_type")
    if model_type not in ARCHITECTURES or model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"cannot plan architecture {model_type!r} from its config",
            hint=f"edgeq plan knows: {', '.join(sorted(ARCHITECTURES))}")
    missing = [k for k in REQUIRED if not isinstance(raw.get(k), int) or isinstance(raw.get(k), bool)]
    if missing:
        raise ConfigError(f"model config lacks integer {', '.join(missing)}")
    cfg = {**ARCHITECTURES[model_type], **{k: v for k, v in raw.items() if v is not None},
           "task": SUPPORTED_MODEL_TYPES[model_type]}
    cfg["num_key_value_heads"] = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    cfg["head_dim"] = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg


def _moe_layer(cfg: dict[str, Any], i: int) -> bool:
    """Qwen3-MoE's rule (``Qwen3MoeDecoderLayer``): sparse unless listed in mlp_only_layers or off the step."""
    return (cfg.get("num_experts", 0) > 0 and i not in (cfg.get("mlp_only_layers") or [])
            and (i + 1) % cfg.get("decoder_sparse_step", 1) == 0)


def _decoder(cfg: dict[str, Any]) -> ParamCount:
    h, v, layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    q_out, kv_out = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    mt = cfg["model_type"]
    attn_linear = h * q_out + 2 * h * kv_out + q_out * h
    if mt == "qwen2":  # q/k/v always carry biases, o_proj none
        attn_other = q_out + 2 * kv_out
    else:
        attn_other = (q_out + 2 * kv_out + h) if cfg.get("attention_bias") else 0
    if mt in ("qwen3", "qwen3_moe"):
        attn_other += 2 * cfg["head_dim"]  # q_norm, k_norm
    inter = cfg["intermediate_size"]
    dense_mlp = 3 * h * inter
    dense_mlp_bias = (2 * inter + h) if cfg.get("mlp_bias") else 0
    e, k, e_inter = cfg.get("num_experts", 0), cfg.get("num_experts_per_tok", 0), cfg.get("moe_intermediate_size", 0)
    linear = other = expert = active = 0
    moe_layers = 0
    for i in range(layers):
        linear += attn_linear
        other += attn_other + 2 * h  # input / post-attention norms
        active += attn_linear + attn_other + 2 * h
        if mt == "qwen3_moe" and _moe_layer(cfg, i):
            moe_layers += 1
            per_expert = 3 * h * e_inter
            linear += e * per_expert
            expert += e * per_expert
            other += h * e  # the router
            active += k * per_expert + h * e
        else:
            linear += dense_mlp
            other += dense_mlp_bias
            active += dense_mlp + dense_mlp_bias
    embed = v * h
    head = 0 if cfg.get("tie_word_embeddings") else v * h
    other += embed + head + h  # + the final norm
    active += embed + head + h
    return ParamCount(linear=linear, other=other, expert=expert, active=active, num_experts=e if moe_layers else 0,
                      experts_per_token=k if moe_layers else 0, moe_layers=moe_layers)


def _bert(cfg: dict[str, Any]) -> ParamCount:
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    per_layer_linear = 4 * h * h + 2 * h * inter
    per_layer_other = 4 * h + inter + h + 2 * 2 * h  # q/k/v/o biases, the MLP's biases, two LayerNorms
    embeddings = (cfg["vocab_size"] + cfg["max_position_embeddings"] + cfg["type_vocab_size"]) * h + 2 * h
    linear = layers * per_layer_linear + h * h  # + the pooler's dense
    other = layers * per_layer_other + embeddings + h
    return ParamCount(linear=linear, other=other, active=linear + other)


def _count(cfg: dict[str, Any]) -> ParamCount:
    return _bert(cfg) if cfg["model_type"] == "bert" else _decoder(cfg)


def count_from_config(source: str | Path | dict[str, Any]) -> ParamCount:
    """Parameter counts of the model a config describes (see ParamCount), by its architecture's arithmetic."""
    return _count(read_config(source))


@dataclass(frozen=True)
class PrecisionFit:
    """One precision on one target: why the silicon cannot run it, or the memory estimate per variant."""

    precision: str
    refused: str | None  # the target's reason, or "not offered for <task>"; None when it runs
    estimates: dict[str, MemoryEstimate] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "refused": self.refused,
                "variants": {v: {**e.to_dict(), "fits": e.fits} for v, e in self.estimates.items()}}


@dataclass(frozen=True)
class CapacityPlan:
    """Whether a model fits a target, per precision and memory variant, from its config alone."""

    model_type: str
    task: str
    target: str
    params: ParamCount
    kv_batch: int
    kv_tokens: int
    shape_notes: tuple[str, ...]
    fits: tuple[PrecisionFit, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "task": self.task, "target": self.target,
                "params": {**dataclasses.asdict(self.params), "total": self.params.total},
                "kv_batch": self.kv_batch, "kv_tokens": self.kv_tokens, "shape_notes": list(self.shape_notes),
                "precisions": [f.to_dict() for f in self.fits]}


def plan_from_config(config: str | Path | dict[str, Any], target: str | TargetProfile = "jetson-orin") -> CapacityPlan:
    """Check a model described only by its config against every precision and memory variant of ``target``.

    Args:
        config: a config.json path, a model directory holding one, or the parsed dict.
        target: a profile name or a TargetProfile.

    Raises ConfigError (unreadable or incomplete config), UnsupportedArchitectureError, UnknownTargetError.
    """
    cfg = read_config(config)
    profile = target if isinstance(target, TargetProfile) else get_profile(target)
    task = cfg["task"]
    params = _count(cfg)
    if task not in profile.shapes:
        raise UnsupportedArchitectureError(f"{profile.name} has no {task} profile for this {cfg['model_type']} model")
    planned = fit_shapes(profile.shapes[task], cfg.get("max_position_embeddings"))
    model = SimpleNamespace(**cfg)  # what estimate_memory reads of a config (heads, head_dim, layers)
    fits = []
    for precision in scheme_names():
        refused = profile.unsupported.get(precision)
        if refused is None and not profile.supports(task, precision):
            refused = f"not offered for {task} on {profile.name}"
        estimates = {} if refused else {
            v: estimate_memory(profile, task, precision, model, planned.shapes, v, params=(params.linear, params.other))
            for v in profile.memory_variants_gb}
        fits.append(PrecisionFit(precision, refused, estimates))
    any_est = next((e for f in fits for e in f.estimates.values()), None)
    return CapacityPlan(model_type=cfg["model_type"], task=task, target=profile.name, params=params,
                        kv_batch=any_est.kv_batch if any_est else planned.shapes.batch.max,
                        kv_tokens=any_est.kv_tokens if any_est else 0, shape_notes=planned.notes, fits=tuple(fits))
