"""``quantize(model, config, out_dir)``: calibrate, quantize, (optionally) fit an accuracy budget, export the
folded FP graph, emit QDQ, validate against the FP reference in ONNX Runtime, and write everything atomically."""

from __future__ import annotations

import copy
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeq._fs import atomic_output_dir, check_parent_writable
from edgeq.converters.moe import calibrating_experts
from edgeq.converters.quantize.budget import AccuracyBudget
from edgeq.converters.quantize.calibrate import make_calib_data, quantizable_linears
from edgeq.converters.quantize.config import QuantConfig, get_config
from edgeq.converters.quantize.int4 import check_int4_fits
from edgeq.converters.quantize.numerics import LinearPlan
from edgeq.converters.quantize.registry import QuantContext, handler_for
from edgeq.converters.quantize.sensitivity import write_sensitivity
from edgeq.converters.sources import TEXT_GENERATION, LoadedModel, load_model
from edgeq.errors import AccuracyBudgetError, ConfigError, OutputExistsError, QuantizationError, ValidationError

QUANT_CONFIG = "quant_config.json"
QUANT_REPORT = "quantize_report.json"
_SENS_SEQS = 2  # calibration sequences used per sensitivity measurement
_BUDGET_RETRIES = 3  # longer move prefixes tried when the emitted graph misses a budget its simulation met
BUDGET_REPORT_SUFFIX = ".budget-report"


@dataclass(frozen=True)
class QuantizeResult:
    out_dir: Path
    onnx_path: Path
    report: dict[str, Any]
    config: QuantConfig
    #: the plans the ONNX got and the (folded) model they apply to: what another writer of the same weights needs
    plans: dict[str, LinearPlan] | None = field(default=None, repr=False, compare=False)
    loaded: LoadedModel | None = field(default=None, repr=False, compare=False)


def _resolve(model: str | Path | LoadedModel, mutate: bool) -> LoadedModel:
    if isinstance(model, LoadedModel):
        # never change the caller's model: scale folding rewrites weights in place
        return copy.deepcopy(model) if mutate else model
    p = Path(model)
    if p.is_dir() and (p / "edgeq_model.json").is_file() and (p / "model.onnx").is_file():
        info = json.loads((p / "edgeq_model.json").read_text())
        return load_model(info["name"] if info["name"] in _builtin_names() else info["model_id"])
    return load_model(str(model))


def _builtin_names() -> set[str]:
    from edgeq.converters.sources import builtin_models

    return set(builtin_models())


def _peak_rss_mb() -> float:
    try:
        import resource  # POSIX only (not on Windows)
    except ImportError:
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    """CPU seconds of this process: on a shared machine wall time overstates the cost."""
    return time.process_time()  # user + system CPU of this process, as getrusage's, on every OS


def _validate_onnx(loaded: LoadedModel, cand: Path, ref: Path, holdout: Any, cfg: QuantConfig) -> dict[str, Any]:
    from edgeq.converters import evaluate

    if loaded.task == TEXT_GENERATION:
        ids = holdout.reshape(-1).numpy()
        cmp = evaluate.compare_lm(cand, ref, ids=ids, num_tokens=len(ids), window=holdout.shape[1])
        return {**cmp.to_dict(), "limit": {"max_kl": cfg.max_kl}, "passed": bool(cmp.mean_kl <= cfg.max_kl)}
    batches = [(holdout.numpy(), (holdout * 0 + 1).numpy())]
    emb = evaluate.compare_embeddings(cand, ref, batches=batches)
    return {**emb.to_dict(), "limit": {"min_cosine": cfg.min_cosine}, "passed": bool(emb.mean_cosine >= cfg.min_cosine)}


