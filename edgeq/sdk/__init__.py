"""edgeq.sdk: the device runtime. Loads the active engine from the store and serves generate/embed/infer.

The facade apps import: ``from edgeq.sdk import Runtime, MonitorConfig`` works, but the submodules load
only when first used, so that ``import edgeq.sdk`` stays cheap. Apps (samples/) and the CLI import from
here only, so that the inside can move without breaking them (tests/sdk/test_sdk_init.py checks it).
Imports here must stay light: no torch, transformers or optimum, ever (``tests/test_layering.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgeq.errors import EdgeqError

if TYPE_CHECKING:
    from edgeq.sdk.bundle.health import Thresholds, Verdict
    from edgeq.sdk.bundle.signing import TrustedKeys
    from edgeq.sdk.health.monitor import MonitorConfig
    from edgeq.sdk.runtime.aio import AsyncStream
    from edgeq.sdk.runtime.backends import BackendOptions
    from edgeq.sdk.runtime.context import ContextLimits
    from edgeq.sdk.runtime.decode import GenerationConfig, GenerationResult
    from edgeq.sdk.runtime.generation import Generation, Request
    from edgeq.sdk.runtime.kvreuse import KvSession, PrefixCache
    from edgeq.sdk.runtime.runtime import Runtime
    from edgeq.sdk.runtime.session import ChatSession
    from edgeq.sdk.runtime.status import RuntimeStatus
    from edgeq.sdk.serve import BackgroundServer, ServeConfig, create_app, run_server
    from edgeq.sdk.store.store import CONFIG_NAME as STORE_CONFIG_NAME
    from edgeq.sdk.store.store import Store
    from edgeq.sdk.store.update import pull

#: public name -> "module:attribute" that defines it (loaded on first attribute access)
_LAZY = {
    "Runtime": "edgeq.sdk.runtime.runtime:Runtime",
    "RuntimeStatus": "edgeq.sdk.runtime.status:RuntimeStatus",
    "BackendOptions": "edgeq.sdk.runtime.backends:BackendOptions",
    "MonitorConfig": "edgeq.sdk.health.monitor:MonitorConfig",
    "Thresholds": "edgeq.sdk.bundle.health:Thresholds",
    "Verdict": "edgeq.sdk.bundle.health:Verdict",
    "GenerationConfig": "edgeq.sdk.runtime.decode:GenerationConfig",
    "GenerationResult": "edgeq.sdk.runtime.decode:GenerationResult",
    "Generation": "edgeq.sdk.runtime.generation:Generation",
    "Request": "edgeq.sdk.runtime.generation:Request",
    "AsyncStream": "edgeq.sdk.runtime.aio:AsyncStream",
    "ContextLimits": "edgeq.sdk.runtime.context:ContextLimits",
    "ChatSession": "edgeq.sdk.runtime.session:ChatSession",
    "KvSession": "edgeq.sdk.runtime.kvreuse:KvSession",
    "PrefixCache": "edgeq.sdk.runtime.kvreuse:PrefixCache",
    "Store": "edgeq.sdk.store.store:Store",
    "STORE_CONFIG_NAME": "edgeq.sdk.store.store:CONFIG_NAME",
    "pull": "edgeq.sdk.store.update:pull",
    "TrustedKeys": "edgeq.sdk.bundle.signing:TrustedKeys",
    # the OpenAI-compatible server (needs the `serve` extra: starlette, uvicorn, msgspec)
    "ServeConfig": "edgeq.sdk.serve:ServeConfig",
    "create_app": "edgeq.sdk.serve:create_app",
    "run_server": "edgeq.sdk.serve:run_server",
    "BackgroundServer": "edgeq.sdk.serve:BackgroundServer",  # not "serve": that is the subpackage's own name
}

__all__ = ["EdgeqError", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'edgeq.sdk' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
