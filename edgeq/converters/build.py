"""``edgeq build``: model → ONNX → quantized QDQ ONNX → checked → engine (or build plan) → bundle.

Plan, then execute: the target, the precision, the memory budget, the output path and the free disk
space are all checked before the first byte is written; intermediate files live in a hidden work
directory beside the output and are removed whatever happens; the bundle appears atomically.

Targets with ``build_on = "host"`` (RTX) get a TensorRT-RTX engine built here (CPU-only is fine).
Targets with ``build_on = "device"`` (Jetson, Hopper servers) get an engine only when their flavour
(full ``tensorrt``) is importable here, i.e. when building on the device itself; otherwise the bundle
carries the QDQ ONNX, ``plan/build_plan.json`` and ``plan/trtexec.txt`` and the runtime builds on first start.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq._fs import os_error_to_edgeq
from edgeq.converters.build_checks import (check_disk, check_memory, check_output, check_precision, estimate_memory,
                                           profile_budget, target_profile)
from edgeq.converters.build_plan import ENGINE_PATH, ONNX_PATH, PlannedShapes, fit_shapes, make_plan
from edgeq.converters.build_report import BuildResult, Stages, budget_text
from edgeq.converters.bundle import BundleContents, write_bundle
from edgeq.converters.health import build_health_data
from edgeq.converters.quantize.budget import AccuracyBudget
from edgeq.converters.sources import LoadedModel, ModelSpec, load_model
from edgeq.errors import BackendUnavailableError
from edgeq.sdk.engine.builder import BuiltEngine, build_engine, flavour_available, library_version
from edgeq.sdk.bundle.model_info import MODEL_INFO_NAME, TEXT_GENERATION
from edgeq.sdk.bundle.plan import BuildPlan
from edgeq.targets import TargetProfile, profile_hash

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
PLAN_JSON = "plan/build_plan.json"
TRTEXEC_TXT = "plan/trtexec.txt"
#: Export side files that go next to the ONNX (the runtime reads them from there) vs. tokenizer/.
_MODEL_SIDE = {MODEL_INFO_NAME: "model_config"}
_CONFIG_FILES = {"config.json", "generation_config.json"}
_SKIP = {"validation.json"}


def build(
    model: str | ModelSpec | LoadedModel = DEFAULT_MODEL,
    target: str | TargetProfile = "rtx-ada",
    precision: str | None = None,
    out: str | Path | None = None,
    *,
    sign_key: str | Path | None = None,
    variant: str | None = None,
    bundle_version: int = 1,
    overwrite: bool = False,
    console: Any | None = None,
    quant_overrides: dict[str, Any] | None = None,
    health: bool = True,
    cpu_graph: bool = True,
    accuracy_budget: str | None = None,
) -> BuildResult:
    """Build a deployable bundle of ``model`` for ``target``.

    Args:
        model: a ``--model`` string (default: the offline SmolLM2-135M), a ModelSpec or a loaded model.
        target: a profile name (``edgeq targets``) or a TargetProfile.
        precision: a quantization scheme the target supports; default: the profile's for the task.
        out: the bundle directory to create (default ``./<model>-<target>-<precision>``).
        sign_key: ed25519 private key (PEM) to sign the manifest with; unsigned when None.
        variant: memory variant of the target (e.g. ``orin-nano-4``) for the budget check.
        bundle_version: the manifest's monotonically increasing version.
        overwrite: replace an existing ``out`` once the new bundle is complete.
        console: a rich Console for per-stage progress (None: quiet).
        quant_overrides: extra fields for the quantization config (e.g. ``{"block_size": 64}``).
        health: compute the health monitor's canaries (``health/``); False ships a bundle the device
            cannot monitor for drift (the manifest says so).
        cpu_graph: give a text-generation bundle its CPU graph (``converters.cpu_graph``: FP32, fused, sharing
            the bundle graph's weight bytes), checked against the canaries; a device without a usable GPU
            serves it. False: CPU devices run the bundle graph as written.
        accuracy_budget: what the quantized model must meet on held-out text (``ppl+1%``, ``cosine>=0.995``;
            ``none``: no budget); default: the profile's for the task. Sensitive layer groups go up the profile's
            ``upgrade_precisions`` ladder, then to the compute dtype, within the memory budget; AccuracyBudgetError
            when no allowed mix meets it.

    Raises UnknownTargetError, UnsupportedPrecisionError, MemoryBudgetError, DiskFullError,
    OutputExistsError, ConfigError (a bad budget) before any work; export/quantization/engine errors and
    AccuracyBudgetError after, leaving nothing behind.
    """
    profile = target_profile(target)  # a name (or alias) or a profile, checked against the scheme registry
    stages = Stages(console)
    # -- plan: every check that needs no model runs before the (slow) model load -----------------
    if precision is not None:
        check_precision(profile, precision)
    if out is not None:
        check_output(Path(out), overwrite)
    if accuracy_budget is not None:
        AccuracyBudget.parse_option(accuracy_budget)  # a typo fails now; whether it fits the task, once the model is known
    profile.memory_budget_bytes(variant)  # an unknown --variant is refused now, not after the load
    if sign_key is not None:
        from edgeq.converters.signing import load_private_key

        load_private_key(sign_key)  # a bad key fails before minutes of work, not at the last step
    if profile.builds_engine and profile.build_on == "host" and not flavour_available(profile.engine_flavour):
        raise BackendUnavailableError(
            f"{profile.name} engines are built here with {profile.engine_flavour}, which is not importable",
            hint="pip install 'edgeq[build]' (tensorrt-rtx bindings and libs)",
        )
    with stages.stage("load", "loading model"):
        loaded = model if isinstance(model, LoadedModel) else load_model(model if isinstance(model, ModelSpec) else ModelSpec(model))
    task = loaded.task
    prequant = None
    if loaded.published is not None:  # a pre-quantized checkpoint: keep its weights where the target runs them
        from edgeq.converters.prequant.target import choose

        prequant = choose(loaded.published, profile, task, precision)
        precision = prequant.precision
    precision = precision or profile.default_precision.get(task) or ""
    check_precision(profile, precision, task)
    budget = profile_budget(profile, task, accuracy_budget) if prequant is None or not prequant.keep else None
    out = Path(out) if out is not None else Path(f"{loaded.name}-{profile.name}-{precision}")
    check_output(out, overwrite)
    max_pos = getattr(loaded.model.config, "max_position_embeddings", None)
    fitted = fit_shapes(profile.shapes[task], max_pos)
    memory = estimate_memory(profile, task, precision, loaded.model, fitted.shapes, variant)
    check_memory(memory, profile, loaded.name, precision)
    check_disk(out, loaded.model, precision)
    engine_here = profile.builds_engine and (profile.build_on == "host" or flavour_available(profile.engine_flavour))

    # -- execute: everything is written under a hidden work dir beside the output ------------------
    try:
        work = Path(tempfile.mkdtemp(prefix=f".edgeq-build-{out.name}-", dir=out.absolute().parent))
    except OSError as exc:
        raise os_error_to_edgeq(exc, out) from exc
    try:
        return _execute(loaded, profile, task, precision, out, work, stages, memory.to_dict(), fitted,
                        engine_here, sign_key=sign_key, bundle_version=bundle_version, overwrite=overwrite,
                        quant_overrides=quant_overrides or {}, health=health, prequant=prequant,
                        cpu_graph=cpu_graph and task == TEXT_GENERATION,
                        budget=_BudgetPlan(budget, tuple(u for u in profile.upgrade_precisions.get(task, ()) if u != precision),
                                           max(0, memory.budget - memory.total)))
    except OSError as exc:
        raise os_error_to_edgeq(exc, out) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _execute(
    loaded: LoadedModel, profile: TargetProfile, task: str, precision: str, out: Path, work: Path, stages: Stages,
    memory: dict[str, Any], planned: PlannedShapes, engine_here: bool, *, sign_key: Any, bundle_version: int,
    overwrite: bool, quant_overrides: dict[str, Any], health: bool, prequant: Any = None, cpu_graph: bool = False,
    budget: _BudgetPlan | None = None,
) -> BuildResult:
    from edgeq.converters.export import export_onnx

    with stages.stage("export", "exporting to ONNX (checked against PyTorch)"):
        fp = export_onnx(loaded, work / "fp")
    with stages.stage("quantize", f"quantizing to {precision} and checking accuracy against the reference"):
        q_dir, q_onnx, quant_report, quant_config = _quantize(loaded, precision, profile, work / "q", quant_overrides,
                                                              keep=prequant is not None and prequant.keep, budget=budget)
    if quant_report.get("accuracy_budget"):
        stages.note(budget_text(quant_report["accuracy_budget"]))
    if prequant is not None:
        stages.note(prequant.note)
    plan: BuildPlan | None = None
    if profile.builds_engine:
        plan, _ = make_plan(profile, task, q_onnx, precision, planned=planned)
        staged = work / "plan"
        staged.mkdir()
        (staged / "build_plan.json").write_text(plan.to_json())
        (staged / "trtexec.txt").write_text(plan.to_trtexec())
    built: BuiltEngine | None = None
    if plan is None:
        note = f"no engine: {profile.name} runs the ONNX with ONNX Runtime"
    elif engine_here:
        with stages.stage("engine", f"building the {profile.engine_flavour} engine for {profile.sm}"):
            built = build_engine(plan, q_onnx)
        (work / "model.engine").write_bytes(built.engine)
        note = f"built here with {profile.engine_flavour} {built.info.library_version} for {profile.sm}"
    else:
        note = (f"not built here ({profile.engine_flavour} is not importable on this host): the bundle carries "
                f"the QDQ ONNX + {PLAN_JSON}; the device builds the engine on first start")
    stages.note(note)
    health_files: dict[str, tuple[Path, str]] = {}
    if health:
        with stages.stage("health", "computing health-monitor canaries"):
            health_files = _health(task, fp.out_dir, q_dir, work / "health")
    else:
        stages.note("[yellow]no health data[/yellow]: the device cannot detect quantization drift for this bundle")
    cpu_info: dict[str, Any] | None = None
    if cpu_graph:
        with stages.stage("cpu graph", "deriving the CPU graph (FP32, fused) and checking it on the canaries"):
            cpu_info = _cpu_graph(loaded, q_onnx, work / "health" if health_files else None)
    files = _bundle_files(fp.out_dir, q_dir, work, built is not None, health_files, plan is not None)
    onnx_bytes = sum(p.stat().st_size for rel, (p, role) in files.items()
                     if role in ("onnx", "onnx_data") and not rel.startswith("model/model.cpu."))  # the bundle graph
    if cpu_info is not None:
        cpu_info["bytes"] = sum(p.stat().st_size for rel, (p, _) in files.items() if rel.startswith("model/model.cpu."))
    fp16_bytes = sum(p.stat().st_size for p in fp.out_dir.glob("model.onnx*")) // 2  # FP32 export / 2
    build_info = {
        "engine_mode": "built" if built else ("planned" if plan else "none"),
        "engine_note": note,
        "engine_build": built.info.to_dict() if built else None,
        "trt_flavour": profile.engine_flavour,
        "trt_version": built.info.library_version if built else None,
        "compute_capabilities": (list(plan.compute_capabilities) or [profile.compute_capability]) if plan else [],
        "precision": precision,
        "compute_dtype": quant_config.get("compute_dtype"),
        "profile_shapes": [p for p in plan.to_dict()["profiles"]] if plan else [],
        "shape_notes": list(planned.notes),
        "onnx_bytes": onnx_bytes,
        "fp16_onnx_bytes_estimate": fp16_bytes,
        "engine_bytes": built.info.engine_size if built else None,
        "accuracy": _accuracy(quant_report),
        "accuracy_budget": _budget_record(quant_report.get("accuracy_budget")),
        "memory_estimate": memory,
        "health_data": bool(health_files),
        "prequantized": prequant.to_dict() if prequant is not None else None,
        "cpu_graph": cpu_info,
    }
    with stages.stage("bundle", "writing the bundle"):
        build_info["stage_seconds"] = {k: round(v, 3) for k, v in stages.seconds.items()}
        manifest = _bundle(loaded, profile, task, precision, quant_config, plan, built, files, build_info,
                           out, sign_key, bundle_version, overwrite)
    return BuildResult(
        out_dir=out, model_name=loaded.name, target=profile.name, task=task, precision=precision,
        engine_mode=build_info["engine_mode"], engine_note=note, onnx_bytes=onnx_bytes, fp16_onnx_bytes=fp16_bytes,
        engine_bytes=build_info["engine_bytes"], accuracy=build_info["accuracy"], engine_build=build_info["engine_build"],
        accuracy_budget=build_info["accuracy_budget"],
        memory=memory, stage_seconds=dict(stages.seconds), shape_notes=planned.notes, signed=sign_key is not None,
        manifest=manifest, weights_note=prequant.note if prequant is not None else "",
        budget_note="not applied: the checkpoint's published weights are kept as they are, and they are the reference"
        if prequant is not None and prequant.keep else "",
    )


# -- seams to the other converter pieces ------------------------------------------------------------------
@dataclass(frozen=True)
class _BudgetPlan:
    """What the quantizer gets of the budget: the budget (None: none), the upgrade rungs, the free weight bytes."""

    budget: AccuracyBudget | None
    upgrade: tuple[str, ...]
    max_extra_bytes: int


def _quantize(loaded: LoadedModel, precision: str, profile: TargetProfile, out_dir: Path, overrides: dict[str, Any],
              keep: bool = False, budget: _BudgetPlan | None = None) -> tuple[Path, Path, dict[str, Any], dict[str, Any]]:
    """Quantize with ``edgeq.converters.quantize``; returns (dir, onnx path, report, config dict). ``keep``: a
    pre-quantized checkpoint's published weights are kept (scheme ``prequantized``) instead."""
    from edgeq.converters.quantize import get_config, quantize  # imports torch: not at module load

    if keep:
        from edgeq.converters.prequant.scheme import prequantized_config

        cfg = prequantized_config(profile.compute_dtype, overrides)
    else:
        cfg = get_config(precision, **{"compute_dtype": profile.compute_dtype, **overrides})
    if cfg.compute_dtype != profile.compute_dtype:
        log.warning("%s computes in %s; this build was asked for %s activations (recorded in the manifest)",
                    profile.name, profile.compute_dtype, cfg.compute_dtype)
    from edgeq.converters.quantize.mixed import rung_config

    upgrade = tuple(rung_config(u, cfg.compute_dtype) for u in budget.upgrade) if budget else ()
    result = quantize(loaded, cfg, out_dir, accuracy_budget=budget.budget if budget else None, upgrade=upgrade,
                      max_extra_bytes=budget.max_extra_bytes if budget else None)
    return Path(result.out_dir), Path(result.onnx_path), dict(result.report), cfg.to_dict()


def _health(task: str, fp_dir: Path, q_dir: Path, out_dir: Path) -> dict[str, tuple[Path, str]]:
    """Health-monitor data (``edgeq.converters.health``): {path in bundle: (source file, role)}."""
    produced = build_health_data(task, fp_dir, q_dir, out_dir)
    return {rel: (out_dir / rel, role) for rel, role in produced}


def _cpu_graph(loaded: LoadedModel, q_onnx: Path, health_dir: Path | None) -> dict[str, Any]:
    """The bundle's CPU graph beside ``q_onnx`` (``converters.cpu_check``); what the manifest records of it."""
    from edgeq.converters.cpu_check import add_cpu_graph

    cfg = loaded.model.config
    _, info = add_cpu_graph(q_onnx, num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size,
                            max_positions=getattr(cfg, "max_position_embeddings", None), health_dir=health_dir)
    return info


def _bundle_files(fp_dir: Path, q_dir: Path, work: Path, have_engine: bool,
                  health: dict[str, tuple[Path, str]], have_plan: bool = True) -> dict[str, tuple[Path, str]]:
    files: dict[str, tuple[Path, str]] = {}
    for p in sorted([*q_dir.glob("model.onnx*"), *q_dir.glob("model.cpu.onnx*")]):
        files[f"model/{p.name}"] = (p, "onnx" if p.suffix == ".onnx" else "onnx_data")
    from edgeq.converters.quantize import QUANT_CONFIG, QUANT_REPORT

    for name in (QUANT_CONFIG, QUANT_REPORT):  # the quantizer's provenance, beside the QDQ ONNX
        if (q_dir / name).is_file():
            files[f"model/{name}"] = (q_dir / name, "other")
    for p in sorted(fp_dir.iterdir()):
        if p.is_file() and not p.name.startswith("model.onnx") and p.name not in _SKIP:
            if p.name in _MODEL_SIDE:
                files[f"model/{p.name}"] = (p, _MODEL_SIDE[p.name])
            else:
                files[f"tokenizer/{p.name}"] = (p, "model_config" if p.name in _CONFIG_FILES else "tokenizer")
    if have_plan:
        files[PLAN_JSON] = (work / "plan" / "build_plan.json", "plan")
        files[TRTEXEC_TXT] = (work / "plan" / "trtexec.txt", "plan")
    if have_engine:
        files[ENGINE_PATH] = (work / "model.engine", "engine")
    files.update(health)
    return files


def _accuracy(report: dict[str, Any]) -> dict[str, Any]:
    """Accuracy vs the FP reference from the quantizer's validation (scalars only), plus the ppl delta."""
    val = report.get("validation")
    if not isinstance(val, dict):
        return {}
    acc = {k: v for k, v in val.items() if isinstance(v, (int, float, bool)) and k != "tokens"}
    ref, cand = val.get("ppl_reference"), val.get("ppl_candidate")
    if "ppl_increase_pct" not in acc and isinstance(ref, (int, float)) and isinstance(cand, (int, float)) and ref > 0:
        acc["ppl_increase_pct"] = round(100.0 * (cand - ref) / ref, 3)
    return acc


def _budget_record(info: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest's record of the budget: everything the quantizer reported but its search trace."""
    return None if not info else {k: v for k, v in info.items() if k != "evaluations"}


def _bundle(loaded: LoadedModel, profile: TargetProfile, task: str, precision: str, quant_config: dict[str, Any],
            plan: BuildPlan | None, built: BuiltEngine | None, files: dict[str, tuple[Path, str]], build_info: dict[str, Any],
            out: Path, sign_key: Any, bundle_version: int, overwrite: bool) -> Any:
    """Write the bundle with ``edgeq.converters.bundle.write_bundle`` (hashes, manifest.json, signature)."""
    from edgeq.sdk.bundle.manifest import EngineInfo

    engines = []
    if plan is not None:
        engines.append(EngineInfo(
            flavour=profile.engine_flavour,
            path=ENGINE_PATH if built else None,
            plan=PLAN_JSON,
            onnx=ONNX_PATH,
            compute_capabilities=tuple(plan.compute_capabilities) or (profile.compute_capability,),
            trt_version=built.info.library_version if built else None,
            precision=precision,
        ))
    # the CPU graph, last: the CPU backend picks it by its device (EngineInfo.device), not by its place
    cpu = [EngineInfo(flavour="onnx", onnx=f"model/{build_info['cpu_graph']['path']}", precision=precision,
                      device="cpu")] if build_info.get("cpu_graph") else []
    contents = BundleContents(
        model_name=loaded.name,
        bundle_version=bundle_version,
        task=task,
        target=profile.name,
        target_hash=profile_hash(profile),
        precision=precision,
        quant_config=quant_config,
        model_id=loaded.model_id,
        files=files,
        # The QDQ ONNX itself is the portable fallback: ONNX Runtime runs it on any device, CPU-only included
        # (CI, a dev box, a device whose GPU is not the target's), so every bundle lists it as an engine too.
        engines=(*engines, EngineInfo(flavour="onnx", onnx=ONNX_PATH, precision=precision), *cpu),
        model_revision=loaded.revision,
        build=build_info,
    )
    from edgeq.sdk.bundle.manifest import Manifest

    return Manifest.load(write_bundle(contents, out, signing_key=sign_key, overwrite=overwrite))


def engine_library_version(flavour: str) -> str | None:
    """The flavour's library version when importable here (for `edgeq targets show`)."""
    return library_version(flavour) if flavour_available(flavour) else None


__all__ = ["DEFAULT_MODEL", "BuildResult", "build", "engine_library_version"]