def _validate_simulated(loaded: LoadedModel, plans: dict[str, LinearPlan], holdout: Any, cfg: QuantConfig) -> dict[str, Any]:
    """``_validate_onnx``'s check through the torch simulation of the graph's arithmetic (``simulate.py``), for a
    scheme whose graph ONNX Runtime CPU cannot execute (NVFP4: no FLOAT4E2M1 DequantizeLinear kernel)."""
    from edgeq.converters.quantize.simulate import compare_simulated

    got = compare_simulated(loaded, plans, holdout)
    method = "torch simulation of the QDQ graph (ONNX Runtime CPU cannot execute it)"
    if loaded.task == TEXT_GENERATION:
        return {**got, "method": method, "limit": {"max_kl": cfg.max_kl}, "passed": bool(got["mean_kl"] <= cfg.max_kl)}
    return {**got, "method": method, "limit": {"min_cosine": cfg.min_cosine},
            "passed": bool(got["mean_cosine"] >= cfg.min_cosine)}


def quantize(
    model: str | Path | LoadedModel,
    config: QuantConfig | str,
    out_dir: str | Path,
    *,
    calib_text: str | None = None,
    accuracy_budget: str | AccuracyBudget | None = None,
    upgrade: tuple[str | QuantConfig, ...] = (),
    max_extra_bytes: int | None = None,
    report_dir: str | Path | None = None,
    overwrite: bool = False,
    plan_hook: Callable[[QuantContext, dict[str, LinearPlan]], dict[str, LinearPlan]] | None = None,
) -> QuantizeResult:
    """Quantize ``model`` with ``config`` into ``out_dir`` (model.onnx + side files + quant_config/report JSON).

    Args:
        model: built-in name / hub id / model dir / .gguf, an exported edgeq ONNX dir, or a LoadedModel
            (never modified: schemes that fold scales work on a copy).
        config: a QuantConfig (see ``get_config``) or a scheme name with default options.
        out_dir: directory to create; appears only when everything succeeded.
        calib_text: calibration text (default: the shipped calibration.txt; never the eval text).
        accuracy_budget: e.g. ``ppl+1%`` or ``cosine>=0.995``: raise the most sensitive layer groups up the
            ladder (``upgrade``, then unquantized) until it holds on held-out calibration text, in the torch
            simulation and then in the emitted graph (``mixed.py``). AccuracyBudgetError when no mix meets it;
            the culprit table is then written to ``report_dir`` (default: ``<out_dir>.budget-report``).
        upgrade: schemes between ``config`` and unquantized, cheapest first (e.g. ``("int8-wo",)`` above INT4);
            weight-only schemes, which quantize the same (folded) weights.
        max_extra_bytes: the most weight bytes the budget may add (the target's free memory).
        report_dir: also write the per-layer sensitivity table (JSON + PNG) there.
        overwrite: replace an existing ``out_dir`` once the new one is complete.
        plan_hook: called with the context and the scheme's plans before anything uses them; returns the plans
            to emit (the HF checkpoint writer snaps them onto what its format stores, so both files hold one
            set of weights).
    """
    t0 = time.time()
    cfg = get_config(config) if isinstance(config, str) else config
    if not isinstance(cfg, QuantConfig):
        raise ConfigError(f"config must be a QuantConfig or scheme name, got {type(config).__name__}")
    handler = handler_for(cfg)
    budget = AccuracyBudget.parse(accuracy_budget) if isinstance(accuracy_budget, str) else accuracy_budget
    out_dir = Path(out_dir)
    # plan before execute: refuse a taken output or an unusable setting before minutes of work
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"output already exists: {out_dir}", hint="pass --overwrite or choose another --out")
    check_parent_writable(out_dir.absolute())
    loaded = _resolve(model, mutate=cfg.folds_scales)
    if budget is not None:
        budget.check_task(loaded.task)
    linears, kept = quantizable_linears(loaded, cfg.keep_fp16, cfg.quantize_lm_head)
    if handler.block_int4:
        check_int4_fits(linears, cfg)
    needs_data = cfg.needs_calibration or budget is not None or report_dir is not None or cfg.validate
    calib = make_calib_data(loaded, calib_text, tokens=cfg.calib_tokens, seq_len=cfg.calib_seq_len,
                            holdout=cfg.holdout_tokens) if needs_data else None

    ctx = QuantContext(loaded=loaded, cfg=cfg, linears=linears, calib=calib)
    t_q, c_q = time.time(), _cpu_s()
    with calibrating_experts(loaded, None if calib is None else calib.calib) as moe_report:
        plans = handler.quantize(ctx)
    if moe_report is not None:
        ctx.stats["moe_calibration"] = moe_report
    if plan_hook is not None:
        plans = plan_hook(ctx, plans)
    quant_s, quant_cpu = time.time() - t_q, _cpu_s() - c_q

    fit = None
    if plans and budget is not None:
        assert calib is not None
        from edgeq.converters.quantize.mixed import fit_budget

        try:
            fit = fit_budget(ctx, plans, budget, upgrade=tuple(upgrade), max_extra_bytes=max_extra_bytes,
                             score_ids=calib.calib[:_SENS_SEQS])
        except AccuracyBudgetError as exc:
            where = Path(report_dir) if report_dir is not None else out_dir.with_name(out_dir.name + BUDGET_REPORT_SUFFIX)
            if exc.culprits:
                write_sensitivity(exc.culprits, where, f"{loaded.name} {cfg.scheme}: budget {budget} missed")
                exc.hint = f"{exc.hint}; per-layer culprits: {where}/sensitivity.json and .png"
            raise
        sens_rows: list[dict[str, Any]] | None = fit.rows()
    elif plans and report_dir is not None:
        assert calib is not None
        from edgeq.converters.quantize.mixed import sensitivity_rows

        sens_rows = sensitivity_rows(loaded, cfg.scheme, plans, calib.calib[:_SENS_SEQS])
    else:
        sens_rows = None
    sens_files = (write_sensitivity(sens_rows, Path(report_dir), f"{loaded.name} {cfg.scheme}")
                  if sens_rows is not None and report_dir is not None else None)
    base_plans = plans
    if fit is not None and budget is not None:
        plans = fit.search.plans(fit.k)

    from edgeq.converters.export import export_onnx, save_side_files
    from edgeq.converters.quantize.qdq import emit_qdq

    with tempfile.TemporaryDirectory(prefix=".edgeq-quant-", dir=out_dir.absolute().parent) as work:
        ref = export_onnx(loaded, Path(work) / "fp").onnx_path  # the folded graph is FP-equivalent
        with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
            def emit(plans: dict[str, LinearPlan]) -> tuple[dict[str, Any], dict[str, Any] | None]:
                emitted = emit_qdq(ref, plans, tmp / "model.onnx", compute_dtype=cfg.compute_dtype)
                if emitted["unmatched"]:
                    raise QuantizationError(f"no ONNX MatMul found for {emitted['unmatched'][:5]} "
                                            f"({len(emitted['unmatched'])} layers)")
                validation = None
                if (cfg.validate or budget is not None) and calib is not None:
                    validation = (_validate_onnx(loaded, tmp / "model.onnx", ref, calib.holdout, cfg)
                                  if handler.runs_on_onnxruntime_cpu else _validate_simulated(loaded, plans, calib.holdout, cfg))
                return emitted, validation

            t_g = time.time()
            emitted, validation = emit(plans)
            budget_info = None
            if budget is not None:
                budget_info, plans, emitted, validation = _fit_graph(fit, budget, emit, plans, emitted, validation,
                                                                     handler.runs_on_onnxruntime_cpu)
                budget_info.setdefault("seconds", {})["graph_checks"] = round(time.time() - t_g, 2)
                for name in base_plans:
                    if name not in plans:
                        kept[name] = f"accuracy budget {budget}"
            save_side_files(loaded, tmp)
            report = {
                "model": loaded.name, "task": loaded.task, "scheme": cfg.scheme, "config": cfg.to_dict(),
                "compute_dtype": cfg.compute_dtype,
                "float16_conversion": emitted["float16"],
                "layers": {n: p.summary() for n, p in plans.items()},
                "kept_fp16": kept,
                "sizes": {"fp_onnx_bytes": ref.stat().st_size,
                          "quantized_onnx_bytes": (tmp / "model.onnx").stat().st_size},
                "calibration": None if calib is None else {
                    "source": "user text" if calib_text is not None else "edgeq/converters/data/calibration.txt",
                    "sequences": int(calib.calib.shape[0]), "seq_len": int(calib.calib.shape[1]),
                    "holdout_tokens": int(calib.holdout.numel()), **_act_summary(plans)},
                "scheme_stats": ctx.stats,
                "sensitivity": sens_rows, "sensitivity_files": sens_files, "accuracy_budget": budget_info,
                "validation": validation,
                "time_s": {"quantize": round(quant_s, 2), "quantize_cpu": round(quant_cpu, 2),
                           "total": round(time.time() - t0, 2)},
                "peak_rss_mb": round(_peak_rss_mb(), 1),
            }
            (tmp / QUANT_CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
            (tmp / QUANT_REPORT).write_text(json.dumps(report, indent=2, default=str) + "\n")
            if budget_info is not None and budget_info["met_in_graph"] is False:
                what = "met in simulation but not by the emitted graph" if fit is not None else "not met by the graph"
                raise AccuracyBudgetError(
                    f"accuracy budget {budget} {what}: {budget.metric} {budget_info['graph_measured']:.4g}, "
                    f"limit {budget_info['graph_limit']:.4g}",
                    hint="the graph's compute dtype costs more than the budget's reserve; loosen the budget")
            if cfg.validate and validation is not None and not validation["passed"]:
                raise ValidationError(
                    f"{cfg.scheme} output disagrees with the FP reference beyond its tolerance: "
                    + json.dumps({k: validation.get(k) for k in ("mean_kl", "mean_cosine", "limit") if k in validation}),
                    hint="keep sensitive layers in FP16 (--accuracy-budget / keep_fp16) or pick a wider scheme")
    return QuantizeResult(out_dir=out_dir, onnx_path=out_dir / "model.onnx", report=report, config=cfg,
                          plans=plans, loaded=loaded)


def _fit_graph(fit: Any, budget: AccuracyBudget, emit: Callable[..., Any], plans: dict[str, LinearPlan],
               emitted: dict[str, Any], validation: dict[str, Any] | None, in_ort: bool) -> tuple[Any, ...]:
    """Check the fit on the emitted graph; a miss takes longer move prefixes (``next_k``). Returns (record, plans,
    emission, validation) of the graph left in place."""
    info = _graph_budget(fit, budget, validation, in_ort)
    attempts = 1
    while fit is not None and info["met_in_graph"] is False and attempts <= _BUDGET_RETRIES:
        nxt = fit.search.next_k(fit.k)
        if nxt is None:
            break
        fit.k = nxt
        plans = fit.search.plans(fit.k)
        emitted, validation = emit(plans)
        info, attempts = _graph_budget(fit, budget, validation, in_ort), attempts + 1
    info["graph_attempts"] = attempts
    return info, plans, emitted, validation


def _graph_budget(fit: Any, budget: AccuracyBudget, validation: dict[str, Any] | None, in_ort: bool) -> dict[str, Any]:
    """The fit's record plus the budget checked on the emitted graph (ONNX Runtime, or the torch simulation
    for a graph ORT CPU cannot run): ``met_in_graph`` None when there was no held-out check."""
    info = fit.summary() if fit is not None else {"budget": budget.to_dict(), "metric": budget.metric, "moves": 0,
                                                  "raised": {}, "kept": [], "note": "nothing is quantized"}
    got = budget.metric_of(validation) if validation is not None else None
    if got is None:
        return {**info, "met_in_graph": None, "graph_check": "none"}
    measured, base = got
    return {**info, "graph_measured": measured, "graph_reference": base, "graph_limit": budget.limit(base),
            "met_in_graph": budget.met(measured, base),
            "graph_check": "onnxruntime cpu" if in_ort else "torch simulation of the graph"}


def _act_summary(plans: dict[str, LinearPlan]) -> dict[str, Any]:
    amax = [p.info["act_amax"] for p in plans.values() if p.info.get("act_amax") is not None]
    if not amax:
        return {}
    return {"act_amax_min": min(amax), "act_amax_max": max(amax), "act_amax_median": sorted(amax)[len(amax) // 2]}
