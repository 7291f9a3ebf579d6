"""`edgeq serve`: the OpenAI-compatible HTTP server over one store's models (or one bundle directory)."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer

from edgeq._cli.common import err_console
from edgeq._cli.run import StoreOrBundle, Threads, open_runtime


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        store: StoreOrBundle,
        model: Annotated[list[str] | None, typer.Option("--model", "-m",
                                                        help="model to serve (repeatable; default: every model in the store)")] = None,
        host: Annotated[str, typer.Option(help="address to bind (loopback unless you mean otherwise)")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port (0 = any free port)")] = 8000,
        max_batch: Annotated[int | None, typer.Option("--max-batch", help="rows per batch (default: the engine profile's maximum)")] = None,
        max_queue: Annotated[int, typer.Option("--max-queue", help="waiting requests before 429")] = 64,
        threads: Threads = 0,
        monitor: Annotated[bool, typer.Option("--monitor/--no-monitor")] = True,
    ) -> None:
        """Serve /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health and /metrics."""
        from edgeq.errors import NotInstalledError
        from edgeq.sdk import STORE_CONFIG_NAME, ServeConfig, Store, run_server

        config = ServeConfig(host=host, port=port, max_batch=max_batch, max_queue=max_queue)
        names: list[str | None] = list(model or [])
        if not names and (store / "manifest.json").is_file():
            names = [None]  # a bundle directory: its one model
        elif not names:
            if not (store / STORE_CONFIG_NAME).is_file():  # Store() would create an empty store at a typo
                raise NotInstalledError(f"no device store at {store}", hint="check --store / EDGEQ_STORE")
            names = list(Store(store).models())
            if not names:
                raise NotInstalledError(f"no models in the store at {store}", hint="install a bundle (`edgeq install`)")
        with contextlib.ExitStack() as stack:
            runtimes = [stack.enter_context(open_runtime(store, n, threads, monitor)) for n in names]
            err_console.print(f"serving {', '.join(f'{rt.model} v{rt.version}' for rt in runtimes)} "
                              f"on http://{host}:{port}/v1")
            run_server(runtimes, config)

