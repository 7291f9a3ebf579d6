"""Running the app: ``run_server`` (blocking, the CLI) and ``BackgroundServer`` (a thread: tests, benchmarks,
apps that serve next to other work). uvicorn without its optional C extras: the device install stays small."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from edgeq.errors import RuntimeErrorBase
from edgeq.sdk.serve.app import create_app
from edgeq.sdk.serve.config import ServeConfig


def _uvicorn(app: Any, config: ServeConfig) -> Any:
    import uvicorn

    # A stream still open at shutdown gets 5 s to finish; access logs would cost more than a tiny model's step.
    return uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                         access_log=False, lifespan="on", timeout_graceful_shutdown=5))


def run_server(runtimes: Sequence[Any], config: ServeConfig | None = None) -> None:
    """Serve ``runtimes`` (open Runtime objects) until SIGINT / SIGTERM, then return after a graceful shutdown."""
    cfg = config or ServeConfig()
    server = _uvicorn(create_app(runtimes, cfg), cfg)
    if threading.current_thread() is not threading.main_thread():
        server.run()
        return
    # uvicorn re-raises the signal that stopped it once it has shut down, into the handler it found: a
    # no-op one here, so that the caller's cleanup (closing the runtimes) runs and the process exits 0.
    saved = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


class BackgroundServer:
    """The server in a daemon thread: ``with BackgroundServer([rt], ServeConfig(port=0)) as s: s.url``."""

    def __init__(self, runtimes: Sequence[Any], config: ServeConfig | None = None) -> None:
        self.config = config or ServeConfig(port=0)
        self.app = create_app(runtimes, self.config)
        self._server = _uvicorn(self.app, self.config)
        self._thread = threading.Thread(target=self._server.run, name="edgeq-serve", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def server(self) -> Any:
        """The routes' state (models, batchers, metrics)."""
        return self.app.state.server

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        until = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > until:
                raise RuntimeErrorBase(f"the server did not start on {self.config.host}:{self.config.port}")
            time.sleep(0.01)
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
