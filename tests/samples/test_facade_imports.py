"""Apps and the CLI use the `edgeq.sdk` facade only: no `edgeq.sdk.<deep>` import, no private Runtime attribute,
and every name they take from the facade resolves."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP_FILES = sorted((ROOT / "samples").rglob("*.py")) + sorted((ROOT / "edgeq" / "_cli").rglob("*.py"))


def _sdk_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import of edgeq.sdk or below in ``path`` (lazy and TYPE_CHECKING ones too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "edgeq.sdk" or node.module.startswith("edgeq.sdk."):
                out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("edgeq.sdk")]
    return out


def test_the_files_are_found() -> None:
    names = {p.name for p in APP_FILES}
    assert {"chat.py", "embed_service.py", "run.py", "serve.py", "store.py"} <= names


@pytest.mark.parametrize("path", APP_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_apps_and_cli_import_only_the_facade(path: Path) -> None:
    deep = [m for m, _ in _sdk_imports(path) if m != "edgeq.sdk"]
    assert deep == [], f"{path.relative_to(ROOT)} imports {deep}; export what it needs from edgeq.sdk"
    sdk = importlib.import_module("edgeq.sdk")
    for _, names in _sdk_imports(path):
        for name in names:
            assert hasattr(sdk, name), f"edgeq.sdk does not export {name!r}"


@pytest.mark.parametrize("path", APP_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_runtime_attributes(path: Path) -> None:
    private = {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)
               and n.attr in ("_current", "_acquire", "_release", "_limits", "_lock")}
    assert private == set(), f"{path.relative_to(ROOT)} reads {sorted(private)}"


def test_every_facade_name_resolves() -> None:
    sdk = importlib.import_module("edgeq.sdk")
    missing = [n for n in sdk.__all__ if getattr(sdk, n, None) is None]
    assert missing == []
    assert sdk.Runtime.__module__ == "edgeq.sdk.runtime.runtime" and sdk.ServeConfig().host == "127.0.0.1"
