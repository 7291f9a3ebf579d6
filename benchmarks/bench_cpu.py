"""Every bundle on a CPU: edgeq's CPU graph vs the bundle graph and onnxruntime-genai, side by side in one run.

- SmolLM2-135M INT4 g64 + INT4 head (the ``edgeq int4-awq g64 head4`` file bench_quality scores): decode tok/s
  at 1 and 2 threads of edgeq's runtime on the bundle graph as written (the runtime before the CPU graph), on
  the bundle's CPU graph (``converters.cpu_graph``), and of onnxruntime-genai on the same file and on the CPU
  graph file. Every engine is open at once and the repeats are interleaved (one generation of each per
  round), so a change of load hits all alike; figures are also given as ratios to genai on the same file.
- The same INT4 weights in an FP16-compute graph (``quantize.half.to_float16``: what a GPU target's build
  writes) served on this CPU through its CPU graph, vs the CPU build above (the aim: >= 0.8x).
- ``--demo-bundle DIR`` (a bundle ``scripts/demo.sh`` built, rtx-ada FP8): its CPU graph vs its bundle graph.
- Nodes per step: the node count of each graph after ONNX Runtime's optimizer (what one decode step runs).

    python benchmarks/bench_cpu.py [--quick] [--demo-bundle demo-out/bundle]
    python benchmarks/bench_cpu.py --demo-only --demo-bundle demo-out/bundle   # results/cpu_demo.json
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import CACHE, EVAL_TEXT, Result, arg_parser, cached_export, copy_bandwidth, fmt, setup_env  # noqa: E402

MODEL = "smollm2-135m"
INT4_LABEL = "edgeq int4-awq g64 head4"


def nodes_per_step(onnx_path: Path) -> int:
    """Nodes of the graph ONNX Runtime runs (CPU provider, optimization level all)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "opt.bin")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        return len(onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node)


def genai_dir(bundle: Path, onnx_name: str, work: Path, threads: int, max_length: int) -> Path:
    """An onnxruntime-genai directory over a bundle's ``model/`` + ``tokenizer/`` files, running ``onnx_name``."""
    from benchmarks import lm_speed

    work.mkdir(parents=True, exist_ok=True)
    for sub in ("model", "tokenizer"):
        for f in (bundle / sub).iterdir():
            if not (work / f.name).exists():
                (work / f.name).symlink_to(f.resolve())
    side = work / "side"
    side.mkdir(exist_ok=True)
    for n in ("edgeq_model.json", "config.json"):
        if not (side / n).exists():
            (side / n).symlink_to((work / n).resolve())
    cfg = lm_speed.genai_config(side, threads, max_length)
    cfg["model"]["decoder"]["filename"] = onnx_name
    (work / "genai_config.json").write_text(json.dumps(cfg, indent=1))
    return work


def _bundles(res: Result, quick: bool) -> dict[str, Path]:
    """The INT4 CPU bundle, the same without its CPU graph, and the FP16-compute (GPU graph) one with its CPU graph."""
    import onnx

    from benchmarks import edgeq_adapter, schemes
    from edgeq.converters.quantize.half import to_float16

    src = cached_export(MODEL)
    cand = next(c for c in schemes.REGISTRY[MODEL] if c.label == INT4_LABEL)
    q4 = schemes.produce(MODEL, cand, fresh=False)[0]
    root = CACHE / "bundles" / "cpu"
    out = {"cpu build, bundle graph": root / "int4-plain", "cpu build, CPU graph": root / "int4-cpu",
           "GPU bundle (FP16 graph), CPU graph": root / "int4-fp16-cpu"}
    if not (out["cpu build, bundle graph"] / "manifest.json").is_file():
        edgeq_adapter.onnx_bundle(src, q4.parent, out["cpu build, bundle graph"], precision="int4-awq")
    if not (out["cpu build, CPU graph"] / "manifest.json").is_file():
        edgeq_adapter.onnx_bundle(src, q4.parent, out["cpu build, CPU graph"], precision="int4-awq", cpu_graph=True)
    if not (out["GPU bundle (FP16 graph), CPU graph"] / "manifest.json").is_file():
        half = root / "fp16-graph"
        shutil.rmtree(half, ignore_errors=True)
        half.mkdir(parents=True)
        m = onnx.load(str(q4))
        stats = to_float16(m)
        onnx.save_model(m, str(half / "model.onnx"))
        res.notes.append(f"FP16-compute graph of the INT4 file: {stats.to_dict()}")
        edgeq_adapter.onnx_bundle(src, half, out["GPU bundle (FP16 graph), CPU graph"], precision="int4-awq",
                                  cpu_graph=True)
    return out


