"""Where a GPU decode step's time goes, on the lent H200: the raw ONNX Runtime IOBinding loop of bench_gpu.py
under session-option variants, edgeq's runtime under the same, onnxruntime-genai, and ONNX Runtime's profile of
one decode step (node time by provider and op type against the step's wall time).

A diagnostic, not a benchmark: its output (``gpu_probe.json``) says which option or which ops explain a gap
that bench_gpu.py measured. Batch 1, a 16-token prompt, 64 new tokens, median of 3.

    python benchmarks/gpu_probe.py --work /tmp/edgeq-gpu-bench --models smollm2-int4-awq smollm2-fp8 --out $OUT
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import gpu_peers as peers  # noqa: E402

PROMPT, NEW, REPEATS = 16, 64, 3
#: name -> (intra_op_num_threads, graph level, session config entries)
VARIANTS: dict[str, tuple[int, str, dict[str, str]]] = {
    "default": (0, "ORT_ENABLE_ALL", {}),
    "threads=1": (1, "ORT_ENABLE_ALL", {}),
    "no spinning": (0, "ORT_ENABLE_ALL", {"session.intra_op.allow_spinning": "0"}),
    "threads=1, no spinning": (1, "ORT_ENABLE_ALL", {"session.intra_op.allow_spinning": "0"}),
    "extended": (0, "ORT_ENABLE_EXTENDED", {}),
    "basic": (0, "ORT_ENABLE_BASIC", {}),
}


def ms_per_step(fn: Any) -> float:
    fn(4)  # warm-up
    runs = sorted(r["decode_s"] / r["decode_tokens"] for r in (fn(NEW) for _ in range(REPEATS)))
    return 1e3 * runs[len(runs) // 2]


def session(ort: Any, path: Path, threads: int, level: str, config: dict[str, str], profile: str | None = None) -> Any:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    for k, v in config.items():
        so.add_session_config_entry(k, v)
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(str(path), so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])


def profile_table(trace: Path, runs: int) -> dict[str, Any]:
    """Per decode step: node time summed by (provider, op), the node count, and the model_run wall time."""
    events = json.loads(trace.read_text())
    model_runs = [e for e in events if e.get("name") == "model_run"][-runs:]
    start = model_runs[0]["ts"]
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("ts", 0) >= start
             and e.get("name", "").endswith("_kernel_time")]
    by: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.Counter()
    for e in nodes:
        key = f"{e['args'].get('provider', '?')}:{e['args'].get('op_name', '?')}"
        by[key] += e["dur"] / runs
        count[key] += 1
    top = sorted(by.items(), key=lambda kv: -kv[1])[:15]
    return {"steps": runs, "run_wall_us": sum(e["dur"] for e in model_runs) / runs,
            "node_us": sum(by.values()), "nodes_per_step": sum(count.values()) / runs,
            "top": [{"op": k, "us_per_step": round(v, 1), "per_step": count[k] / runs} for k, v in top]}


def probe_model(ort: Any, d: Path, out: dict[str, Any]) -> None:
    from benchmarks.edgeq_adapter import onnx_bundle
    from edgeq.sdk.health.monitor import MonitorConfig
    from edgeq.sdk.runtime.backends import BackendOptions
    from edgeq.sdk.runtime.runtime import Runtime

    info = json.loads((d / "edgeq_model.json").read_text())
    nkv, hd, vocab = info["num_key_value_heads"], info["head_dim"], info["vocab_size"]
    ids = np.random.default_rng(7).integers(3, min(vocab, 32000), (1, PROMPT), dtype=np.int64)
    res: dict[str, Any] = {"raw": {}, "edgeq": {}}
    for name, (threads, level, cfg) in VARIANTS.items():
        sess = session(ort, d / "model.onnx", threads, level, cfg)
        kvt = np.float16 if "float16" in sess.get_inputs()[-1].type else np.float32
        res["raw"][name] = ms_per_step(lambda n: peers.raw_iobinding_generate(ort, sess, ids, n, nkv, hd, kvt))
        print(d.name, "raw", name, f"{res['raw'][name]:.3f} ms/step", flush=True)
        del sess
    bundle = d.parent / f"{d.name}-bundle"
    if not (bundle / "manifest.json").is_file():
        onnx_bundle(d, d, bundle, precision=d.name.split("-", 1)[1], health=False)
    for name, opts in {"default": BackendOptions(prefer=("onnxruntime-gpu",)),
                       "threads=1": BackendOptions(prefer=("onnxruntime-gpu",), intra_op_threads=1)}.items():
        with Runtime.open(bundle, backend=opts, monitor=MonitorConfig(enabled=False)) as rt:
            st = rt._current.stepper
            res["edgeq"][name] = ms_per_step(lambda n: peers.edgeq_generate(st, ids, n))
        print(d.name, "edgeq", name, f"{res['edgeq'][name]:.3f} ms/step", flush=True)
    try:
        gm = peers.genai_model(d, PROMPT + NEW + 8)
        res["genai"] = ms_per_step(lambda n: peers.genai_generate(gm, ids, n))
        print(d.name, "genai", f"{res['genai']:.3f} ms/step", flush=True)
        del gm
    except Exception as exc:  # noqa: BLE001 - a diagnostic records what failed
        res["genai"] = f"{type(exc).__name__}: {exc}"
    prof = d.parent / f"probe-{d.name}"
    sess = session(ort, d / "model.onnx", 0, "ORT_ENABLE_ALL", {}, profile=str(prof))
    kvt = np.float16 if "float16" in sess.get_inputs()[-1].type else np.float32
    peers.raw_iobinding_generate(ort, sess, ids, 12, nkv, hd, kvt)  # 1 prefill + 11 decode runs
    res["raw_profile"] = profile_table(Path(sess.end_profiling()), runs=8)
    print(d.name, "profile", json.dumps(res["raw_profile"])[:1500], flush=True)
    out[d.name] = res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="bench_gpu.py's --work (filled models)")
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    import onnxruntime as ort

    out: dict[str, Any] = {"onnxruntime": ort.__version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for m in a.models:
        try:
            probe_model(ort, a.work / m, out)
        except Exception as exc:  # noqa: BLE001
            out[m] = {"error": f"{type(exc).__name__}: {exc}"}
            print(m, "FAILED", exc, flush=True)
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "gpu_probe.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
