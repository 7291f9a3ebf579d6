"""GPU decode and prefill on the lent H200: edgeq's runtime vs a raw ONNX Runtime IOBinding loop vs
onnxruntime-genai-cuda on the same file vs transformers eager BF16, plus the bandwidth limit and the
host↔device KV copies per step, counted.

Models (payload from ``benchmarks/gpu_payload.py``, weights filled here from a seed by ``gpu_fill``):
SmolLM2-135M's FP16-compute files (fp16, int8-wo, int4-awq g128, fp8) and a Llama-3.2-1B-shaped INT4
model. Measured per model: decode tokens/s at batch 1 and 8 (128-token prompt, 128 new tokens, greedy,
EOS ignored) and prefill tokens/s at 512 tokens (batch 1, the prompt plus the first token).

    python benchmarks/bench_gpu.py --payload .gpu/payload/models --out $OUT [--quick] [--budget-s 330]

Bandwidth limit: bytes a decode step must read (every weight once, one embedding row, the FP16 KV cache at
the mean context) ÷ the device-to-device copy rate measured here (bytes read + written per second).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import gpu_peers as peers  # noqa: E402
from benchmarks.common import Result, arg_parser, fmt, setup_env  # noqa: E402

MODELS = ("smollm2-fp16", "smollm2-int8-wo", "smollm2-int4-awq", "smollm2-fp8", "llama1b-int4")
CANDIDATES = ("edgeq runtime", "onnxruntime IOBinding (raw)", "onnxruntime-genai-cuda", "transformers eager BF16")


def log(msg: str) -> None:
    print(f"[gpu] {msg}", flush=True)


def copy_bandwidth(gib: float = 2.0, repeats: int = 10) -> dict[str, Any]:
    """Device-to-device cudaMemcpy through edgeq's device-memory layer: (read + written) bytes per second."""
    from edgeq.sdk.runtime.backends import cudart

    n = int(gib * 2**30)
    a, b = cudart.DeviceBuffer(n), cudart.DeviceBuffer(n)
    cudart.memset(a.ptr, 1, n)
    times = []
    for i in range(repeats + 2):
        cudart.synchronize()
        t0 = time.perf_counter()
        cudart.copy_d2d(b.ptr, a.ptr, n, tag="bandwidth")
        cudart.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    a.free(), b.free()
    best, med = min(times), sorted(times)[len(times) // 2]
    return {"bytes_per_copy": 2 * n, "best_gbps": 2 * n / best / 1e9, "median_gbps": 2 * n / med / 1e9,
            "repeats": repeats}


def bytes_per_token(model_dir: Path, context: int) -> dict[str, int]:
    """Weights read once per step (an embedding table only through Gather: one row) + FP16 KV at ``context``."""
    from benchmarks.lm_speed import decode_bytes_per_token

    w = decode_bytes_per_token(model_dir / "model.onnx", context)["weights"]
    info = json.loads((model_dir / "edgeq_model.json").read_text())
    kv = 2 * info["num_layers"] * info["num_key_value_heads"] * info["head_dim"] * context * 2
    return {"weights": w, "kv_cache": kv, "total": w + kv}


def kv_copies_in_profile(trace: Path, num_kv: int, head_dim: int) -> dict[str, int]:
    """Memcpy nodes in an ONNX Runtime profile, and those whose input is KV-shaped (B, kv_heads, T, head_dim)."""
    events = json.loads(trace.read_text())
    def kv_shaped(ev: dict) -> bool:
        for entry in ev.get("args", {}).get("input_type_shape", []):
            for shape in entry.values():
                if len(shape) == 4 and shape[1] == num_kv and shape[3] == head_dim:
                    return True
        return False
    nodes = [e for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})]
    memcpy = [e for e in nodes if e["args"]["op_name"] in ("MemcpyToHost", "MemcpyFromHost")]
    runs = sum(1 for e in events if e.get("name") == "model_run")
    return {"runs": runs, "node_events": len(nodes), "kv_shaped_node_events": sum(map(kv_shaped, nodes)),
            "memcpy_nodes": len(memcpy), "kv_memcpy_nodes": sum(map(kv_shaped, memcpy))}


