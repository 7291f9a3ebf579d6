"""`edgeq keys generate`, `edgeq pack` and `edgeq publish`: the host side of signing and shipping bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeq._cli.common import OverwriteOpt, console


def register(app: typer.Typer) -> None:
    keys_app = typer.Typer(help="Bundle signing keys (ed25519).", no_args_is_help=True)
    app.add_typer(keys_app, name="keys")

    @keys_app.command("generate")
    def generate(
        out: Annotated[Path, typer.Option("--out", "-o", help="directory for NAME.key (0600) and NAME.pub")] = Path("."),
        name: Annotated[str, typer.Option("--name", help="file name stem")] = "edgeq",
        overwrite: OverwriteOpt = False,
    ) -> None:
        """Generate an ed25519 signing key pair."""
        from edgeq.converters.signing import generate_keypair

        kp = generate_keypair(out, name, overwrite=overwrite)
        console.print(f"private key: {kp.private_path} (keep secret)\npublic key:  {kp.public_path}\nkey id:      {kp.key_id}")

    @app.command()
    def pack(
        bundle: Annotated[Path, typer.Argument(help="bundle directory")],
        out: Annotated[Path, typer.Option("--out", "-o", help="archive file to write (.edgeq.tar)")],
        overwrite: OverwriteOpt = False,
    ) -> None:
        """Pack a bundle directory into one archive file for transport."""
        from edgeq.converters.pack import pack as pack_bundle

        console.print(f"packed → {pack_bundle(bundle, out, overwrite=overwrite)}")

    @app.command()
    def publish(
        bundle: Annotated[Path | None, typer.Argument(help="bundle directory or archive")] = None,
        repo: Annotated[Path, typer.Option("--repo", help="TUF repository directory (created if new); serve REPO/public")] = Path("repo"),
        keys: Annotated[Path | None, typer.Option("--keys", help="TUF role keys dir (default REPO/keys)")] = None,
        trust: Annotated[list[Path] | None, typer.Option("--trust", help="publisher public key to check the bundle signature with")] = None,
        allow_unsigned: Annotated[bool, typer.Option("--allow-unsigned", help="publish a bundle without manifest.sig")] = False,
        refresh: Annotated[bool, typer.Option("--refresh", help="only re-sign snapshot/timestamp with fresh expiry")] = False,
    ) -> None:
        """Add a bundle to a TUF repository (or --refresh its timestamp)."""
        from edgeq.converters import publish as pub
        from edgeq.errors import ConfigError
        from edgeq.sdk import TrustedKeys

        if refresh:
            console.print(f"timestamp re-signed (version {pub.refresh(repo, keys_dir=keys)})")
            return
        if bundle is None:
            raise ConfigError("give a BUNDLE to publish, or --refresh")
        r = pub.publish(bundle, repo, keys_dir=keys, trusted_keys=TrustedKeys(trust or []), allow_unsigned=allow_unsigned)
        console.print(f"published {r.model} v{r.version} as {r.target} (targets v{r.targets_version})")
        console.print(f"serve {Path(repo).absolute() / 'public'}; devices bootstrap trust from {r.root_path}")
