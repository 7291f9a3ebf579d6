"""The result file of bench_h100_fp8.py (the schema of benchmarks/common.Result, without its dependencies).

Standalone like its caller: it runs on the GPU machine with the standard library only.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import traceback
from pathlib import Path
from typing import Any


class Out:
    def __init__(self, quick: bool) -> None:
        self.t0 = time.time()
        self.doc: dict[str, Any] = {"name": "h100_fp8", "schema": 1, "quick": quick, "records": [], "tables": [],
                                    "charts": [], "not_run": [], "notes": []}

    def table(self, title: str, columns: list[str], rows: list[list[Any]], notes: str = "") -> None:
        self.doc["tables"].append({"title": title, "columns": columns, "rows": rows, "notes": notes})

    def skip(self, what: str, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else "".join(traceback.format_exception_only(type(exc), exc)).strip()
        print(f"[h100] not run: {what}: {text}")
        self.doc["not_run"].append({"what": what, "error": text})

    def write(self, out_dir: Path, machine: dict[str, Any]) -> Path:
        self.doc["machine"] = machine
        self.doc["started"] = dt.datetime.fromtimestamp(self.t0, dt.timezone.utc).isoformat(timespec="seconds")
        self.doc["wall_s"] = round(time.time() - self.t0, 1)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "h100_fp8.json"
        path.write_text(json.dumps(self.doc, indent=1) + "\n")
        print(f"[h100] wrote {path}")
        return path


def r3(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.3g}") if abs(x) < 1000 else round(x)
