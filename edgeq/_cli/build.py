"""`edgeq build --target X [--model M] [--precision P] [--out DIR] [--sign-key K]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgeq._cli.common import OverwriteOpt, console, err_console
from edgeq._cli.quantize import _overrides
from edgeq.converters.quantize import scheme_names


def register(app: typer.Typer) -> None:
    @app.command()
    def build(
        target: Annotated[str, typer.Option("--target", "-t", help="target profile (see `edgeq targets`)")],
        model: Annotated[str, typer.Option("--model", "-m", help="hub id, model dir, .gguf, or built-in name")] = "smollm2-135m",
        precision: Annotated[str | None, typer.Option("--precision", "-p", help=f"quantization scheme ({' | '.join(scheme_names())}); default: the target's")] = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="bundle directory (default ./<model>-<target>-<precision>)")] = None,
        sign_key: Annotated[Path | None, typer.Option("--sign-key", help="ed25519 private key to sign the manifest")] = None,
        variant: Annotated[str | None, typer.Option("--variant", help="memory variant of the target, e.g. orin-nano-4")] = None,
        bundle_version: Annotated[int, typer.Option("--bundle-version", help="manifest bundle_version")] = 1,
        overwrite: OverwriteOpt = False,
        health: Annotated[bool, typer.Option("--health/--no-health", help="compute health-monitor canaries")] = True,
        cpu_graph: Annotated[bool, typer.Option("--cpu-graph/--no-cpu-graph",
                                                help="give an LM bundle its CPU graph (FP32, fused; devices without a usable GPU serve it)")] = True,
        block_size: Annotated[int | None, typer.Option("--block-size", help="INT4 block size (default 128)")] = None,
        quantize_head: Annotated[bool, typer.Option("--quantize-head", help="quantize the LM head too (faster decode, some accuracy)")] = False,
        accuracy_budget: Annotated[str | None, typer.Option(
            "--accuracy-budget", help="what the quantized model must meet on held-out text: ppl+1%, kl<=0.02, "
                                      "cosine>=0.995, or none; default: the target's (`edgeq targets show`)")] = None,
    ) -> None:
        """Build a signed, deployable bundle of MODEL for TARGET: export, quantize, check, build the engine."""
        from edgeq.converters.build import build as run_build

        result = run_build(model, target, precision, out, sign_key=sign_key, variant=variant,
                           bundle_version=bundle_version, overwrite=overwrite, console=err_console,
                           health=health, cpu_graph=cpu_graph, accuracy_budget=accuracy_budget, quant_overrides=_overrides(block_size, None, None, quantize_head=quantize_head))
        table = Table("", "", title=f"{result.model_name} → {result.target}", show_header=False)
        for label, value in result.summary_rows():
            table.add_row(label, value)
        console.print(table)
        for note in result.shape_notes:
            console.print(f"[yellow]note:[/yellow] shape range fitted to the model: {note}")
        if result.engine_mode == "planned":
            console.print("[yellow]engine planned, not built here[/yellow]: the device builds it on first start "
                          "(plan/build_plan.json; the same command for trtexec is in plan/trtexec.txt)")
