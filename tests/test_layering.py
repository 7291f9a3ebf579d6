"""The layer rules of DESIGN.md, enforced: the device runtime never pulls in the host toolchain."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgeq

ROOT = Path(edgeq.__file__).parent
HEAVY = ("torch", "transformers", "optimum", "onnx", "accelerate", "gguf", "matplotlib")
#: package -> top-level imports it must never make (anywhere in its files, lazily or not)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "sdk": HEAVY + ("edgeq.converters", "edgeq.targets", "edgeq.cli", "edgeq._cli"),
    "targets": HEAVY + ("edgeq.converters", "edgeq.cli", "edgeq._cli", "onnxruntime"),
}
CORE = ("errors.py", "_fs.py", "_version.py", "__init__.py")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for f in files:
        for name in _imports(f):
            if any(name == m or name.startswith(m + ".") for m in forbidden):
                bad.append(f"{f.relative_to(ROOT.parent)} imports {name}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_layers(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"edgeq/{package} has no modules"
    assert _violations(files, FORBIDDEN[package]) == []


def test_core_is_stdlib_only() -> None:
    files = [ROOT / name for name in CORE]
    assert _violations(files, HEAVY + ("numpy", "onnxruntime", "edgeq.sdk", "edgeq.converters", "edgeq.cli")) == []


def test_checker_sees_lazy_imports(tmp_path: Path) -> None:
    """The static check also catches an import hidden inside a function."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import torch.nn\n    from transformers import AutoModel\n")
    global ROOT
    old, ROOT = ROOT, tmp_path  # relative_to needs a common root
    try:
        assert len(_violations([f], HEAVY)) == 2
    finally:
        ROOT = old


def test_importing_every_sdk_module_loads_no_host_toolchain() -> None:
    modules = ["edgeq.sdk"] + [
        m.name for m in pkgutil.walk_packages([str(ROOT / "sdk")], prefix="edgeq.sdk.")
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n    importlib.import_module(m)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {HEAVY!r})\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"edgeq.sdk pulled in: {proc.stdout.strip()}"
