"""edgeq.sdk: the device runtime. Loads the active engine from the store and serves generate/embed/infer.

``from edgeq.sdk import Runtime, Store`` works, but the submodules load only when first used, so that
``import edgeq.sdk`` stays cheap. Imports here must stay light: no torch, transformers or optimum, ever
(``tests/test_layering.py`` enforces it). onnxruntime, tensorrt and tensorrt_rtx load where they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgeq.errors import EdgeqError

if TYPE_CHECKING:
    from edgeq.sdk.runtime.runtime import Runtime
    from edgeq.sdk.store.store import Store

#: public name -> submodule that defines it (loaded on first attribute access)
_LAZY = {"Runtime": "edgeq.sdk.runtime.runtime", "Store": "edgeq.sdk.store.store"}

__all__ = ["EdgeqError", "Runtime", "Store"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeq.sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
