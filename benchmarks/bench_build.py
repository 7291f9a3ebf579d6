"""Build cost: export, quantize (calibration) and TensorRT-RTX engine build, each stage in its own process
with its wall time and peak RSS (process tree, sampled every 50 ms); and edgeq's SmolLM2 INT4 RTX engine
build against a raw TensorRT-RTX build of the same ONNX with the same shapes (aim: ≤ 30 s, peak RSS ≤ 2× ONNX).

    python benchmarks/bench_build.py [--quick] [--e2e]

--quick uses the tiny random Llama; the full run uses SmolLM2-135M. The quantize stage is measured for INT4-AWQ
(the headline RTX scheme); the FP8 / INT8 engines are built from the models bench_quality left in the cache.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import CACHE, ChildRun, Result, arg_parser, fmt, onnx_bytes, run_child, setup_env  # noqa: E402

STAGE = str(Path(__file__).resolve().parent / "_build_stage.py")

#: (scheme, target, precision for the plan) engines built per run, from FP16-compute graphs as `edgeq build` makes
#: them; "fp32" builds the unquantized export as a strongly typed FP32 engine, for comparison
ENGINES = (("int4-awq", "rtx-ampere", "int4-awq"), ("fp8", "rtx-ada", "fp8"), ("int8-wo", "rtx-ada", "int8-wo"),
           ("fp16", "rtx-ada", "fp16"), ("fp32", "rtx-ada", "fp16"))
QUICK_ENGINES = (("int4-rtn", "rtx-ampere", "int4-rtn"), ("fp16", "rtx-ada", "fp16"))


def _result(run: ChildRun) -> dict[str, Any]:
    for line in reversed(run.stdout.splitlines()):
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    return {}


def main() -> None:
    setup_env()
    p = arg_parser(__doc__)
    p.add_argument("--e2e", action="store_true", help="also time `edgeq build --target rtx-ampere` end to end")
    args = p.parse_args()
    res = Result("build", args.quick)
    model = "tiny-llama" if args.quick else "smollm2-135m"
    engines = QUICK_ENGINES if args.quick else ENGINES
    work = CACHE / "build" / model
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    py = sys.executable
    rows: list[list[Any]] = []
    onnx_of: dict[str, Path] = {}

    def stage(name: str, argv: list[str], size_of: Path | None = None) -> dict[str, Any] | None:
        run = run_child([py, STAGE, *argv], timeout_s=1200)
        out = _result(run)
        if not run.ok:
            res.skip(f"{model} stage {name}", run.error_text())
            return None
        size = onnx_bytes(size_of) if size_of is not None and size_of.exists() else None
        rec = {"model": model, "stage": name, "wall_s": run.wall_s, "peak_rss_bytes": run.peak_rss_bytes,
               "onnx_bytes": size, **out}
        res.records.append(rec)
        ratio = run.peak_rss_bytes / size if size else None
        rows.append([name, fmt(run.wall_s, 3), round(run.peak_rss_bytes / 2**20), round(size / 1e6, 1) if size else None,
                     fmt(ratio, 3), fmt(out.get("build_s"), 3), round(out["engine_bytes"] / 1e6, 1) if out.get("engine_bytes") else None])
        print(f"[build] {name}: {run.wall_s:.1f} s, peak RSS {run.peak_rss_bytes / 2**20:.0f} MiB")
        return rec

    fp_dir = work / "fp32"
    if stage("export (load + optimum export + validation)", ["export", model, str(fp_dir)], fp_dir) is None:
        res.write(args.out)
        return
    onnx_of["fp32"] = fp_dir / "model.onnx"
    # the quantize stage is measured for the headline scheme; the other engines reuse bench_quality's models
    measured = engines[0][0]
    out = work / measured
    if stage(f"quantize {measured} (load + calibrate + export + QDQ + validate)", ["quantize", model, measured, str(out)], out):
        onnx_of[measured] = out / "model.onnx"
    for scheme in dict.fromkeys(s for s, _, _ in engines if s not in onnx_of and s != "fp32"):
        try:
            onnx_of[scheme] = _cached_model(model, scheme)
        except Exception as exc:
            res.skip(f"{model} {scheme} model for the engine build", exc)
    for scheme, target, precision in engines:
        if scheme not in onnx_of:
            continue
        onnx = onnx_of[scheme]
        plan = work / f"plan-{scheme}-{target}.json"
        rec = stage(f"edgeq engine build {scheme} → {target}", ["edgeq-engine", str(onnx), target, precision, "text-generation",
                                                                str(plan), str(work / f"{scheme}-{target}.engine")], onnx)
        if rec is not None and scheme in ("int4-awq", "int4-rtn"):
            stage(f"raw TensorRT-RTX build {scheme} → {target} (same ONNX, same shapes)",
                  ["raw-trtrtx", str(onnx), str(plan), str(work / f"{scheme}-{target}-raw.engine")], onnx)
    if args.e2e:
        stage("edgeq build --target rtx-ampere (end to end)", ["edgeq-build", model, "rtx-ampere", str(work / "bundle")])
    res.table(f"{model}: wall time and peak RSS per stage (each stage a separate process)",
              ["stage", "wall s", "peak RSS MiB", "ONNX MB", "peak RSS / ONNX", "parse+build s (in-process)", "engine MB"], rows,
              notes="Wall time includes Python start-up and imports; 'builder s' is the build_serialized_network call alone. "
                    "TensorRT-RTX builds here run on the CPU (no GPU): no timing cache. Engines are built from the "
                    "FP16-compute graphs `edgeq build` makes (norms/rotary FP32, KV cache FP16); 'fp32' is the unquantized "
                    "FP32 export built as a strongly typed FP32 engine, for comparison.")
    _aims(res, model)
    res.write(args.out)


def _cached_model(model: str, scheme: str) -> Path:
    """bench_quality's output for ``scheme`` (produced now if missing), default block size."""
    from benchmarks import schemes

    label = {"fp8": "edgeq fp8 fp16-compute", "int8-wo": "edgeq int8-wo fp16-compute", "fp16": "fp16 (fp16-compute)",
             "int4-awq": "edgeq int4-awq g128 fp16-compute", "int4-rtn": "edgeq int4-rtn g128 fp16-compute"}[scheme]
    cand = next(c for c in schemes.REGISTRY[model] if c.label == label)
    return schemes.produce(model, cand, fresh=False)[0]