def _rt_decode(rt: Any, prompt: str, n_new: int) -> float:
    g = rt.generate(prompt, max_new_tokens=n_new)
    return g.decode_tokens_per_s


def bench(res: Result, quick: bool, threads: list[int], demo: Path | None, bw_gbps: float) -> None:
    from benchmarks import edgeq_adapter, lm_speed
    from edgeq.sdk.bundle.manifest import Manifest

    n_prompt, n_new, repeats = (32, 16, 2) if quick else (128, 128, 5)
    bundles = _bundles(res, quick)
    src = cached_export(MODEL)
    ids = lm_speed.prompt_ids(src, EVAL_TEXT, n_prompt)
    from tokenizers import Tokenizer

    prompt = Tokenizer.from_file(str(src / "tokenizer.json")).decode(ids[0].tolist())
    plain = bundles["cpu build, bundle graph"]
    bytes_tok = lm_speed.decode_bytes_per_token(plain / "model/model.onnx", n_prompt + n_new // 2)["total"]
    nodes = {"bundle graph (INT4, FP32)": nodes_per_step(plain / "model/model.onnx"),
             "CPU graph (INT4)": nodes_per_step(bundles["cpu build, CPU graph"] / "model/model.cpu.onnx"),
             "GPU bundle graph (INT4, FP16)": nodes_per_step(bundles["GPU bundle (FP16 graph), CPU graph"] / "model/model.onnx")}
    for label, b in bundles.items():
        info = Manifest.load(b).build.get("cpu_graph")
        if info:
            res.records.append({"what": "cpu_graph", "bundle": label, **info})
    rows: list[list[Any]] = []
    for t in threads:
        engines: dict[str, Any] = {}
        for label, b in bundles.items():
            engines[f"edgeq runtime, {label}"] = edgeq_adapter.open_runtime(b, t, monitor=False)
        gens = {}
        for label, name in (("onnxruntime-genai, bundle graph", "model.onnx"), ("onnxruntime-genai, CPU graph", "model.cpu.onnx")):
            try:
                gm = lm_speed.genai_model(genai_dir(bundles["cpu build, CPU graph"], name,
                                                    CACHE / "genai" / f"cpu-{name}-t{t}", t, n_prompt + n_new))
                gens[label] = gm
            except Exception as exc:
                res.skip(f"{label} t={t}", exc)
        runs: dict[str, list[float]] = {k: [] for k in (*engines, *gens)}
        short = ids[:, :16]
        for rt in engines.values():
            rt.generate(prompt[:60], max_new_tokens=4)  # warm-up, not timed
        for gm in gens.values():
            lm_speed.genai_generate(gm, short, 4)
        for _ in range(repeats):  # interleaved: one generation of each engine per round
            for k, rt in engines.items():
                runs[k].append(_rt_decode(rt, prompt, n_new))
            for k, gm in gens.items():
                r = lm_speed.genai_generate(gm, ids, n_new)
                runs[k].append(r["decode_tokens"] / r["decode_s"])
        for rt in engines.values():
            rt.close()
        genai = statistics.median(runs["onnxruntime-genai, bundle graph"]) if runs.get("onnxruntime-genai, bundle graph") else None
        cpu_build = statistics.median(runs["edgeq runtime, cpu build, CPU graph"])
        for k, v in runs.items():
            med = statistics.median(v)
            frac = med * bytes_tok / (bw_gbps * 1e9)
            rec = {"engine": k, "threads": t, "decode_tok_s": med, "runs": v, "vs_genai_same_file": med / genai if genai else None,
                   "vs_cpu_build_cpu_graph": med / cpu_build, "bandwidth_fraction": frac, "bytes_per_token": bytes_tok}
            res.records.append(rec)
            rows.append([k, t, fmt(med, 4), fmt((max(v) - min(v)) / med, 2), fmt(rec["vs_genai_same_file"], 3),
                         fmt(rec["vs_cpu_build_cpu_graph"], 3), fmt(frac, 3)])
            print(f"[cpu] {k} t={t}: {med:.1f} tok/s {[round(x, 1) for x in v]}")
    res.table(f"SmolLM2-135M INT4 g64 + INT4 head on this CPU: {n_prompt}-token prompt + {n_new} new tokens, greedy "
              f"(median of {repeats} interleaved rounds)",
              ["engine", "threads", "decode tok/s", "spread", "x genai (same file)", "x CPU build's CPU graph",
               "fraction of bandwidth limit"], rows,
              notes=f"Bandwidth limit {bw_gbps:.1f} GB/s (best numpy copy); {bytes_tok / 1e6:.1f} MB read per token "
                    "(weights + FP32 KV). 'bundle graph' = the QDQ ONNX as quantized (what the runtime ran before the "
                    "CPU graph); 'GPU bundle' = the same INT4 weights in an FP16-compute graph. The runtime's "
                    "decode tok/s counts the tokens after the first (GenerationResult.decode_tokens_per_s).")
    res.table("Nodes per decode step (after ONNX Runtime's optimizer, CPU provider)", ["graph", "nodes"],
              [[k, v] for k, v in nodes.items()])
    if demo is not None:
        _demo(res, demo, threads, quick, prompt)


def _demo(res: Result, bundle: Path, threads: list[int], quick: bool, prompt: str) -> None:
    """The demo's bundle: CPU graph vs the bundle graph as written (few tokens: the latter runs ~1 tok/s)."""
    from benchmarks import edgeq_adapter
    from edgeq.sdk.bundle.manifest import Manifest

    m = Manifest.load(bundle)
    rewrite = (m.build.get("cpu_graph") or {}).get("rewrite", {})
    fp8_as = {"int8": "INT8 per output channel", "float32": "FP32 folded at load"}.get(rewrite.get("fp8_as") or "float32")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:  # the same bundle without its CPU graph entry (unsigned copy)
        plain = Path(tmp) / "b"
        shutil.copytree(bundle, plain, ignore=shutil.ignore_patterns("manifest.sig"))
        raw = json.loads((plain / "manifest.json").read_text())
        raw["engines"] = [e for e in raw["engines"] if e.get("device") != "cpu"]
        (plain / "manifest.json").write_text(json.dumps(raw))
        for t in threads:
            for label, b, n in (("CPU graph", bundle, 48), ("bundle graph as written", plain, 4 if quick else 8)):
                with edgeq_adapter.open_runtime(b, t, monitor=False) as rt:
                    rt.generate("Hi", max_new_tokens=2)
                    v = [_rt_decode(rt, prompt, n) for _ in range(1 if n < 10 else 3)]
                    med = statistics.median(v)
                    res.records.append({"what": "demo", "engine": label, "threads": t, "decode_tok_s": med, "runs": v,
                                        "new_tokens": n, "target": m.target, "precision": m.precision})
                    rows.append([f"{m.target} {m.precision}: {label}", t, n, fmt(med, 4)])
                    print(f"[cpu] demo {label} t={t}: {med:.2f} tok/s")
    res.table("The README demo's bundle on this CPU (edgeq runtime)", ["bundle", "threads", "new tokens", "decode tok/s"],
              rows, notes="The bundle graph computes in FP16 with FP8 QDQ on weights and activations; the CPU graph is "
                          f"FP32-compute weight-only, fused, FP8 weights as {fp8_as}.")


def main() -> None:
    setup_env()
    p = arg_parser(__doc__)
    p.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    p.add_argument("--demo-bundle", type=Path, default=None)
    p.add_argument("--demo-only", action="store_true", help="only the demo bundle (results/cpu_demo.json)")
    args = p.parse_args()
    if args.demo_only:
        if args.demo_bundle is None:
            p.error("--demo-only needs --demo-bundle")
        res = Result("cpu_demo", args.quick)
        from benchmarks import lm_speed

        ids = lm_speed.prompt_ids(cached_export(MODEL), EVAL_TEXT, 32 if args.quick else 128)
        from tokenizers import Tokenizer

        prompt = Tokenizer.from_file(str(cached_export(MODEL) / "tokenizer.json")).decode(ids[0].tolist())
        _demo(res, args.demo_bundle, args.threads, args.quick, prompt)
        res.write(args.out)
        return
    res = Result("cpu", args.quick)
    bw = max((copy_bandwidth(mib=128 if args.quick else 512, threads=t) for t in sorted(set(args.threads))),
             key=lambda b: b["best_gbps"])
    res.records.append({"what": "copy_bandwidth", **bw})
    bench(res, args.quick, args.threads, args.demo_bundle, bw["best_gbps"])
    res.write(args.out)


if __name__ == "__main__":
    main()
