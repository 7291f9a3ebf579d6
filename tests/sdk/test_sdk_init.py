"""`from edgeq.sdk import Runtime` works, and `import edgeq.sdk` alone loads no runtime library."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_public_names_resolve() -> None:
    from edgeq.sdk import Runtime, Store
    from edgeq.sdk.runtime.runtime import Runtime as R
    from edgeq.sdk.store.store import Store as S

    assert Runtime is R and Store is S


def test_unknown_name() -> None:
    import edgeq.sdk

    with pytest.raises(AttributeError):
        edgeq.sdk.NoSuchThing  # noqa: B018


def test_bare_import_is_cheap() -> None:
    code = "import sys, edgeq.sdk; print(sorted(m for m in ('onnxruntime', 'numpy', 'edgeq.sdk.runtime.runtime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
