"""`edgeq targets` (table of target profiles) and `edgeq targets show NAME` (one profile in full)."""

from __future__ import annotations

import typer
from rich.table import Table

from edgeq._cli.common import console


def register(app: typer.Typer) -> None:
    targets_app = typer.Typer(help="Target hardware profiles (data: edgeq/targets/profiles/*.toml).",
                              invoke_without_command=True, no_args_is_help=False)

    @targets_app.callback()
    def targets(ctx: typer.Context) -> None:
        """List the target profiles (each checked against the scheme registry) and their default precisions."""
        if ctx.invoked_subcommand is not None:
            return
        from edgeq.converters.build_checks import checked_profiles
        from edgeq.targets.profile import KNOWN_TASKS as CONVERTIBLE_TASKS

        table = Table()
        for col in ("target", "GPU", "engine", "built on", *CONVERTIBLE_TASKS, "no", "memory (default)"):
            table.add_column(col, no_wrap=col in ("target", "engine"))
        for p in checked_profiles():
            table.add_row(
                "\n".join([p.name, *(f"alias {a}" for a in p.aliases)]), p.sm, p.engine_flavour, p.build_on,
                *(p.default_precision.get(task, "-") for task in CONVERTIBLE_TASKS),
                ", ".join(p.unsupported) or "-",
                f"{p.memory_variants_gb[p.default_variant]:g} GB {p.default_variant}",
            )
        console.print(table)

    @targets_app.command("show")
    def show(name: str) -> None:
        """Print one target profile in full (NAME may be an alias)."""
        from edgeq.converters.build_checks import profile_budget, target_profile
        from edgeq.targets import profile_hash

        p = target_profile(name)
        table = Table("field", "value", title=f"{p.name}: {p.description}", show_header=False)
        if p.aliases:
            table.add_row("aliases", ", ".join(p.aliases))
        table.add_row("compute capability", f"{p.compute_capability} ({p.sm})" if p.compute_capability else "none (CPU)")
        table.add_row("engine", f"{p.engine_flavour}, built on the {p.build_on}")
        table.add_row("compute dtype", p.compute_dtype)
        for task, precs in p.precisions.items():
            table.add_row(f"precisions ({task})", ", ".join(precs) + f"  [default {p.default_precision[task]}]")
        for task in p.precisions:
            budget = profile_budget(p, task)
            ladder = [p.default_precision[task], *p.upgrade_precisions.get(task, ()), "unquantized"]
            table.add_row(f"accuracy budget ({task})", f"{budget if budget else 'none'}"
                          + ("" if task in p.accuracy_budget else " (edgeq's outer bound: the profile states none)")
                          + f"; layers raised along {' → '.join(ladder)}")
        for prec, reason in p.unsupported.items():
            table.add_row(f"no {prec}", reason)
        for task, shapes in p.shapes.items():
            table.add_row(f"shapes ({task})", "  ".join(f"{a} {r.min}/{r.opt}/{r.max}" for a, r in shapes.axes().items()))
        table.add_row("memory variants", ", ".join(
            f"{v} {gb:g} GB" + (" (default)" if v == p.default_variant else "") for v, gb in p.memory_variants_gb.items()))
        table.add_row("usable memory", f"{p.usable_memory_fraction:.0%} → {p.memory_budget_bytes() / 2**30:.1f} GiB on {p.default_variant}")
        if p.builds_engine:
            table.add_row("DLA cores", str(p.dla_cores))
            table.add_row("builder", f"optimization level {p.builder_optimization_level}, workspace {p.workspace_mib} MiB, "
                          f"hardware compat {p.hardware_compatibility}, version compatible {p.version_compatible}")
        table.add_row("profile hash", profile_hash(p))
        console.print(table)

    app.add_typer(targets_app, name="targets")
