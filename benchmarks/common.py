"""Shared pieces of the edgeq benchmarks: machine info, timers, peak-RSS of child processes,
a STREAM-like copy bandwidth, cached model exports, and the result-file format.

Every benchmark writes ``benchmarks/results/<name>.json`` with this shape (``report.py`` renders it):

    {"name": str, "schema": 1, "quick": bool, "machine": {...}, "started": iso, "wall_s": float,
     "records": [...raw measurements...],
     "tables": [{"title", "columns", "rows", "notes"}],
     "charts": [{"file", "title", "ylabel", "labels", "series": {name: [values]}, "hline"?}],
     "not_run": [{"what", "error"}]}

Tables and charts hold numbers computed by the benchmark from its own measurements; nothing is typed in.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / ".cache" / "benchmarks"  # git-ignored: exported/quantized models reused between runs
DATA = ROOT / "benchmarks" / "data"
EVAL_TEXT = ROOT / "edgeq" / "converters" / "data" / "eval.txt"
CALIB_TEXT = ROOT / "edgeq" / "converters" / "data" / "calibration.txt"
SCHEMA = 1

#: distributions whose versions every result records (missing ones are recorded as None)
PACKAGES = (
    "edgeq", "numpy", "torch", "onnx", "onnxruntime", "onnxruntime-genai", "onnx-ir", "transformers",
    "optimum-onnx", "tensorrt-rtx-cu13-bindings", "tokenizers",
)


# -- machine ------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> dict[str, Any]:
    """HEAD and whether the tree had local changes; None where git or the repo is absent."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    head = git("rev-parse", "HEAD")
    # Result files written by earlier benchmarks of the same run are not local changes to the code.
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results", ":!BENCHMARKS.md")
    return {"commit": head, "dirty": bool(status) if status is not None else None}


#: a package that installs under another distribution's name: the one whose module is imported wins
_AKA = {"onnxruntime": ("onnxruntime-gpu",), "onnxruntime-genai": ("onnxruntime-genai-cuda",)}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        out[name] = None
        for dist in (*_AKA.get(name, ()), name):  # e.g. onnxruntime-gpu on PYTHONPATH over the image's CPU build
            try:
                out[name] = metadata.version(dist) + ("" if dist == name else f" ({dist})")
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, OS, Python, package versions, git commit, date (UTC)."""
    import psutil

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
        **git_commit(),
    }


# -- timing -------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """Seconds per call: the median of ``samples`` (taken after ``warmup`` discarded calls)."""

    samples: list[float]
    warmup: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the repeats were."""
        return (max(self.samples) - min(self.samples)) / self.median if self.median else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": self.min, "spread": round(self.spread, 4),
                "repeats": len(self.samples), "warmup": self.warmup}


def time_median(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1, inner: int = 1) -> Timing:
    """Call ``fn`` ``warmup`` times, then ``repeats`` times (each timing ``inner`` calls); seconds per call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return Timing(samples, warmup)


# -- child processes with peak RSS ----------------------------------------------------------------------
@dataclass
class ChildRun:
    argv: list[str]
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error_text(self, lines: int = 6) -> str:
        """The last lines of stderr (or stdout): the exact error a failed child printed."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(text[-lines:]) if text else f"exit code {self.returncode}"


