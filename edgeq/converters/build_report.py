"""What ``edgeq build`` reports: per-stage progress while it runs and a summary table at the end."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIB = 1 << 20


class Stages:
    """Times each pipeline stage and, when a rich console is given, shows a spinner then a ✓ line."""

    def __init__(self, console: Any | None = None) -> None:
        self.console = console
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        start = time.perf_counter()
        status = self.console.status(f"{what} …") if self.console is not None else contextlib.nullcontext()
        try:
            with status:
                yield
        except BaseException:
            if self.console is not None:
                self.console.print(f"[red]✗[/red] {what} ({time.perf_counter() - start:.1f} s)")
            raise
        self.seconds[name] = time.perf_counter() - start
        if self.console is not None:
            self.console.print(f"[green]✓[/green] {what} ({self.seconds[name]:.1f} s)")

    def note(self, text: str) -> None:
        if self.console is not None:
            self.console.print(f"  {text}")


@dataclass(frozen=True)
class BuildResult:
    """The outcome of ``edgeq.converters.build.build``.

    ``engine_mode`` is ``built`` (an engine is in the bundle) or ``planned`` (the bundle carries the
    QDQ ONNX + plan/build_plan.json and the device builds the engine on first start); ``engine_note``
    says which happened and why, in words.
    """

    out_dir: Path
    model_name: str
    target: str
    task: str
    precision: str
    engine_mode: str
    engine_note: str
    onnx_bytes: int
    fp16_onnx_bytes: int
    engine_bytes: int | None
    accuracy: dict[str, Any]
    engine_build: dict[str, Any] | None
    memory: dict[str, Any]
    stage_seconds: dict[str, float]
    shape_notes: tuple[str, ...] = ()
    signed: bool = False
    manifest: Any = field(default=None, repr=False)
    weights_note: str = ""  # a pre-quantized checkpoint: its weights kept exactly, or re-quantized and why
    accuracy_budget: dict[str, Any] | None = None  # the quantizer's budget record (None: no budget applied)
    budget_note: str = ""  # why no budget was applied, when that was not the caller's choice

    def _no_budget(self) -> str:
        return self.budget_note or "none (--accuracy-budget none)"

    @property
    def total_seconds(self) -> float:
        return sum(self.stage_seconds.values())

    def summary_rows(self) -> list[tuple[str, str]]:
        """(label, value) rows of the summary table the CLI prints."""
        def ratio(n: int | None) -> str:
            return f"{n / self.fp16_onnx_bytes:.2f}x FP16" if n and self.fp16_onnx_bytes else "n/a"

        rows = [
            ("target", self.target),
            ("precision", self.precision),
            *([("weights", self.weights_note)] if self.weights_note else []),
            ("engine", self.engine_note),
            ("ONNX size", f"{self.onnx_bytes / MIB:.1f} MiB ({ratio(self.onnx_bytes)})"),
            ("engine size", f"{self.engine_bytes / MIB:.1f} MiB ({ratio(self.engine_bytes)})" if self.engine_bytes else "built on the device"),
            ("accuracy vs reference", _accuracy_text(self.accuracy, self.accuracy_budget)),
            ("accuracy budget", budget_text(self.accuracy_budget) if self.accuracy_budget else self._no_budget()),
        ]
        if self.engine_build:
            rows.append(("engine build time", f"{self.engine_build['seconds']:.1f} s"))
            rows.append(("engine build peak RSS", f"{self.engine_build['peak_rss_bytes'] / MIB:.0f} MiB"))
        rows.append(("memory on target", f"{self.memory['total_bytes'] / MIB:.0f} MiB of {self.memory['budget_bytes'] / MIB:.0f} MiB ({self.memory['variant']})"))
        rows.append(("total time", f"{self.total_seconds:.1f} s"))
        rows.append(("bundle", f"{self.out_dir}{' (signed)' if self.signed else ' (unsigned)'}"))
        return rows


#: What the summary shows of the accuracy record (the manifest keeps all of it).
_ACCURACY_SHOWN = {
    "ppl_increase_pct": "perplexity {:+.2f}%",
    "mean_kl": "KL {:.4f}",
    "top1_agreement": "top-1 {:.1%}",
    "mean_cosine": "cosine {:.4f}",
    "min_cosine": "min cosine {:.4f}",
}


def _accuracy_text(acc: dict[str, Any], budget: dict[str, Any] | None = None) -> str:
    if not acc:
        return "not measured"
    parts = [fmt.format(acc[k]) for k, fmt in _ACCURACY_SHOWN.items() if isinstance(acc.get(k), (int, float))]
    parts.append("on held-out calibration text")
    if budget is None and "passed" in acc:  # without a budget only the scheme's sanity gate was checked
        parts.append("passes the scheme's sanity gate (no accuracy budget)" if acc["passed"] else "OUT OF TOLERANCE")
    return ", ".join(parts) or "see manifest"


def budget_text(b: dict[str, Any]) -> str:
    """One line of what the budget asked, what the graph measured, and what it cost."""
    text = b["budget"]["text"]
    graph = b.get("met_in_graph")
    if graph is None:
        verdict = "met in simulation, graph not checked" if b.get("met") else "NOT MET"
    else:
        verdict = f"met ({b['graph_check']})" if graph else "NOT MET"
    measured = b.get("graph_measured", b.get("measured"))
    ref = b.get("graph_reference", b.get("baseline"))
    shown = (f"ppl {measured:.3f} vs {ref:.3f} ({100 * (measured / ref - 1):+.2f}%)" if b["metric"] == "ppl" and ref
             else f"{b['metric']} {measured:.4g}") if isinstance(measured, (int, float)) else "not measured"
    if not b.get("ladder"):
        return f"{text}: {shown}, {verdict}"
    mix = ", ".join(f"{k} {v:.1%}" for k, v in sorted(b["weight_fraction"].items(), key=lambda kv: -kv[1]))
    raised = len(b["raised"])
    return (f"{text}: {shown}, {verdict}; {raised} linear{'s' if raised != 1 else ''} raised ({mix} of the weights), "
            f"{b['effective_bits']:.2f} bits/weight")
