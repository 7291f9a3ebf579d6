"""`edgeq plan`: does a model fit a target, per precision and memory variant, from its config.json alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgeq._cli.common import console

GIB = 1 << 30

ConfigOpt = Annotated[Path, typer.Option("--model-config", help="the model's config.json (or its directory); no weights needed")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="target profile (see `edgeq targets`)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the plan as JSON instead of a table")]


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def register(app: typer.Typer) -> None:
    @app.command()
    def plan(model_config: ConfigOpt, target: TargetOpt = "jetson-orin", as_json: JsonOpt = False) -> None:
        """Weights (all experts included) + KV cache at the profile's context + builder workspace, against every
        memory variant of the target at every precision. Counts come from the config's arithmetic: seconds,
        no download, no model built."""
        from edgeq.converters.capacity import plan_from_config
        from edgeq.targets import get_profile

        res = plan_from_config(model_config, target)
        if as_json:
            import json

            console.print_json(json.dumps(res.to_dict()))
            return
        profile = get_profile(res.target)
        p = res.params
        line = f"{res.model_type} ({res.task}): {p.total / 1e9:.2f} B parameters, {p.linear / 1e9:.2f} B in quantizable linears"
        if p.num_experts:
            line += (f" ({p.expert / 1e9:.2f} B in {p.moe_layers} x {p.num_experts} experts, top-{p.experts_per_token}: "
                     f"{p.active / 1e9:.2f} B active per token)")
        console.print(line)
        if res.kv_tokens:
            console.print(f"KV cache in FP16 for batch {res.kv_batch} x {res.kv_tokens} tokens (the profile's max "
                          f"past + sequence); builder workspace {profile.workspace_mib} MiB; a variant's budget is "
                          f"{profile.usable_memory_fraction:.0%} of its memory")
        for note in res.shape_notes:
            console.print(f"shapes fitted to the model: {note}")
        runs = [f for f in res.fits if not f.refused]
        needs = Table(title=f"needed on {res.target} per precision (GiB)")
        for col in ("precision", "weights", "KV cache", "workspace", "total"):
            needs.add_column(col, justify="left" if col == "precision" else "right")
        for fit in runs:
            e = next(iter(fit.estimates.values()))
            needs.add_row(fit.precision, _gib(e.weights), _gib(e.kv_cache), _gib(e.workspace), _gib(e.total))
        console.print(needs)
        fits = Table(title=f"fits on each {res.target} memory variant?")
        fits.add_column("variant")
        fits.add_column("budget GiB", justify="right")
        for fit in runs:
            fits.add_column(fit.precision)
        for v in profile.memory_variants_gb:
            fits.add_row(v, _gib(profile.memory_budget_bytes(v)),
                         *["fits" if fit.estimates[v].fits else "no" for fit in runs])
        console.print(fits)
        for fit in res.fits:
            if fit.refused:
                console.print(f"{fit.precision}: not run on {res.target}: {fit.refused}")