def run_child(argv: list[str], *, poll_s: float = 0.05, timeout_s: float | None = None,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> ChildRun:
    """Run ``argv``; sample the RSS of it and its descendants every ``poll_s``; return the peak sum."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=cwd or ROOT)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            ps = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                total = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
                peak = max(peak, total)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
            stop.wait(poll_s)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n[benchmark harness] killed after {timeout_s} s"
    stop.set()
    th.join()
    return ChildRun(list(argv), proc.returncode, time.perf_counter() - t0, peak, out, err)


# -- memory bandwidth -----------------------------------------------------------------------------------
def copy_bandwidth(*, mib: int = 512, repeats: int = 7, threads: int = 1) -> dict[str, Any]:
    """STREAM-like copy with numpy: bytes read + written per second, best and median.

    STREAM counts a copy of N bytes as 2N moved (read + write); decode reads weights, so the bandwidth
    limit used for decode is this figure. With ``threads`` > 1 the array is split into that many slices
    copied concurrently (numpy releases the GIL in the copy), as a multi-threaded decode would read.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    n = mib * 2**20 // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    bounds = np.linspace(0, n, threads + 1, dtype=np.int64)
    slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def copy() -> None:
        if pool is None:
            np.copyto(dst, src)
        else:
            list(pool.map(lambda s: np.copyto(dst[s], src[s]), slices))

    try:
        t = time_median(copy, repeats=repeats, warmup=2)
    finally:
        if pool is not None:
            pool.shutdown()
    moved = 2 * src.nbytes
    return {"bytes_per_copy": moved, "array_mib": mib, "best_gbps": moved / t.min / 1e9,
            "median_gbps": moved / t.median / 1e9, "timing": t.to_dict(), "threads": threads}


# -- models -------------------------------------------------------------------------------------------
def cached_export(model: str) -> Path:
    """The FP32 ONNX export of ``model`` under .cache/benchmarks (exported once, then reused)."""
    out = CACHE / f"{model}-fp32"
    if not (out / "model.onnx").is_file():
        from edgeq.converters.export import export_onnx

        CACHE.mkdir(parents=True, exist_ok=True)
        export_onnx(model, out, overwrite=True)
    return out


def onnx_bytes(model_dir_or_file: Path) -> int:
    """Bytes of an ONNX model and its external data files (``*.onnx`` + ``*.onnx_data``/``*.data``)."""
    p = Path(model_dir_or_file)
    if p.is_file():
        files = [p] + [f for f in p.parent.iterdir() if f.name.startswith(p.name) and f != p]
    else:
        files = [f for f in p.iterdir() if f.suffix in (".onnx", ".data", ".onnx_data", ".bin")]
    return sum(f.stat().st_size for f in files)


def error_text(exc: BaseException) -> str:
    """The exact text of an exception, as recorded for peers that could not run."""
    lines = [ln for ln in traceback.format_exception_only(type(exc), exc)]
    return "".join(lines).strip()


# -- results ------------------------------------------------------------------------------------------
@dataclass
class Result:
    """The result file of one benchmark run, filled as it goes and written once at the end."""

    name: str
    quick: bool
    records: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    charts: list[dict[str, Any]] = field(default_factory=list)
    not_run: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def table(self, title: str, columns: list[str], rows: list[list[Any]], notes: str = "") -> None:
        self.tables.append({"title": title, "columns": columns, "rows": rows, "notes": notes})

    def chart(self, file: str, title: str, ylabel: str, labels: list[str], series: dict[str, list[float | None]],
              hline: float | None = None, hline_label: str = "") -> None:
        self.charts.append({"file": file, "title": title, "ylabel": ylabel, "labels": labels,
                            "series": series, "hline": hline, "hline_label": hline_label})

    def skip(self, what: str, error: str | BaseException) -> None:
        text = error if isinstance(error, str) else error_text(error)
        print(f"[{self.name}] not run: {what}: {text.splitlines()[-1] if text else ''}", file=sys.stderr)
        self.not_run.append({"what": what, "error": text})

    def write(self, out_dir: Path = RESULTS) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        doc = {
            "name": self.name, "schema": SCHEMA, "quick": self.quick, "machine": machine_info(),
            "started": _dt.datetime.fromtimestamp(self.started, _dt.timezone.utc).isoformat(timespec="seconds"),
            "wall_s": round(time.time() - self.started, 1), "records": self.records, "tables": self.tables,
            "charts": self.charts, "not_run": self.not_run, "notes": self.notes,
        }
        path = out_dir / f"{self.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
        os.replace(tmp, path)
        print(f"[{self.name}] wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        return path


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def arg_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick (small sizes, for debugging) and --out."""
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (debugging)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory (default benchmarks/results)")
    return p


def fmt(x: float | None, digits: int = 3) -> float | None:
    """Round for a table cell (None stays None: the report prints '—')."""
    if x is None:
        return None
    return float(f"{x:.{digits}g}") if abs(x) < 10 ** digits else round(x)


def setup_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
