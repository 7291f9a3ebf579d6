"""Capability checks that run before ``edgeq build`` does any work or writes any byte.

- the target profile must name only registered schemes its hardware can run (``target_profile``);
- the precision must be one the target's silicon runs (else: the profile's reason + alternatives);
- weights + KV cache at the profile's max shapes (+ builder workspace) must fit the memory budget;
- the output must be creatable and the disk must have room for the intermediate files.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq.converters.quantize import get_config, handler_named, scheme_names
from edgeq.converters.quantize.budget import AccuracyBudget
from edgeq.converters.quantize.config import QuantConfig
from edgeq.errors import ConfigError, DiskFullError, MemoryBudgetError, OutputExistsError, UnsupportedPrecisionError
from edgeq.targets import TargetProfile, TaskShapes, get_profile, list_profiles

GIB = 1 << 30
#: the budget of a task whose profile states none: the outer bound no default build may exceed
#: (a 2% perplexity rise is where the field rolls a model back)
DEFAULT_BUDGETS = {"text-generation": "ppl+2%", "feature-extraction": "cosine>=0.99"}
#: Bytes per element of non-quantized tensors and the KV cache (the profiles' compute dtype is FP16).
COMPUTE_BYTES = 2


def check_profile(profile: TargetProfile) -> TargetProfile:
    """Refuse a profile naming a precision that is no registered scheme, or one its hardware cannot run
    (the scheme handler's target checks: e.g. FP8 below sm89). The targets layer knows no schemes: this is
    where a converter loading a profile ties it to the scheme registry."""
    known = scheme_names()
    named = [(f"precisions.{t}", p) for t, precs in profile.precisions.items() for p in precs]
    named += [("unsupported", p) for p in profile.unsupported]
    for where, p in named:
        if p not in known:
            raise ConfigError(f"target {profile.name}: {where} names {p!r}, which is no quantization scheme",
                              hint=f"known schemes: {', '.join(known)}")
        problem = handler_named(p).target_problem(profile) if where != "unsupported" else None
        if problem is not None:
            raise ConfigError(f"target {profile.name}: {where} lists {p}, but {problem}",
                              hint=f"move {p} to the profile's [unsupported] table with this reason")
    for task in profile.accuracy_budget:
        profile_budget(profile, task)
    for task, rungs in profile.upgrade_precisions.items():
        for p in rungs:
            if get_config(p).folds_scales:
                raise ConfigError(f"target {profile.name}: upgrade_precisions.{task} lists {p}, which rewrites FP "
                                  "weights (scale folding) and cannot sit above another scheme", hint="use int8-wo")
    return profile


def profile_budget(profile: TargetProfile, task: str, override: str | None = None) -> AccuracyBudget | None:
    """The budget a build for ``task`` meets: ``override`` (``--accuracy-budget``; ``none`` turns it off), the
    profile's, or ``DEFAULT_BUDGETS``. ConfigError for one that does not parse or apply to the task."""
    text = override if override is not None else profile.accuracy_budget.get(task, DEFAULT_BUDGETS.get(task))
    if text is None:
        return None
    where = "--accuracy-budget" if override is not None else f"target {profile.name}: accuracy_budget.{task}"
    try:
        budget = AccuracyBudget.parse_option(text)
        if budget is None:
            return None
        budget.check_task(task)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from exc
    return budget


def target_profile(target: str | TargetProfile) -> TargetProfile:
    """The profile ``target`` names (or ``target`` itself), checked against the scheme registry."""
    return check_profile(target if isinstance(target, TargetProfile) else get_profile(target))


def checked_profiles() -> list[TargetProfile]:
    """Every target profile (built-in and on ``EDGEQ_TARGETS_PATH``), each checked against the scheme registry."""
    return [check_profile(p) for p in list_profiles()]


def _alternatives(profile: TargetProfile, task: str | None) -> str:
    precs = profile.precisions.get(task, ()) if task else profile.all_precisions()
    return ", ".join(precs)


def check_precision(profile: TargetProfile, precision: str, task: str | None = None) -> None:
    """Refuse a precision the target cannot run, with the hardware reason and what to use instead.

    With ``task=None`` only what is known without the model is checked (runs before loading it).
    """
    if precision not in scheme_names():
        raise UnsupportedPrecisionError(
            f"unknown precision {precision!r}", hint=f"use one of: {', '.join(scheme_names())}"
        )
    reason = profile.unsupported.get(precision) or handler_named(precision).target_problem(profile)
    if reason is not None:
        raise UnsupportedPrecisionError(
            f"{profile.name} does not support {precision}: {reason}",
            hint=f"supported on {profile.name}: {_alternatives(profile, task)}",
        )
    if task is None:
        if precision not in profile.all_precisions():
            raise UnsupportedPrecisionError(
                f"{profile.name} does not offer {precision}", hint=f"use one of: {_alternatives(profile, None)}"
            )
        return
    if task not in profile.precisions:
        raise UnsupportedPrecisionError(
            f"target {profile.name} has no {task} profile", hint=f"it serves: {', '.join(profile.precisions)}"
        )
    if not profile.supports(task, precision):
        raise UnsupportedPrecisionError(
            f"{profile.name} does not offer {precision} for {task}", hint=f"use one of: {_alternatives(profile, task)}"
        )


@dataclass(frozen=True)
class MemoryEstimate:
    """What the model needs on the target at the profile's max shapes, in bytes."""

    weights: int
    kv_cache: int
    workspace: int
    kv_tokens: int
    kv_batch: int
    budget: int
    variant: str

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.workspace

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights_bytes": self.weights, "kv_cache_bytes": self.kv_cache, "workspace_bytes": self.workspace,
            "total_bytes": self.total, "budget_bytes": self.budget, "variant": self.variant,
            "kv_batch": self.kv_batch, "kv_tokens": self.kv_tokens,
        }


