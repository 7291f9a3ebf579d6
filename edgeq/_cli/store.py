"""Device store commands: install, status, list, rollback, remove, pull."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from edgeq._cli.common import StoreOpt, console

if TYPE_CHECKING:
    from edgeq.sdk import Store

TrustOpt = Annotated[list[Path] | None, typer.Option("--trust", help="trust this publisher public key (persisted in the store)")]


def _store(store: Path, trust: list[Path] | None = None):  # type: ignore[no-untyped-def]
    """The store at ``store``, created when missing (install and pull start new stores)."""
    from edgeq.sdk import Store

    return Store(store, trusted_keys=trust or [])


def _existing_store(store: Path):  # type: ignore[no-untyped-def]
    """The store at ``store``; a missing one is an error (a typo must not create an empty store)."""
    from edgeq.errors import NotInstalledError
    from edgeq.sdk import STORE_CONFIG_NAME as CONFIG_NAME
    from edgeq.sdk import Store

    if not (store / CONFIG_NAME).is_file():
        raise NotInstalledError(f"no device store at {store}", hint="check --store / EDGEQ_STORE")
    return Store(store)


def register(app: typer.Typer) -> None:
    @app.command()
    def install(
        bundle: Annotated[Path, typer.Argument(help="bundle directory or .edgeq.tar archive")],
        store: StoreOpt,
        allow_downgrade: Annotated[bool, typer.Option("--allow-downgrade", help="install below the store's version floor")] = False,
        allow_unsigned: Annotated[bool, typer.Option("--allow-unsigned", help="accept a bundle without a signature (this install only)")] = False,
        trust: TrustOpt = None,
    ) -> None:
        """Verify a bundle and make it the active version of its model."""
        v = _store(store, trust).install(bundle, allow_downgrade=allow_downgrade, allow_unsigned=allow_unsigned or None)
        signer = f"signed by {v.key_id[:16]}…" if v.key_id else "UNSIGNED"
        console.print(f"[green]installed[/green] {v.model} v{v.version} ({signer}) → {v.path}")

    @app.command()
    def status(store: StoreOpt) -> None:
        """Active version, floor and kept versions of every model; the device probe."""
        s = _existing_store(store)

        table = Table("model", "active", "kept", "floor", "bad", "precision", "target", "health")
        for row in s.status():
            active = s.active(row["model"]) if row["active"] is not None else None
            table.add_row(row["model"], str(row["active"]), ", ".join(map(str, row["versions"])), str(row["floor"]),
                          ", ".join(f"v{v}: {r}" for v, r in row["bad"].items()) or "-",
                          active.manifest.precision if active else "-", active.manifest.target if active else "-",
                          _health_cell(health_summary(s, row["model"])) if active else "-")
        console.print(table)
        d = s.device
        console.print(f"device: {'CPU only' if d.cpu_only else f'GPU {d.gpu_name} (cc {d.compute_capability})'}; "
                      f"engines: {d.trt_versions or 'none'}; edgeq {d.runtime_version}; trusted keys: {len(s.trusted_keys())}")

    @app.command("list")
    def list_(store: StoreOpt) -> None:
        """Every installed version of every model."""
        s = _existing_store(store)
        table = Table("model", "version", "state", "precision", "engines", "signed by", "installed")
        for model in s.models():
            for v in s.versions(model):
                state = "active" if v.active else ("bad" if v.bad else "kept")
                table.add_row(model, str(v.version), state, v.manifest.precision,
                              ", ".join(e.flavour for e in v.manifest.engines), (v.key_id or "unsigned")[:16], v.installed_at)
        console.print(table)

    @app.command()
    def rollback(
        model: Annotated[str, typer.Argument(help="model name")],
        store: StoreOpt,
        to: Annotated[int | None, typer.Option("--to", help="version to activate (default: previous usable)")] = None,
    ) -> None:
        """Switch back to a kept version after re-verifying its files."""
        v = _existing_store(store).rollback(model, to=to)
        console.print(f"[green]active[/green] {model} v{v.version}")

    @app.command()
    def remove(
        model: Annotated[str, typer.Argument(help="model name")],
        store: StoreOpt,
        version: Annotated[int | None, typer.Option("--version", help="one kept version (default: the whole model)")] = None,
    ) -> None:
        """Remove a kept version, or a whole model (its downgrade floor is kept)."""
        gone = _existing_store(store).remove(model, version)
        console.print(f"removed {model} v{', v'.join(map(str, gone))}")

    @app.command()
    def pull(
        url: Annotated[str, typer.Argument(help="base URL of the TUF repository (the served REPO/public)")],
        store: StoreOpt,
        root: Annotated[Path | None, typer.Option("--root", help="the repository's 1.root.json (first pull only)")] = None,
        model: Annotated[list[str] | None, typer.Option("--model", "-m", help="only these models")] = None,
        allow_downgrade: Annotated[bool, typer.Option("--allow-downgrade")] = False,
        trust: TrustOpt = None,
    ) -> None:
        """Update from a TUF repository and install the newest bundles through the store."""
        from edgeq.sdk import pull as do_pull

        for r in do_pull(url, _store(store, trust), root=root, models=model, allow_downgrade=allow_downgrade):
            console.print(f"{r.model} v{r.version}: {r.action}")


def _health_cell(h: dict[str, object]) -> str:
    """One cell: degraded or ok, and the counts of health events the monitor recorded."""
    counts = {k: v for k, v in dict(h["counts"]).items() if v}  # type: ignore[call-overload]
    state = "[red]degraded[/red]" if h["degraded"] else "ok"
    return state + (" (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")" if counts else "")


#: Events that describe health (install/activate events belong to the store's own view).
HEALTH_EVENTS = ("breach", "fallback", "refused", "degraded")


def health_summary(store: Store, model: str, *, last: int = 5) -> dict[str, Any]:
    """Health of ``model`` as the store records it (for `edgeq status`): active version, bad versions
    with reasons, counts per health event, and the last few health events (newest last)."""
    active = store.active(model)
    bad = {iv.version: iv.bad_reason for iv in store.versions(model) if iv.bad}
    events = [e for e in store.events(model) if e.get("event") in HEALTH_EVENTS]
    counts = {k: sum(1 for e in events if e.get("event") == k) for k in HEALTH_EVENTS}
    degraded = bool(events) and events[-1].get("event") == "degraded"
    return {"model": model, "active": active.version, "bad": bad, "degraded": degraded, "counts": counts,
            "recent": events[-last:]}