def _aims(res: Result, model: str) -> None:
    recs = {r["stage"]: r for r in res.records}
    edge = next((r for s, r in recs.items() if s.startswith("edgeq engine build int4")), None)
    raw = next((r for s, r in recs.items() if s.startswith("raw TensorRT-RTX build int4")), None)
    if edge is None:
        return
    rows = [["edgeq", fmt(edge["wall_s"], 3), fmt(edge.get("build_s"), 3), round(edge["peak_rss_bytes"] / 2**20),
             fmt(edge["peak_rss_bytes"] / edge["onnx_bytes"], 3) if edge.get("onnx_bytes") else None]]
    if raw is not None:
        rows.append(["raw tensorrt_rtx", fmt(raw["wall_s"], 3), fmt(raw.get("build_s"), 3), round(raw["peak_rss_bytes"] / 2**20),
                     fmt(raw["peak_rss_bytes"] / raw["onnx_bytes"], 3) if raw.get("onnx_bytes") else None])
        rows.append(["edgeq / raw", fmt(edge["wall_s"] / raw["wall_s"], 3),
                     fmt(edge["build_s"] / raw["build_s"], 3) if edge.get("build_s") and raw.get("build_s") else None,
                     fmt(edge["peak_rss_bytes"] / raw["peak_rss_bytes"], 3), None])
    res.table(f"{model} INT4 RTX engine build: edgeq vs raw TensorRT-RTX (aim ≤ 30 s, peak RSS ≤ 2× ONNX)",
              ["builder", "wall s", "parse+build s", "peak RSS MiB", "peak RSS / ONNX"], rows)


if __name__ == "__main__":
    main()
