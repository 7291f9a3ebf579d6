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


#: edgeq.sdk's subpackages, bottom to top: each may import only those before it (and edgeq.sdk.device).
#: The bundle format is in the middle (python-tuf's api/): the store, health and engine read it, the runtime
#: uses them all, and none of them imports the runtime.
SDK_ORDER = ("bundle", "health", "engine", "store", "runtime", "serve")
SDK_FORBIDDEN: dict[str, tuple[str, ...]] = {
    pkg: tuple(f"edgeq.sdk.{above}" for above in SDK_ORDER[i + 1:])
    + (("edgeq.sdk.health", "edgeq.sdk.engine") if pkg == "store" else ())
    for i, pkg in enumerate(SDK_ORDER)
}


@pytest.mark.parametrize("package", SDK_ORDER)
def test_sdk_subpackages_import_downwards_only(package: str) -> None:
    files = sorted((ROOT / "sdk" / package).rglob("*.py"))
    assert files, f"edgeq/sdk/{package} has no modules"
    assert _violations(files, SDK_FORBIDDEN[package]) == []


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> edgeq modules it imports, lazily or not, TYPE_CHECKING blocks included: a cycle is a cycle."""
    files = {_module_name(f): f for f in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            graph[mod] |= {t for t in targets if t in files and t != mod}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    assert _cycles(_import_graph()) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


MAX_LINES = 500


def test_no_file_over_500_lines() -> None:
    top = ROOT.parent
    files = [f for d in ("edgeq", "benchmarks", "tests") for f in (top / d).rglob("*.py")]
    long = {str(f.relative_to(top)): n for f in files if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert long == {}
