"""English text this project does not hold, for quality figures "on text the project does not hold": the prose
of the package descriptions (``METADATA``) of a fixed list of wheels installed from ``pyproject.toml``'s pins,
with code blocks, tables, links-only and markup lines dropped. Deterministic for a given environment; the
package versions used are returned with the text, and the result files record them."""

from __future__ import annotations

import re
from importlib import metadata

#: wheels whose long descriptions are mostly prose (none is edgeq's, none is in the calibration text)
PACKAGES = ("rich", "typer", "huggingface_hub", "fsspec", "sympy", "networkx", "onnx", "tokenizers", "urllib3",
            "uvicorn", "starlette", "requests", "packaging", "jinja2")
_WORDS = re.compile(r"[A-Za-z]{2,}")


def _prose(body: str) -> list[str]:
    out, fenced = [], False
    for line in body.splitlines():
        s = line.strip()
        if s.startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced or not s or s.startswith(("|", "<", "[!", "![", "    ", ">>>", "$ ", "..", "=", "-" * 3)):
            continue
        s = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", s).strip("#*-> ")
        if len(_WORDS.findall(s)) >= 6:
            out.append(s)
    return out


def external_text() -> tuple[str, dict[str, str]]:
    """(the text, {package: version}) over the installed ``PACKAGES``."""
    parts, used = [], {}
    for name in PACKAGES:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        body = dist.read_text("METADATA") or ""
        body = body.split("\n\n", 1)[1] if "\n\n" in body else ""
        lines = _prose(body)
        if lines:
            parts.append("\n".join(lines))
            used[name] = dist.version
    return "\n\n".join(parts), used
