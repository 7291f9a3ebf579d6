"""Shared option aliases and rendering helpers for the CLI (defined once, used by every command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="hub id, local model dir, .gguf file, or built-in name (see `edgeq models`)"),
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="output directory (created; must not exist)")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="replace an existing output once the new one is complete")]
TaskOpt = Annotated[str | None, typer.Option("--task", help="text-generation | feature-extraction (default: from the architecture)")]
StoreOpt = Annotated[Path, typer.Option("--store", envvar="EDGEQ_STORE", help="device store directory")]
