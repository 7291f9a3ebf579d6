"""Regenerate BENCHMARKS.md and the PNG charts from ``benchmarks/results/*.json`` only.

Nothing here computes or types a figure: every cell comes from a result file written by a benchmark.

    python benchmarks/report.py [--results DIR] [--out BENCHMARKS.md] [--no-charts]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, ROOT  # noqa: E402

#: section order and the one command that regenerates each result (documented at the top of the file)
SECTIONS: dict[str, tuple[str, str, str]] = {
    "quality": ("Quantization quality", "python benchmarks/bench_quality.py", "est. 15-25 min (edgeq AWQ dominates)"),
    "budget": ("Accuracy budgets: each target's recipe beside its plain scheme", "python benchmarks/bench_budget.py",
               "est. 12-15 min"),
    "fp8": ("FP8 variants: static, dynamic per token, block-scaled", "python benchmarks/bench_fp8.py", "est. 20-35 min (35 min measured with CI sharing the 2 cores)"),
    "nvfp4": ("NVFP4 quality (torch simulation)", "python benchmarks/bench_nvfp4.py", "est. 10 min (AWQ dominates)"),
    "speed": ("Speed on CPU (ONNX Runtime)", "python benchmarks/bench_speed.py", "est. 8-10 min"),
    "cpu": ("Every bundle on a CPU: the CPU graph vs onnxruntime-genai", "python benchmarks/bench_cpu.py "
            "[--demo-bundle demo-out/bundle]", "est. 6-10 min (first run also quantizes and derives)"),
    "cpu_demo": ("The README demo's bundle on a CPU", "python benchmarks/bench_cpu.py --demo-only --demo-bundle "
                 "demo-out/bundle", "est. 2 min"),
    "size": ("Size", "python benchmarks/bench_size.py", "est. 1-2 min (reuses bench_quality's models)"),
    "build": ("Build time and peak memory", "python benchmarks/bench_build.py", "est. 6-8 min"),
    "h100_fp8": ("H100 FP8 (device run)", "python benchmarks/prepare_h100_payload.py, then on the H100: "
                 "python benchmarks/bench_h100_fp8.py --payload .cache/h100_payload --out $OUT", "est. 2 min on the GPU"),
    "cpi": ("Cost per inference", "python benchmarks/bench_cpi.py", "seconds (reads speed.json, h100_fp8.json)"),
    "serve": ("Serving over HTTP (loopback)", "python benchmarks/bench_serve.py", "est. a few minutes"),
    "moe": ("Mixture of experts: graph formulations", "python benchmarks/bench_moe.py", "est. 1-2 min"),
    "gpu_loader": ("transformers' FP8 loader on edgeq's checkpoints (device run)",
                   "python benchmarks/gpu_fp8_loader_check.py prepare --only tiny-llama-fp8-block smollm2-fp8-block; "
                   "on the H200 with transformers 4.57.6: gpu_fp8_loader_check.py check PAYLOAD; "
                   "python benchmarks/gpu_loader_result.py results.json --commit SHA --payload ...", "about 3 min of device time (4 calls carry the payload)"),
    "gpu": ("GPU runtime on the H200 (device run)", "python benchmarks/gpu_payload.py; bash benchmarks/gpu_stage.sh; "
            "benchmarks/gpu_run.sh 1|3|loader|final|probe on the H200; python benchmarks/gpu_result.py",
            "est. 10 min of device time"),
}


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(doc, dict) and "name" in doc and "tables" in doc:
            doc["_file"] = path.name
            docs.append(doc)
    order = list(SECTIONS)
    return sorted(docs, key=lambda d: (order.index(d["name"]) if d["name"] in order else len(order), d["name"]))


def cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "NaN"
        return f"{v:g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(table: dict[str, Any]) -> str:
    cols = table["columns"]
    lines = [f"**{table['title']}**", "", "| " + " | ".join(cell(c) for c in cols) + " |",
             "|" + "|".join(" --- " for _ in cols) + "|"]
    for row in table["rows"]:
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    if table.get("notes"):
        lines += ["", f"_{table['notes']}_"]
    return "\n".join(lines)


def machine_line(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    commit = m.get("commit")
    commit_s = f"`{commit[:10]}`{' (+local changes)' if m.get('dirty') else ''}" if commit else "no git commit"
    v = m.get("versions", {})
    vers = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "torch", "transformers", "tensorrt-rtx-cu13-bindings") if v.get(k))
    mode = " — **quick mode (debug sizes)**" if doc.get("quick") else ""
    return (f"Run {m.get('date', '?')} on {m.get('cpu', '?')} ({m.get('usable_cores', '?')} usable cores, "
            f"{m.get('ram_gib', '?')} GiB RAM, load {m.get('load_avg_1m', '?')}); commit {commit_s}; {vers}; "
            f"took {doc.get('wall_s', '?')} s{mode}.")


def chart(spec: dict[str, Any], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, series = spec["labels"], spec["series"]
    n = max(len(series), 1)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(labels) * n + 2), 4.2))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(labels))]
        ys = [v if v is not None and v == v else 0.0 for v in values]
        ax.bar(xs, ys, width, label=name)
    if spec.get("hline") is not None:
        ax.axhline(spec["hline"], color="k", ls="--", lw=1, label=spec.get("hline_label") or None)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(spec["ylabel"])
    ax.set_title(spec["title"], fontsize=10)
    if n > 1 or spec.get("hline") is not None:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / spec["file"]
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(results_dir: Path = RESULTS, out_md: Path = ROOT / "BENCHMARKS.md", *, charts: bool = True) -> str:
    """Write ``out_md`` (and the charts beside the results) from the result files; returns the markdown."""
    docs = load_results(results_dir)
    parts = [
        "# edgeq benchmarks",
        "",
        "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json` — no number in this file is typed "
        "by hand. Figures are medians of repeated runs after warm-up; comparisons are measured side by side in one run "
        "on one machine. Run everything with `python benchmarks/run_all.py` (then this report is regenerated).",
        "",
        "| benchmark | command | time |",
        "| --- | --- | --- |",
    ]
    parts += [f"| {title} | `{cmd}` | {t} |" for title, cmd, t in SECTIONS.values()]
    parts.append("")
    if not docs:
        parts.append("_No results yet: run the benchmarks._")
    for doc in docs:
        title = SECTIONS.get(doc["name"], (doc["name"],))[0]
        parts += [f"## {title}", "", machine_line(doc), ""]
        for table in doc["tables"]:
            parts += [md_table(table), ""]
        for spec in doc.get("charts", []):
            if charts:
                chart(spec, results_dir)
            rel = (results_dir / spec["file"])
            rel_s = rel.relative_to(out_md.parent) if rel.is_relative_to(out_md.parent) else rel
            parts += [f"![{spec['title']}]({rel_s})", ""]
        if doc.get("not_run"):
            parts += ["**Not run here** (exact error captured at run time):", ""]
            for nr in doc["not_run"]:
                err = nr["error"].strip().replace("\n", "\n    ")
                parts += [f"- {nr['what']}:", "", f"    {err}", ""]
        for note in doc.get("notes", []):
            parts += [f"- {note}"]
        parts.append("")
    text = "\n".join(parts).rstrip() + "\n"
    out_md.write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description="Regenerate BENCHMARKS.md from benchmark results")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--no-charts", action="store_true")
    args = p.parse_args()
    render(args.results, args.out, charts=not args.no_charts)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
