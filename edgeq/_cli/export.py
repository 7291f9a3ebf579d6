"""`edgeq export` and `edgeq models`."""

from __future__ import annotations

import typer
from rich.table import Table

from edgeq._cli.common import ModelOpt, OutOpt, OverwriteOpt, TaskOpt, console


def register(app: typer.Typer) -> None:
    @app.command()
    def export(model: ModelOpt, out: OutOpt, task: TaskOpt = None, overwrite: OverwriteOpt = False) -> None:
        """Export a model to ONNX and validate it against PyTorch."""
        from edgeq.converters.export import export_onnx

        result = export_onnx(model, out, task=task, overwrite=overwrite)
        console.print(f"[green]exported[/green] {result.loaded.name} → {result.onnx_path}")
        console.print(f"validation: {result.report.summary()}")

    @app.command()
    def models() -> None:
        """List the built-in offline model names."""
        from edgeq.converters.sources import builtin_models

        table = Table("name", "what")
        for name, what in builtin_models().items():
            table.add_row(name, what)
        console.print(table)
