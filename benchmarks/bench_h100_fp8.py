"""H100 FP8: SmolLM2-135M's linear layers in FP8 on real tensor cores vs BF16, device ceilings, and a
logits check of FP8 tensor-core execution against edgeq's FP8 QDQ ONNX on ONNX Runtime CPU.

Runs standalone on the GPU machine with torch (CUDA) + numpy + onnx + onnxruntime (CPU) — no edgeq,
no transformers, no TensorRT. What it measures:

1. Speed (random weights, SmolLM2-135M shapes: 30 layers × q/k/v/o/gate/up/down + the 576→49152 head):
   the whole stack of linears per forward at decode sizes M = 1, 2, 4, 8, 16 and prefill sizes
   M = 512, 1024, 2048 tokens, in BF16 (``x @ W.T``) and FP8 E4M3 via ``torch._scaled_mm`` with the
   per-tensor activation quantization INCLUDED in the timing (scale → clamp ±448 → cast), both with a
   static (calibrated) activation scale as edgeq emits, and dynamic (amax per call). Weights: per-output-
   channel scales (rowwise ``_scaled_mm``) as edgeq's FP8 scheme; per-tensor as a fallback if rowwise
   is refused. Each stack is captured in a CUDA graph and replayed (launch overhead excluded, as in a
   TensorRT engine); median of repeats.
2. Ceilings: BF16 and FP8 matmul TFLOP/s at 8192³, device copy bandwidth (read+write).
3. Logits: why not SmolLM2 itself — its weights (538 MB FP32, ~160 MB even as FP8+FP16) cannot travel in
   the 64 MiB carry. So the check runs on edgeq's FP8 QDQ ONNX of the tiny random Llama (``tiny-llama``,
   hidden 128, 2 layers): the ONNX is executed by ``onnx.reference`` with every MatMul that is fed by FP8
   DequantizeLinear nodes replaced by ``torch._scaled_mm`` on the GPU (FP8 operands recovered exactly from
   the QDQ graph), and compared with ONNX Runtime CPU running the same file. Tolerance (stated):
   max |Δlogit| ≤ 1e-2 · max |logit| and top-1 agreement ≥ 99 %. Plus one SmolLM2-shaped MLP block
   (576→1536→576, random weights) in FP8 on tensor cores vs the same QDQ math in float64 on the CPU.

Prepare the payload here (CPU host):  python benchmarks/prepare_h100_payload.py   (→ .cache/h100_payload, ~1 MB)
Run on the GPU (device tool, carry [".cache/h100_payload"]):
    python benchmarks/bench_h100_fp8.py --payload .cache/h100_payload --out $OUT
then copy $OUT/h100_fp8.json to benchmarks/results/ and run benchmarks/report.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

# the sibling file travels with this one (prepare_h100_payload copies both)
from h100_result import Out, r3

HIDDEN, INTER, KV_DIM, VOCAB, LAYERS = 576, 1536, 192, 49152, 30
FP8_MAX = 448.0
DECODE_M = (1, 2, 4, 8, 16)
GEMM_MODE = "fp8"  # "fp32_dequant" for the diagnostic rerun of the logits check
DEV = "cuda"  # --cpu-dry-run sets "cpu" to exercise the logits check without a GPU (torch has CPU _scaled_mm)
PREFILL_M = (512, 1024, 2048)


def machine(torch: Any) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda, "numpy": np.__version__}
    for mod in ("onnx", "onnxruntime"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.lower().startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": f"{props.name} (sm{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
                   f"{props.multi_processor_count} SMs); host CPU {cpu}",
            "gpu": props.name, "compute_capability": f"{props.major}.{props.minor}", "usable_cores": os.cpu_count(),
            "ram_gib": None, "os": platform.platform(), "python": platform.python_version(), "versions": versions,
            "commit": os.environ.get("EDGEQ_COMMIT"), "dirty": None, "load_avg_1m": None}


# -- timing -------------------------------------------------------------------------------------------------
def gpu_time(torch: Any, fn: Any, *, iters: int, repeats: int, graph: bool = True) -> tuple[float, bool]:
    """Median seconds per call of ``fn`` (CUDA-graph replay when capture works, else eager)."""
    used_graph = False
    run = fn
    if graph:
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    fn()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            run, used_graph = g.replay, True
        except Exception:
            run = fn
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            run()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / iters)
    return statistics.median(times), used_graph


def quant_weight(torch: Any, w: Any, rowwise: bool) -> tuple[Any, Any]:
    """FP8 E4M3 weight (N, K) and its scale: per output channel (N,) or per tensor (scalar)."""
    amax = w.abs().amax(dim=1) if rowwise else w.abs().amax()
    scale = (amax.float() / FP8_MAX).clamp(min=1e-12)
    wq = (w.float() / (scale[:, None] if rowwise else scale)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return wq, scale


def fp8_linear(torch: Any, x: Any, wq: Any, w_scale: Any, x_scale: Any | None, rowwise: bool) -> Any:
    """y = x @ W.T with x quantized per tensor (static ``x_scale`` or dynamic amax) on FP8 tensor cores."""
    if x_scale is None:
        x_scale = (x.abs().amax().float() / FP8_MAX).clamp(min=1e-12)
    xq = (x.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    if rowwise:
        sa = x_scale.reshape(1, 1).expand(x.shape[0], 1).contiguous()
        sb = w_scale.reshape(1, -1)
    else:
        sa, sb = x_scale.reshape(()), w_scale.reshape(())
    return torch._scaled_mm(xq, wq.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)


_QUANT_FUSED: Any = None


def quant_fused(x: Any, scale: Any) -> Any:
    """scale → clamp → cast to E4M3 in one kernel (torch.compile; eager fallback if compile is unavailable)."""
    global _QUANT_FUSED
    import torch

    if _QUANT_FUSED is None:
        def q(x: Any, s: Any) -> Any:
            return (x.float() / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)

        try:
            import torch._dynamo

            torch._dynamo.config.cache_size_limit = 64  # one specialization per (M, K); the default 8 would go eager
            _QUANT_FUSED = torch.compile(q, dynamic=False)
            _QUANT_FUSED(x, scale)
        except Exception as exc:  # noqa: BLE001 - report, keep measuring the eager form
            print(f"[h100] torch.compile unavailable for the quant kernel: {exc}")
            _QUANT_FUSED = q
    return _QUANT_FUSED(x, scale)


def fp8_gemm_fp32(torch: Any, aq: Any, bq: Any, sa: Any, sb: Any) -> Any:
    """FP8 × FP8 on tensor cores with FP32 output (per-tensor unit scales), then the activation scale and
    the per-channel weight scales applied in FP32: the QDQ graph's arithmetic without BF16 output rounding
    (rowwise ``_scaled_mm`` only outputs BF16, whose 8-bit mantissa alone would move logits by ~0.4 %)."""
    one = torch.ones((), device=aq.device)
    y = torch._scaled_mm(aq, bq, scale_a=one, scale_b=one, out_dtype=torch.float32)
    return y * sa * sb.reshape(1, -1)


# -- 1. speed ------------------------------------------------------------------------------------------------
#: (label, hidden, intermediate, kv dim, vocab or None, layers): SmolLM2 itself, and one layer of an 8B-class
#: Llama (hidden 4096, 8 KV heads × 128) to show where FP8 GEMMs start to pay on this GPU.
STACKS = (("SmolLM2-135M", HIDDEN, INTER, KV_DIM, VOCAB, LAYERS), ("Llama-3-8B, 1 layer", 4096, 14336, 1024, None, 1))


def bench_stack(torch: Any, out: Out, quick: bool) -> None:
    for label, hidden, inter, kv, vocab, layers in STACKS:
        layers = min(layers, 4) if quick else layers
        linears = (("q", hidden, hidden), ("k", hidden, kv), ("v", hidden, kv), ("o", hidden, hidden),
                   ("gate", hidden, inter), ("up", hidden, inter), ("down", inter, hidden))
        shapes = [(k, n) for _ in range(layers) for _, k, n in linears] + ([(hidden, vocab)] if vocab else [])
        _bench_one_stack(torch, out, quick, label, layers, shapes)


def _bench_one_stack(torch: Any, out: Out, quick: bool, label: str, layers: int, shapes: list[tuple[int, int]]) -> None:
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    w_bf16 = [(torch.randn(n, k, device=dev, generator=g) * k ** -0.5).to(torch.bfloat16) for k, n in shapes]
    rowwise = True
    try:
        wq0, s0 = quant_weight(torch, w_bf16[0], True)
        fp8_linear(torch, torch.randn(2, shapes[0][0], device=dev, dtype=torch.bfloat16), wq0, s0, None, True)
    except Exception as exc:
        rowwise = False
        out.doc["notes"].append(f"rowwise _scaled_mm refused ({type(exc).__name__}: {exc}); per-tensor weight scales used")
    wq = [quant_weight(torch, w, rowwise) for w in w_bf16]
    weight_bytes_bf16 = sum(k * n * 2 for k, n in shapes)
    weight_bytes_fp8 = sum(k * n for k, n in shapes)
    flops_per_token = sum(2 * k * n for k, n in shapes)
    rows, recs = [], []
    for m in (DECODE_M[:2] + PREFILL_M[:1]) if quick else DECODE_M + PREFILL_M:
        xs = {k: torch.randn(m, k, device=dev, generator=g).to(torch.bfloat16) for k in {k for k, _ in shapes}}
        static = {k: (x.abs().amax().float() / FP8_MAX) for k, x in xs.items()}

        def bf16() -> None:
            for (k, _), w in zip(shapes, w_bf16):
                xs[k] @ w.t()

        def fp8_static() -> None:
            for (k, _), (q, s) in zip(shapes, wq):
                fp8_linear(torch, xs[k], q, s, static[k], rowwise)

        def fp8_dynamic() -> None:
            for (k, _), (q, s) in zip(shapes, wq):
                fp8_linear(torch, xs[k], q, s, None, rowwise)

        # Static scales prepared once, and the scale→clamp→cast fused into one kernel by torch.compile:
        # the per-linear cost an engine pays when the Q is not fused into the previous op.
        sa_pre = {k: (v.reshape(1, 1).expand(m, 1).contiguous() if rowwise else v.reshape(())) for k, v in static.items()}
        sb_pre = [s.reshape(1, -1) if rowwise else s.reshape(()) for _, s in wq]
        xq_pre = {k: (x.float() / static[k]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn) for k, x in xs.items()}

        def fp8_fused_quant() -> None:
            for i, (k, _) in enumerate(shapes):
                xq = quant_fused(xs[k], static[k])
                torch._scaled_mm(xq, wq[i][0].t(), scale_a=sa_pre[k], scale_b=sb_pre[i], out_dtype=torch.bfloat16)

        def fp8_gemm_only() -> None:  # activation already FP8: the bound a Q fused into the previous op approaches
            for i, (k, _) in enumerate(shapes):
                torch._scaled_mm(xq_pre[k], wq[i][0].t(), scale_a=sa_pre[k], scale_b=sb_pre[i], out_dtype=torch.bfloat16)

        iters = 20 if m <= 16 else 5
        res = {}
        for name, fn in (("bf16", bf16), ("fp8_static", fp8_static), ("fp8_dynamic", fp8_dynamic),
                         ("fp8_fused_quant", fp8_fused_quant), ("fp8_gemm_only", fp8_gemm_only)):
            try:
                res[name] = gpu_time(torch, fn, iters=iters, repeats=5 if quick else 9)
            except Exception as exc:
                out.skip(f"stack {name} M={m}", exc)
        if "bf16" not in res:
            continue
        tb = res["bf16"][0]
        rec = {"what": "linear_stack", "model": label, "M": m, "layers": layers, "rowwise": rowwise,
               **{f"{k}_s": v[0] for k, v in res.items()}, **{f"{k}_graph": v[1] for k, v in res.items()}}
        recs.append(rec)
        out.doc["records"].append(rec)
        fs = res.get("fp8_static", (None,))[0]
        fd = res.get("fp8_dynamic", (None,))[0]
        ff = res.get("fp8_fused_quant", (None,))[0]
        fg = res.get("fp8_gemm_only", (None,))[0]
        phase = "decode" if m <= 16 else "prefill"
        rows.append([label, phase, m, r3(tb * 1e6), r3(fs * 1e6) if fs else None, r3(fd * 1e6) if fd else None,
                     r3(ff * 1e6) if ff else None, r3(fg * 1e6) if fg else None,
                     r3(tb / fs) if fs else None, r3(tb / fd) if fd else None,
                     r3(tb / ff) if ff else None, r3(tb / fg) if fg else None,
                     r3(weight_bytes_bf16 / tb / 1e9), r3(weight_bytes_fp8 / fs / 1e9) if fs else None,
                     r3(flops_per_token * m / tb / 1e12), r3(flops_per_token * m / fs / 1e12) if fs else None])
        print(f"[h100] {label} M={m}: fused {ff and ff * 1e6:.1f} us, gemm-only {fg and fg * 1e6:.1f} us; bf16 {tb * 1e6:.1f} us, fp8 static {fs and fs * 1e6:.1f} us, dynamic {fd and fd * 1e6:.1f} us")
        del xs
    out.table(f"{label} linear stack ({layers} layer(s) × 7 linears{' + head' if len(shapes) % 7 else ''}, random weights) per forward, BF16 vs FP8",
              ["model", "phase", "M tokens", "BF16 µs", "FP8 static-act µs", "FP8 dynamic-act µs", "FP8 fused-quant µs",
               "FP8 GEMM-only µs", "× static", "× dynamic", "× fused-quant", "× GEMM-only",
               "BF16 weight GB/s", "FP8 weight GB/s", "BF16 TFLOP/s", "FP8 TFLOP/s"], rows,
              notes="FP8 static/dynamic include per-tensor activation quantization in eager PyTorch (scale, clamp ±448, cast to "
                    "E4M3: several kernels per linear); fused-quant does it in one torch.compile'd kernel with scales "
                    "prepared once; GEMM-only starts from FP8 activations (the bound when the Q is fused into the previous "
                    "op, as TensorRT does). Every "
                    f"linear's input; weights per-{'channel (rowwise _scaled_mm)' if rowwise else 'tensor'}; output BF16. "
                    "CUDA-graph replay; median of repeats. GB/s = weight bytes / time (decode is weight-bandwidth bound).")
    if label != STACKS[0][0]:
        return
    out.doc["charts"].append({"file": "h100_fp8_speedup.png", "title": "H100: FP8 speed-up over BF16, SmolLM2 linear stack",
                              "ylabel": "× BF16", "labels": [str(r["M"]) for r in recs],
                              "series": {"FP8 static act": [r.get("bf16_s", 0) / r["fp8_static_s"] if r.get("fp8_static_s") else None for r in recs],
                                         "FP8 dynamic act": [r.get("bf16_s", 0) / r["fp8_dynamic_s"] if r.get("fp8_dynamic_s") else None for r in recs]},
                              "hline": 1.0, "hline_label": "BF16"})


# -- 2. ceilings ----------------------------------------------------------------------------------------------
def bench_ceilings(torch: Any, out: Out, quick: bool) -> None:
    n = 4096 if quick else 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    rows = []
    t, _ = gpu_time(torch, lambda: a @ b, iters=10, repeats=5, graph=False)
    rows.append([f"BF16 matmul {n}³", r3(2 * n ** 3 / t / 1e12), "TFLOP/s"])
    out.doc["records"].append({"what": "ceiling_bf16_tflops", "n": n, "value": 2 * n ** 3 / t / 1e12})
    try:
        aq, bq = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t().contiguous().t()
        one = torch.ones((), device="cuda")
        t, _ = gpu_time(torch, lambda: torch._scaled_mm(aq, bq, scale_a=one, scale_b=one, out_dtype=torch.bfloat16),
                        iters=10, repeats=5, graph=False)
        rows.append([f"FP8 _scaled_mm {n}³ (per-tensor)", r3(2 * n ** 3 / t / 1e12), "TFLOP/s"])
        out.doc["records"].append({"what": "ceiling_fp8_tflops", "n": n, "value": 2 * n ** 3 / t / 1e12})
    except Exception as exc:
        out.skip("FP8 matmul ceiling", exc)
    x = torch.empty(2**28 if not quick else 2**26, device="cuda", dtype=torch.float32)
    y = torch.empty_like(x)
    t, _ = gpu_time(torch, lambda: y.copy_(x), iters=10, repeats=5, graph=False)
    bw = 2 * x.numel() * 4 / t / 1e9
    rows.append([f"device copy {x.numel() * 4 / 2**30:.2f} GiB (read+write)", r3(bw), "GB/s"])
    out.doc["records"].append({"what": "ceiling_copy_gbps", "value": bw})
    out.table("Device ceilings (measured)", ["measurement", "value", "unit"], rows)


# -- 3. logits check ----------------------------------------------------------------------------------------------
def _dq_map(model: Any) -> dict[str, dict[str, Any]]:
    """Output name of each FP8 DequantizeLinear → its quantized input, scale and axis (from initializers/constants)."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    inits[n.output[0]] = numpy_helper.to_array(a.t)
    out = {}
    fp8_types = {onnx.TensorProto.FLOAT8E4M3FN}
    init_types = {i.name: i.data_type for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[1] not in inits:
            continue
        src = n.input[0]
        is_fp8 = init_types.get(src) in fp8_types
        if not is_fp8 and src in producer and producer[src].op_type == "QuantizeLinear":
            q = producer[src]
            zp = q.input[2] if len(q.input) > 2 else None
            is_fp8 = zp is not None and init_types.get(zp) in fp8_types
        if is_fp8:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            out[n.output[0]] = {"scale": inits[n.input[1]].astype(np.float32), "axis": axis}
    return out


def logits_check(torch: Any, out: Out, payload: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    onnx_path = payload / "tiny-llama-fp8" / "model.onnx"
    model = onnx.load(str(onnx_path))
    dq = _dq_map(model)
    stats = {"gpu_matmuls": 0, "cpu_matmuls": 0}

    class MatMul(OpRun):  # ONNX MatMul; FP8-fed ones run as torch._scaled_mm on the GPU
        op_domain = ""

        def _run(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray]:
            ia, ib = self.onnx_node.input[0], self.onnx_node.input[1]
            if ia in dq and ib in dq and a.ndim >= 2 and b.ndim == 2:
                sa, sb = dq[ia]["scale"], dq[ib]["scale"]
                if sa.size == 1:
                    stats["gpu_matmuls"] += 1
                    return (self._fp8(a, b, sa, sb, dq[ib]["axis"]),)
            stats["cpu_matmuls"] += 1
            return (np.matmul(a, b),)

        @staticmethod
        def _fp8(a: np.ndarray, b: np.ndarray, sa: np.ndarray, sb: np.ndarray, axis: int) -> np.ndarray:
            # the DQ outputs are fp8 values × scale; dividing by the scale and casting recovers them exactly
            lead = a.shape[:-1]
            a2 = torch.from_numpy(np.ascontiguousarray(a.reshape(-1, a.shape[-1]))).to(DEV)
            sa_t = torch.tensor(float(sa.reshape(())), device=DEV)
            aq = (a2 / sa_t).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            bt = torch.from_numpy(np.ascontiguousarray(b)).to(DEV)  # (K, N)
            sb_t = torch.from_numpy(np.ascontiguousarray(sb.reshape(-1))).float().to(DEV)
            per_col = sb_t.numel() > 1
            bq = (bt / (sb_t.reshape(1, -1) if per_col else sb_t)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            bq = bq.t().contiguous().t()  # column-major (K, N) as _scaled_mm wants
            m = aq.shape[0]
            pad = (-m) % 16  # keep M a multiple of 16 for every cuBLASLt FP8 path
            if pad:
                aq = torch.cat([aq, torch.zeros(pad, aq.shape[1], device=DEV, dtype=aq.dtype)])
            if GEMM_MODE == "fp32_dequant":  # diagnostic: same FP8 operands, FP32 CUDA-core GEMM (TF32 off)
                y = (aq.float() * sa_t) @ (bq.float() * sb_t.reshape(1, -1))
            else:
                y = fp8_gemm_fp32(torch, aq, bq, sa_t, sb_t)
            y = y[:m].float().cpu().numpy()
            return y.reshape(*lead, -1).astype(np.float32)

    ids = np.load(payload / "tiny-llama-fp8" / "check_ids.npy")
    feeds = {k: v for k, v in np.load(payload / "tiny-llama-fp8" / "check_feeds.npz").items()}
    ort_level = "default (all)"
    try:
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT <= 1.30 fuses FP8 DQ→MatMul into MatMulIntegerToFloat, which rejects float8
        out.doc["notes"].append(f"onnxruntime {ort.__version__} with default optimizations refused the FP8 QDQ "
                                f"ONNX ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); reference run with "
                                "ORT_ENABLE_BASIC instead")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        ort_level = "ORT_ENABLE_BASIC"
    ref = sess.run(["logits"], feeds)[0]
    ev = ReferenceEvaluator(model, new_ops=[MatMul])
    got = ev.run(["logits"], feeds)[0]
    global GEMM_MODE
    stats = dict(stats)  # the counts of the FP8 run; the diagnostic rerun below counts into the shared dict again
    diag: dict[str, Any] = {}
    if DEV == "cuda":  # isolate the FP8 tensor-core GEMM: rerun with the operands multiplied in FP32
        torch.backends.cuda.matmul.allow_tf32 = False
        GEMM_MODE = "fp32_dequant"
        try:
            g32 = ReferenceEvaluator(model, new_ops=[MatMul]).run(["logits"], feeds)[0]
            diag = {"fp32_dequant_max_abs_diff": float(np.abs(g32 - ref).max()),
                    "fp8_vs_fp32_dequant_max_abs_diff": float(np.abs(got - g32).max())}
            print(f"[h100] logits diagnostic: {diag}")
        finally:
            GEMM_MODE = "fp8"
    scale = float(np.abs(ref).max())
    max_abs = float(np.abs(got - ref).max())
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    passed = bool(np.isfinite(got).all() and max_abs <= 1e-2 * scale and top1 >= 0.99 and stats["gpu_matmuls"] > 0)
    out.doc["records"].append({"what": "logits_check", "model": "tiny-llama fp8 QDQ (edgeq)", "tokens": int(ids.size),
                               "max_abs_diff": max_abs, "max_abs_logit": scale, "top1_agreement": top1, "passed": passed,
                               "ort_version": ort.__version__, "ort_optimization": ort_level, **diag, **stats})
    rows = [["tiny-llama, edgeq FP8 QDQ ONNX", int(ids.size), stats["gpu_matmuls"], stats["cpu_matmuls"], r3(max_abs),
             r3(max_abs / scale), r3(top1), "yes" if passed else "NO"]]
    rows += _mlp_check(torch, out)
    out.table("FP8 on tensor cores vs QDQ simulation (tolerance: max|Δ| ≤ 1e-2·max|ref|, top-1 ≥ 0.99)",
              ["case", "tokens", "FP8 GEMMs on GPU", "MatMuls left on CPU", "max |Δ|", "max|Δ| / max|ref|", "top-1 agree", "within tolerance"],
              rows, notes="Reference: ONNX Runtime CPU on the same QDQ ONNX (tiny model); float64 numpy QDQ math (MLP block).")


def _mlp_check(torch: Any, out: Out) -> list[list[Any]]:
    """One SmolLM2-shaped MLP block, random weights: FP8 tensor cores vs the QDQ math in float64 on the CPU."""
    rng = np.random.default_rng(0)
    m = 64
    x = rng.standard_normal((m, HIDDEN)).astype(np.float32)
    wg, wu = (rng.standard_normal((INTER, HIDDEN)) * HIDDEN ** -0.5 for _ in range(2))
    wd = rng.standard_normal((HIDDEN, INTER)) * INTER ** -0.5

    def q(a: np.ndarray, s: np.ndarray) -> np.ndarray:  # fp8 round trip via torch on CPU (exact E4M3 rounding)
        t = torch.from_numpy(np.clip(a / s, -FP8_MAX, FP8_MAX).astype(np.float32)).to(torch.float8_e4m3fn)
        return t.float().numpy().astype(np.float64) * s

    def lin_ref(a: np.ndarray, w: np.ndarray) -> np.ndarray:
        sa = np.abs(a).max() / FP8_MAX
        sw = np.abs(w).max(axis=1, keepdims=True) / FP8_MAX
        return q(a.astype(np.float64), sa) @ q(w, sw).T

    def lin_gpu(a: np.ndarray, w: np.ndarray) -> np.ndarray:
        at = torch.from_numpy(a.astype(np.float32)).to(DEV)
        wt = torch.from_numpy(w.astype(np.float32)).to(DEV)
        wq, ws = quant_weight(torch, wt, True)
        sa = torch.tensor(float(np.abs(a).max() / FP8_MAX), device=DEV)
        aq = (at / sa).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return fp8_gemm_fp32(torch, aq, wq.t(), sa, ws).cpu().numpy().astype(np.float64)

    def mlp(lin: Any) -> np.ndarray:
        g, u = lin(x, wg), lin(x, wu)
        h = (g / (1 + np.exp(-g))) * u
        return lin(h.astype(np.float32), wd)

    try:
        ref, got = mlp(lin_ref), mlp(lin_gpu)
    except Exception as exc:
        out.skip("SmolLM2-shaped MLP FP8 check", exc)
        return []
    scale = float(np.abs(ref).max())
    max_abs = float(np.abs(got - ref).max())
    passed = bool(np.isfinite(got).all() and max_abs <= 1e-2 * scale)
    out.doc["records"].append({"what": "mlp_check", "M": m, "max_abs_diff": max_abs, "max_abs_ref": scale, "passed": passed})
    return [["SmolLM2 MLP block 576→1536→576 (random W, M=64)", m, 3, 0, r3(max_abs), r3(max_abs / scale), None,
             "yes" if passed else "NO"]]


def main() -> None:
    p = argparse.ArgumentParser(description="H100 FP8 vs BF16 benchmark (run on the GPU machine)")
    p.add_argument("--payload", type=Path, default=Path(".cache/h100_payload"))
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks/results")))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only-logits", action="store_true", help="run only the logits check (diagnostics)")
    p.add_argument("--cpu-dry-run", action="store_true", help="run only the logits check on the CPU (debugging here)")
    args = p.parse_args()
    import torch

    out = Out(args.quick)
    if args.cpu_dry_run:
        global DEV
        DEV = "cpu"
        logits_check(torch, out, args.payload)
        print(json.dumps(out.doc["tables"], indent=1))
        return
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark runs on the lent H100")
    mach = machine(torch)
    print(f"[h100] {mach['cpu']}; torch {torch.__version__}")
    parts = (("ceilings", lambda: bench_ceilings(torch, out, args.quick)),
             ("linear stack", lambda: bench_stack(torch, out, args.quick)),
             ("logits check", lambda: logits_check(torch, out, args.payload)))
    for name, fn in parts[2:] if args.only_logits else parts:
        try:
            fn()
        except Exception as exc:
            out.skip(name, exc)
            traceback.print_exc()
    out.write(args.out, mach)


if __name__ == "__main__":
    main()