def count_params(model: Any, quantize_lm_head: bool = False) -> tuple[int, int]:
    """(quantizable linear weights, everything else) parameter counts of a torch model (MoE routers: else)."""
    import torch

    from edgeq.converters.moe import router_names

    linear = 0
    seen: set[int] = set()
    routers = router_names(model)
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and (quantize_lm_head or not name.endswith("lm_head")) and name not in routers:
            linear += mod.weight.numel()
            seen.add(id(mod.weight))
    other = sum(p.numel() for p in model.parameters() if id(p) not in seen)
    return linear, other


def weight_bits(precision: str | QuantConfig) -> float:
    """Stored bits per quantized linear weight: the scheme handler's figure for the config (a scheme name
    means its default options)."""
    cfg = get_config(precision) if isinstance(precision, str) else precision
    return handler_named(cfg.scheme).weight_bits(cfg)


def estimate_memory(
    profile: TargetProfile, task: str, precision: str | QuantConfig, model: Any, shapes: TaskShapes,
    variant: str | None = None, *, params: tuple[int, int] | None = None,
) -> MemoryEstimate:
    """Weights at ``precision`` (a scheme name or config) + FP16 KV cache at max batch x (past + sequence)
    + the builder workspace.

    ``model`` is the torch model, or (with ``params``: its (linear, other) counts, as from
    ``capacity.count_from_config``) only its config.
    """
    linear, other = params if params is not None else count_params(model)
    weights = int(linear * weight_bits(precision) / 8 + other * COMPUTE_BYTES)
    kv = tokens = 0
    if shapes.past is not None:
        cfg = model.config if params is None else model
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        tokens = shapes.past.max + shapes.sequence.max
        kv = 2 * cfg.num_hidden_layers * kv_heads * head_dim * shapes.batch.max * tokens * COMPUTE_BYTES
    v = variant or profile.default_variant
    return MemoryEstimate(
        weights=weights, kv_cache=kv, workspace=profile.workspace_mib << 20, kv_tokens=tokens,
        kv_batch=shapes.batch.max, budget=profile.memory_budget_bytes(v), variant=v,
    )


def check_memory(est: MemoryEstimate, profile: TargetProfile, model_name: str, precision: str) -> None:
    """Refuse a model that cannot fit, with the numbers."""
    if est.fits:
        return
    kv = f" + KV cache {est.kv_cache / GIB:.2f} GiB (batch {est.kv_batch} x {est.kv_tokens} tokens)" if est.kv_cache else ""
    raise MemoryBudgetError(
        f"{model_name} at {precision} needs ~{est.total / GIB:.2f} GiB on {profile.name}/{est.variant} "
        f"(weights {est.weights / GIB:.2f} GiB{kv} + builder workspace {est.workspace / GIB:.2f} GiB) "
        f"but the budget is {est.budget / GIB:.2f} GiB "
        f"({profile.usable_memory_fraction:.0%} of {profile.memory_variants_gb[est.variant]:g} GiB)",
        hint="choose a lower precision, a larger --variant, or a target profile with smaller max shapes",
    )


def check_output(out: Path, overwrite: bool) -> None:
    """The bundle directory must be creatable (checked again, atomically, when it is written)."""
    from edgeq._fs import check_parent_writable

    if out.exists() and not overwrite:
        raise OutputExistsError(f"output already exists: {out}", hint="pass --overwrite or choose another --out")
    check_parent_writable(out.absolute())


def disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


def check_disk(out: Path, model: Any, precision: str | QuantConfig) -> int:
    """Refuse up front when the output filesystem cannot hold the intermediate files; returns the need.

    Needs: the FP32 export (4 B/param), the quantized ONNX and an engine of about its size, and the
    bundle copy of both (a conservative 4 + 3 x stored size per parameter).
    """
    linear, other = count_params(model)
    stored = linear * weight_bits(precision) / 8 + other * COMPUTE_BYTES
    need = int(4 * (linear + other) + 3 * stored)
    free = disk_free(out.absolute().parent)
    if free < need:
        raise DiskFullError(
            f"not enough disk space in {out.absolute().parent}: the build needs ~{need / GIB:.2f} GiB, "
            f"{free / GIB:.2f} GiB free",
            hint="free disk space or choose another --out",
        )
    return need
