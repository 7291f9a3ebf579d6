"""`edgeq bench`: measured throughput of a bundle or ONNX directory on this machine, and cost per inference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgeq._cli.common import console


def _prices(values: list[str]) -> dict[str, float]:
    """`--hourly-price 2.5` or `--hourly-price h100-spot=1.9` (repeatable) → label → USD/h."""
    from edgeq.errors import ConfigError

    out: dict[str, float] = {}
    for v in values:
        label, _, num = v.rpartition("=")
        try:
            out[label or "given price"] = float(num)
        except ValueError as exc:
            raise ConfigError(f"--hourly-price takes a number or label=number (USD per hour), got {v!r}") from exc
    return out


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        model: Annotated[Path, typer.Option("--model", "-m", help="bundle directory (edgeq build) or ONNX directory (edgeq export/quantize)")],
        target: Annotated[str, typer.Option("--target", "-t", help="cpu or a target profile name (recorded with the result)")] = "cpu",
        hourly_price: Annotated[list[str], typer.Option("--hourly-price", help="USD per hour of the machine, or label=USD (repeatable)")] = [],  # noqa: B006
        prompt_tokens: Annotated[int, typer.Option(help="LM request: prompt tokens")] = 128,
        new_tokens: Annotated[int, typer.Option(help="LM request: generated tokens")] = 128,
        batch: Annotated[int, typer.Option(help="encoder request: sentences per batch")] = 1,
        threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads (0 = all cores)")] = 0,
        repeats: Annotated[int, typer.Option(help="timed repeats (median reported)")] = 3,
        json_out: Annotated[Path | None, typer.Option("--json", help="also write the result as JSON here")] = None,
    ) -> None:
        """Measure throughput here and print cost per inference (CPI = hourly cost × time / requests)."""
        from edgeq._fs import atomic_write_text
        from edgeq.converters.bench import BenchConfig
        from edgeq.converters.bench import bench as run_bench

        cfg = BenchConfig(prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch=batch, threads=threads, repeats=repeats)
        res = run_bench(model, target, _prices(hourly_price), cfg)
        console.print(f"measured: {res.measured_on} (target {res.target}); {res.seconds_per_request:.4f} s per request")
        t = Table("throughput", "value")
        for k, v in res.throughput.items():
            t.add_row(k.replace("_", " ").replace(" s", "/s"), f"{v:.2f}")
        console.print(t)
        if res.prices:
            unit = "1M generated tokens" if res.task == "text-generation" else "1M sentences"
            c = Table("price", "USD/hour (input)", "requests/hour (1 stream)", "USD per request", f"USD per {unit}")
            for label, row in res.cpi().items():
                c.add_row(label, f"{row['usd_per_hour']:.4g}", f"{row['requests_per_hour']:.1f}",
                          f"{row['usd_per_request']:.3g}", f"{row['usd_per_million_units']:.3g}")
            console.print(c)
        else:
            console.print("no --hourly-price given: throughput only")
        if json_out is not None:
            atomic_write_text(json_out, json.dumps(res.to_dict(), indent=2) + "\n")
