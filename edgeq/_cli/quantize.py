"""`edgeq quantize` and `edgeq sensitivity`: thin shells over edgeq.converters.quantize."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgeq._cli.common import ModelOpt, OutOpt, OverwriteOpt, console
from edgeq.converters.quantize import scheme_names  # torch-free: the registry, not the quantizer

SchemeOpt = Annotated[str, typer.Option("--scheme", "-s", help=" | ".join(scheme_names()))]
BlockOpt = Annotated[int | None, typer.Option("--block-size", help="INT4 block size along the input dim (default 128)")]
CalibOpt = Annotated[Path | None, typer.Option("--calib", help="calibration text file (default: the shipped one)")]
BudgetOpt = Annotated[str | None, typer.Option("--accuracy-budget", help="e.g. ppl+1%, kl<=0.02, cosine>=0.995")]
UpgradeOpt = Annotated[list[str] | None, typer.Option(
    "--upgrade", help="with --accuracy-budget: a weight-only scheme sensitive layers may be raised to before FP16 "
                      "(repeat, cheapest first), e.g. --upgrade int8-wo")]
ReportOpt = Annotated[Path | None, typer.Option("--report", help="write the sensitivity table (JSON + PNG) here")]
KeepOpt = Annotated[list[str] | None, typer.Option("--keep-fp16", help="glob of layer names left unquantized (repeatable)")]
DtypeOpt = Annotated[str | None, typer.Option("--compute-dtype", help="float32 (ONNX Runtime CPU, default) | float16 (GPU engines)")]
HeadOpt = Annotated[bool, typer.Option("--quantize-head", help="quantize the LM head too (tied heads keep the FP embedding table)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="config field override key=value (JSON value), repeatable")]
FormatOpt = Annotated[str, typer.Option("--format", help="onnx (default) | hf (compressed-tensors) | hf-awq (AutoAWQ GEMM) | "
                                        "hf-fp8 (fine-grained FP8): a transformers/vLLM checkpoint in --out, its QDQ ONNX in --out/onnx")]


def _overrides(block_size: int | None, keep: list[str] | None, sets: list[str] | None,
               compute_dtype: str | None = None, quantize_head: bool = False) -> dict:
    import json

    from edgeq.errors import ConfigError

    out: dict = {}
    if block_size is not None:
        out["block_size"] = block_size
    if compute_dtype is not None:
        out["compute_dtype"] = compute_dtype
    if quantize_head:
        out["quantize_lm_head"] = True
    if keep:
        out["keep_fp16"] = tuple(keep)
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _read_calib(path: Path | None) -> str | None:
    from edgeq.errors import ConfigError

    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read calibration file {path}: {exc.strerror}") from exc


def register(app: typer.Typer) -> None:
    @app.command()
    def quantize(model: ModelOpt, scheme: SchemeOpt, out: OutOpt, block_size: BlockOpt = None, calib: CalibOpt = None,
                 accuracy_budget: BudgetOpt = None, upgrade: UpgradeOpt = None, report: ReportOpt = None,
                 keep_fp16: KeepOpt = None,
                 compute_dtype: DtypeOpt = None, quantize_head: HeadOpt = False, set_: SetOpt = None,
                 overwrite: OverwriteOpt = False, format_: FormatOpt = "onnx") -> None:
        """Quantize a model into one QDQ ONNX (ONNX Runtime + TensorRT) checked against the FP reference."""
        from edgeq.converters.quantize import get_config
        from edgeq.converters.quantize import quantize as run

        cfg = get_config(scheme, **_overrides(block_size, keep_fp16, set_, compute_dtype, quantize_head))
        if format_ != "onnx":
            from edgeq.converters.hf_checkpoint.api import hf_config_for, quantize_to_hf

            hf = quantize_to_hf(model, cfg, out, hf=hf_config_for(format_), calib_text=_read_calib(calib),
                                accuracy_budget=accuracy_budget, report_dir=report, overwrite=overwrite)
            console.print(f"[green]wrote[/green] {hf.hf.format} checkpoint {hf.out_dir} (QDQ ONNX of the same weights: "
                          f"{hf.onnx_dir})")
            return
        from edgeq.converters.quantize.mixed import rung_config
        from edgeq.errors import ConfigError

        if upgrade and not accuracy_budget:
            raise ConfigError("--upgrade needs --accuracy-budget: rungs are what a budget raises layers to")
        res = run(model, cfg, out, calib_text=_read_calib(calib), accuracy_budget=accuracy_budget,
                  upgrade=tuple(rung_config(u, cfg.compute_dtype) for u in upgrade or ()), report_dir=report,
                  overwrite=overwrite)
        r = res.report
        console.print(f"[green]quantized[/green] {r['model']} ({r['scheme']}) → {res.onnx_path}")
        console.print(f"layers quantized: {len(r['layers'])}, kept unquantized: {len(r['kept_fp16'])}; "
                      f"size {r['sizes']['fp_onnx_bytes'] / 1e6:.1f} MB → {r['sizes']['quantized_onnx_bytes'] / 1e6:.1f} MB")
        if r.get("validation"):
            v = r["validation"]
            detail = (f"KL {v['mean_kl']:.4g}, top-1 {v['top1_agreement']:.3f}, ppl {v['ppl_reference']:.3f} → {v['ppl_candidate']:.3f}"
                      if "mean_kl" in v else f"cosine mean {v['mean_cosine']:.4f} min {v['min_cosine']:.4f}")
            console.print(f"held-out check vs FP: {detail}")
        if r.get("accuracy_budget"):
            from edgeq.converters.build_report import budget_text

            console.print(f"accuracy budget {budget_text(r['accuracy_budget'])}")

    @app.command()
    def sensitivity(model: ModelOpt, scheme: SchemeOpt, out: OutOpt, block_size: BlockOpt = None,
                    calib: CalibOpt = None, top: Annotated[int, typer.Option(help="rows to print")] = 15) -> None:
        """Per-layer sensitivity (one layer quantized at a time): JSON table + PNG chart in --out."""
        from edgeq.converters.quantize.sensitivity_run import run_sensitivity

        rows, files = run_sensitivity(model, scheme, out, calib_text=_read_calib(calib),
                                      **_overrides(block_size, None, None))
        table = Table("layer", rows[0]["metric"] if rows else "score", "scheme")
        for r in rows[:top]:
            table.add_row(r["layer"], f"{r['score']:.4g}", r["scheme"])
        console.print(table)
        console.print(f"wrote {files['json']} and {files['png']}")
