"""edgeq.sdk.serve: an OpenAI-compatible HTTP server on the runtime (`edgeq serve`).

Needs the ``serve`` extra (starlette, uvicorn, msgspec): ``pip install 'edgeq[serve]'``. The names load
lazily, so that importing the package costs nothing until a server is made.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeq.sdk.serve.app import create_app
    from edgeq.sdk.serve.config import ServeConfig
    from edgeq.sdk.serve.runner import BackgroundServer, run_server

_LAZY = {"ServeConfig": "edgeq.sdk.serve.config", "create_app": "edgeq.sdk.serve.app",
         "run_server": "edgeq.sdk.serve.runner", "BackgroundServer": "edgeq.sdk.serve.runner"}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeq.sdk.serve' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:  # the optional extra is not installed
        from edgeq.errors import BackendUnavailableError

        raise BackendUnavailableError(f"edgeq serve needs {exc.name}, which is not installed",
                                      hint="pip install 'edgeq[serve]'") from exc
    globals()[name] = value
    return value