class Bench:
    def __init__(self, args: Any) -> None:
        self.a = args
        self.res = Result("gpu", quick=args.quick)
        self.t0 = time.time()
        self.quick = args.quick
        self.prompt, self.new = (32, 16) if args.quick else (128, 128)
        self.prefill = 64 if args.quick else 512
        self.repeats = 2 if args.quick else 3
        self.work = Path(args.work)
        #: --cpu-dry-run runs every code path on ONNX Runtime CPU (a check of the script, not a measurement)
        self.dev = "cpu" if args.cpu_dry_run else "cuda"
        self.backend = "onnxruntime-cpu" if args.cpu_dry_run else "onnxruntime-gpu"

    def left(self) -> float:
        return self.a.budget_s - (time.time() - self.t0)

    def ids(self, batch: int, n: int, vocab: int) -> np.ndarray:
        return np.random.default_rng(batch * 1000 + n).integers(3, min(vocab, 32000), (batch, n), dtype=np.int64)

    def measure(self, name: str, model: str, fn: Any, vocab: int, extra: dict[str, Any] | None = None) -> None:
        """Decode at batch 1 and 8 and prefill at ``self.prefill`` tokens with ``fn(ids, new_tokens)``."""
        # warm-up at both batch sizes: kernels chosen, allocators grown, clocks up (the first model of a run
        # measured 0.5x of the second on the H200 with a 4-token warm-up)
        fn(self.ids(1, 8, vocab), 32)
        fn(self.ids(8, 8, vocab), 8)
        for batch in (1, 8):
            if self.left() < 20:
                self.res.skip(f"{name} {model} b{batch}", "time budget of the run used up")
                continue
            ids = self.ids(batch, self.prompt, vocab)
            fn(ids, 4)
            self.record(name, model, "decode", peers.rates([fn(ids, self.new) for _ in range(self.repeats)]), extra)
        ids = self.ids(1, self.prefill, vocab)
        fn(ids, 1)
        self.record(name, model, "prefill", peers.rates([fn(ids, 1) for _ in range(self.repeats)]), extra)

    def record(self, name: str, model: str, kind: str, r: dict[str, Any], extra: dict[str, Any] | None) -> None:
        rec = {"candidate": name, "model": model, "kind": kind, **r, **(extra or {})}
        self.res.records.append(rec)
        if kind == "decode":
            log(f"{model} {name} b{r['batch']}: decode {r['decode_tok_s']:.1f} tok/s ({r['decode_ms_per_step']:.3f} ms/step)")
        else:
            log(f"{model} {name}: prefill {r['prefill_tok_s']:.0f} tok/s at {r['prompt_tokens']}")

    def run_model(self, model: str, bw: dict[str, Any]) -> None:
        import onnxruntime as ort

        from benchmarks.edgeq_adapter import onnx_bundle
        from benchmarks.gpu_fill import fill
        from edgeq.sdk.health.monitor import MonitorConfig
        from edgeq.sdk.runtime.backends import BackendOptions, cudart
        from edgeq.sdk.runtime.runtime import Runtime

        src = Path(self.a.payload) / model
        d = self.work / model
        if not (d / "model.onnx.data").is_file():
            shutil.copytree(src, d, dirs_exist_ok=True)
            f = fill(d, seed=0)
            log(f"{model}: filled {f['bytes'] / 1e6:.0f} MB of weights from seed 0 in {f['seconds']:.1f} s")
        info = json.loads((d / "edgeq_model.json").read_text())
        nkv, hd, vocab = info["num_key_value_heads"], info["head_dim"], info["vocab_size"]
        bpt = bytes_per_token(d, self.prompt + self.new // 2)
        self.res.records.append({"model": model, "kind": "bytes_per_token", **bpt,
                                 "limit_tok_s_b1": bw["best_gbps"] * 1e9 / bpt["total"]})
        bundle = self.work / f"{model}-bundle"
        if not (bundle / "manifest.json").is_file():
            onnx_bundle(d, d, bundle, precision=model.split("-", 1)[1], health=False)
        gpu = BackendOptions(prefer=(self.backend,))
        # -- edgeq runtime ---------------------------------------------------------------------------------
        try:
            with Runtime.open(bundle, backend=gpu, monitor=MonitorConfig(enabled=False)) as rt:
                h = rt._current
                log(f"{model}: edgeq backend {rt.backend_name}")
                before = cudart.COPIES.snapshot()
                r0 = peers.edgeq_generate(h.stepper, self.ids(1, 16, vocab), 17)
                after = cudart.COPIES.snapshot()
                steps = 17
                traffic = {k: {"copies_per_step": (v["copies"] - before.get(k, {}).get("copies", 0)) / steps,
                               "bytes_per_step": (v["bytes"] - before.get(k, {}).get("bytes", 0)) / steps}
                           for k, v in after.items() if k not in before or v != before[k]}
                kv = sum(t["copies_per_step"] for k, t in traffic.items() if "past_key_values" in k or "present" in k)
                state = h.stepper._free[0] if h.stepper._free else None
                self.res.records.append({"model": model, "kind": "edgeq_host_traffic", "steps": steps, "by_tag": traffic,
                                         "kv_host_copies_per_step": kv, "device_greedy": bool(
                                             state and getattr(state.binder, "_sampler_io", None) is not None),
                                         "prefill_s_16": r0["prefill_s"]})
                log(f"{model}: edgeq host<->device per step {traffic}; KV copies per step {kv}")
                self.measure("edgeq runtime", model, lambda ids, n: peers.edgeq_generate(h.stepper, ids, n), vocab,
                             {"backend": rt.backend_name})
        except Exception as exc:  # noqa: BLE001 - record and go on to the next candidate
            self.fail(f"edgeq runtime {model}", exc)
        # ORT's own copies: a profiled session, a few steps, Memcpy nodes with KV-shaped inputs counted
        try:
            prof = self.work / f"prof-{model}"
            with Runtime.open(bundle, backend=BackendOptions(prefer=(self.backend,), profile_prefix=str(prof)),
                              monitor=MonitorConfig(enabled=False)) as rt:
                peers.edgeq_generate(rt._current.stepper, self.ids(1, 16, vocab), 9)
                trace = Path(rt._current.backend.end_profiling())
            counted = kv_copies_in_profile(trace, nkv, hd)
            self.res.records.append({"model": model, "kind": "ort_profile_memcpy", **counted})
            log(f"{model}: ORT profile of 9 runs: {counted}")
        except Exception as exc:  # noqa: BLE001
            self.fail(f"ORT profile {model}", exc)
        # -- raw IOBinding loop on the same file, same providers -----------------------------------------------
        try:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            eps = ["CPUExecutionProvider"] if self.dev == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]
            sess = ort.InferenceSession(str(d / "model.onnx"), so, providers=eps)
            kv_dtype = np.float16 if "float16" in sess.get_inputs()[-1].type else np.float32
            self.measure("onnxruntime IOBinding (raw)", model,
                         lambda ids, n: peers.raw_iobinding_generate(ort, sess, ids, n, nkv, hd, kv_dtype, self.dev),
                         vocab)
            del sess
        except Exception as exc:  # noqa: BLE001
            self.fail(f"raw IOBinding {model}", exc)
        # -- onnxruntime-genai-cuda on the same file -----------------------------------------------------------------
        try:
            gm = peers.genai_model(d, max(self.prefill + 1, self.prompt + self.new) + 8, self.dev)
            self.measure("onnxruntime-genai-cuda", model, lambda ids, n: peers.genai_generate(gm, ids, n), vocab)
            del gm
        except Exception as exc:  # noqa: BLE001
            self.fail(f"onnxruntime-genai {model}", exc)
        gc.collect()

    def run_torch(self, model: str) -> None:
        try:
            import torch

            tm = peers.torch_model(Path(self.a.payload) / model / "config.json", self.dev)
            vocab = tm.config.vocab_size
            self.measure("transformers eager BF16", model, lambda ids, n: peers.torch_generate(tm, ids, n), vocab,
                         {"torch": torch.__version__})
            del tm
            torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001
            self.fail(f"transformers {model}", exc)

    def fail(self, what: str, exc: BaseException) -> None:
        log(f"FAILED {what}: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        self.res.skip(what, exc)

    def tables(self, bw: dict[str, Any]) -> None:
        self.res.tables = []
        recs = self.res.records
        bpt = {r["model"]: r for r in recs if r.get("kind") == "bytes_per_token"}
        rows = []
        for model in dict.fromkeys(r["model"] for r in recs if r.get("kind") in ("decode", "prefill")):
            for cand in CANDIDATES:
                got = {(r["kind"], r.get("batch")): r for r in recs if r.get("model") == model and r.get("candidate") == cand}
                if not got:
                    continue
                d1, d8, pf = got.get(("decode", 1)), got.get(("decode", 8)), got.get(("prefill", 1))
                limit = bpt.get(model, {}).get("limit_tok_s_b1")
                frac = d1["decode_tok_s"] / limit if d1 and limit and cand != "transformers eager BF16" else None
                rows.append([model, cand, fmt(d1 and d1["decode_tok_s"], 4), fmt(d8 and d8["decode_tok_s"], 4),
                             fmt(pf and pf["prefill_tok_s"], 4), fmt(limit, 4), fmt(frac, 3)])
        self.res.table(f"Decode and prefill tokens/s on the {self.res.notes[0] if self.res.notes else 'GPU'}",
                       ["model", "candidate", "decode b1", "decode b8", f"prefill {self.prefill}", "b1 limit",
                        "b1 / limit"], rows,
                       f"Greedy, {self.prompt}-token prompt + {self.new} new tokens (EOS ignored), median of "
                       f"{self.repeats}; prefill = {self.prefill} prompt tokens + the first token, batch 1. Limit = "
                       f"copy bandwidth ({bw['best_gbps']:.0f} GB/s D2D, read+write) / bytes read per token "
                       "(weights + one embedding row + FP16 KV at the mean context). Weights are random (filled from "
                       "a seed): speed only. transformers runs its own random BF16 weights of the same config.")
        rel = []
        for model in dict.fromkeys(r["model"] for r in recs if r.get("kind") == "decode"):
            def d1(c: str) -> float | None:
                return next((r["decode_tok_s"] for r in recs if r.get("model") == model and r.get("candidate") == c
                             and r.get("kind") == "decode" and r.get("batch") == 1), None)
            e, raw, g = d1("edgeq runtime"), d1("onnxruntime IOBinding (raw)"), d1("onnxruntime-genai-cuda")
            kv = next((r["kv_host_copies_per_step"] for r in recs if r.get("model") == model
                       and r.get("kind") == "edgeq_host_traffic"), None)
            prof = next((r for r in recs if r.get("model") == model and r.get("kind") == "ort_profile_memcpy"), {})
            rel.append([model, fmt(e / g if e and g else None, 3), fmt(e / raw if e and raw else None, 3), kv,
                        prof.get("kv_memcpy_nodes"), prof.get("memcpy_nodes")])
        self.res.table("edgeq vs peers at batch 1, and KV bytes through the host (aims: ≥ 1.0× genai, ≥ 0.97× raw, 0)",
                       ["model", "edgeq / genai", "edgeq / raw IOBinding", "KV host copies per step (edgeq layer)",
                        "KV-shaped Memcpy nodes (ORT profile, 9 runs)", "all Memcpy nodes (9 runs)"], rel,
                       "Copies counted by edgeq's device-memory layer per decode step (every host↔device copy edgeq "
                       "makes or asks ONNX Runtime for is tagged); ONNX Runtime's own copies counted as Memcpy nodes "
                       "in its profile of a generation.")


def main() -> None:
    p = arg_parser(__doc__)
    p.add_argument("--payload", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/edgeq-gpu-bench"))
    p.add_argument("--models", nargs="*", default=list(MODELS))
    p.add_argument("--budget-s", type=float, default=330.0)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--cpu-dry-run", action="store_true", help="every code path on the CPU (checks the script)")
    p.add_argument("--only", choices=("all", "ort", "torch"), default="all",
                   help="torch: the transformers baselines only; ort: everything else")
    p.add_argument("--merge", type=Path, default=None, help="a gpu.json of an earlier run whose records to include")
    a = p.parse_args()
    setup_env()
    b = Bench(a)
    b.work.mkdir(parents=True, exist_ok=True)
    from edgeq.sdk.device import probe

    dev = probe()
    b.res.notes.append(f"{dev.gpu_name} (compute capability {dev.compute_capability})")
    b.res.notes.append(f"edgeq commit {os.environ.get('EDGEQ_COMMIT', '?')}; payload {a.payload}")
    if a.cpu_dry_run:
        from benchmarks.common import copy_bandwidth as host_copy

        bw = host_copy(mib=128)
    else:
        bw = copy_bandwidth(0.5 if a.quick else 2.0)
    b.res.records.append({"kind": "copy_bandwidth", **bw})
    log(f"device-to-device copy: best {bw['best_gbps']:.0f} GB/s (read+write)")
    if a.merge is not None and a.merge.is_file():
        old = json.loads(a.merge.read_text())
        b.res.records.extend(r for r in old["records"] if r.get("kind") != "copy_bandwidth")
        b.res.not_run.extend(old.get("not_run", []))
        b.res.notes.append(f"records merged from an earlier call's {a.merge.name} (started {old.get('started')})")
    for model in a.models:
        if b.left() < 30:
            b.res.skip(model, "time budget of the run used up")
            continue
        t = time.time()
        if a.only in ("all", "ort"):
            b.run_model(model, bw)
        if a.only in ("all", "torch") and not a.no_torch and model in ("smollm2-fp16", "llama1b-int4") and b.left() > 30:
            b.run_torch(model)  # one BF16 model per shape: transformers has no quantized variant to match
        log(f"{model}: {time.time() - t:.0f} s")
        b.tables(bw)
        b.res.write(a.out)  # after every model: a run cut short still leaves its results
    b.res.write(a.out)


if __name__ == "__main__":
    main()
