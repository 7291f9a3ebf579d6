"""Speed on CPU (ONNX Runtime), edgeq vs peers in one run on one machine.

- SmolLM2-135M greedy generation, 128-token prompt (from eval.txt) + 128 new tokens, at 1 and 2 threads:
  prefill and decode tokens/s for FP32 / INT8 / INT4 through raw ``onnxruntime`` and through edgeq's
  runtime (``edgeq.sdk``), vs transformers eager FP32 and onnxruntime-genai on the same ONNX files.
  Decode is also given as a fraction of this machine's memory-bandwidth limit:
  (bytes read per token × tokens/s) / measured copy bandwidth.
- MiniLM-L6 sentences/s at batch 1 and 32.
- edgeq runtime overhead per ``infer`` vs ``InferenceSession.run`` (aim ≤ 3 %), and monitor overhead at the
  default schedule (aim ≤ 2 % of throughput).

    python benchmarks/bench_speed.py [--quick] [--threads 1 2]
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    CACHE, DATA, EVAL_TEXT, Result, arg_parser, cached_export, copy_bandwidth, fmt, setup_env)

#: precision label -> candidate label in schemes.LM (the same files bench_quality measured)
LM_VARIANTS = {"FP32": "fp32", "INT8": "edgeq int8-wo", "INT4": "edgeq int4-awq g128",
               "INT4 g64 +head8": "edgeq int4-awq g64 head8", "INT4 g64 +head4": "edgeq int4-awq g64 head4",
               "INT4 g64 sym +head4": "edgeq int4-awq g64 sym head4"}
ENC_VARIANTS = {"FP32": "fp32", "INT8": "edgeq int8-sq", "INT4": "edgeq int4-awq g128", "ORT dyn INT8": "ORT dynamic int8"}


def _variant_path(model: str, label: str, res: Result) -> Path | None:
    from benchmarks import schemes

    cand = next(c for c in schemes.REGISTRY[model] if c.label == label)
    try:
        return schemes.produce(model, cand, fresh=False)[0]
    except Exception as exc:
        res.skip(f"{model} {label}: could not produce the model", exc)
        return None


def bench_lm(res: Result, quick: bool, threads: list[int], bw_gbps: float) -> None:
    from benchmarks import edgeq_adapter, lm_eval, lm_speed

    model = "smollm2-135m"
    src = cached_export(model)
    n_prompt, n_new, repeats = (32, 16, 1) if quick else (128, 128, 3)
    ids = lm_speed.prompt_ids(src, EVAL_TEXT, n_prompt)
    nk, hd = lm_eval.kv_shape(src)
    paths = {prec: _variant_path(model, label, res) for prec, label in LM_VARIANTS.items()}
    paths = {k: v for k, v in paths.items() if v is not None}
    context = n_prompt + n_new // 2  # mean context over the decode
    bytes_tok = {prec: lm_speed.decode_bytes_per_token(p, context) for prec, p in paths.items()}
    rows: list[list[Any]] = []

    def record(engine: str, prec: str, t: int, r: dict[str, Any], note: str = "") -> None:
        bt = bytes_tok.get(prec, {}).get("total")
        frac = (r["decode_tok_s"] * bt / (bw_gbps * 1e9)) if (bt and r.get("decode_tok_s")) else None
        rec = {"model": model, "engine": engine, "precision": prec, "threads": t, **r, "bytes_per_token": bt,
               "bandwidth_fraction": frac, "note": note}
        res.records.append(rec)
        rows.append([engine, prec, t, fmt(r["prefill_tok_s"], 4), fmt(r.get("decode_tok_s"), 4),
                     fmt(r.get("decode_spread"), 2), round(bt / 1e6, 1) if bt else None, fmt(frac, 3), note])
        print(f"[speed] {engine} {prec} t={t}: prefill {r['prefill_tok_s']:.1f} decode {r.get('decode_tok_s') or 0:.2f} tok/s")

    def warm_then(fn_short: Any, fn: Any) -> dict[str, Any]:
        fn_short()  # warm-up: a short generation (allocations, kernel choice), not timed
        return lm_speed.median_run(fn, repeats, warmup=0)

    short = ids[:, :16]
    for t in threads:
        # raw onnxruntime
        for prec, p in paths.items():
            try:
                sess = lm_eval.session(p, t)
                r = warm_then(lambda: lm_speed.ort_generate(sess, short, 4, nk, hd),
                              lambda: lm_speed.ort_generate(sess, ids, n_new, nk, hd))
                record("onnxruntime (raw)", prec, t, r)
                del sess
            except Exception as exc:
                res.skip(f"onnxruntime raw {prec} t={t}", exc)
        # edgeq runtime
        for prec, p in paths.items():
            try:
                bundle = CACHE / "bundles" / f"{model}-{prec.replace(' ', '-').replace('+', '')}"
                if not (bundle / "manifest.json").is_file():
                    edgeq_adapter.onnx_bundle(src, p.parent, bundle, precision=prec.split()[0].lower())
                with edgeq_adapter.open_runtime(bundle, t, monitor=False) as rt:
                    r = warm_then(lambda: _rt_generate(rt, short, 4), lambda: _rt_generate(rt, ids, n_new))
                record("edgeq runtime", prec, t, r, "monitor off")
            except Exception as exc:
                res.skip(f"edgeq runtime generate {prec} t={t}", exc)
        # onnxruntime-genai on the same files
        for prec in ("FP32", "INT4", "INT4 g64 +head4"):
            if prec not in paths:
                continue
            try:
                gdir = lm_speed.prepare_genai_dir(paths[prec].parent, CACHE / "genai" / f"{prec.replace(' ', '-').replace('+', '')}-t{t}", t, n_prompt + n_new)
                gm = lm_speed.genai_model(gdir)
                r = warm_then(lambda: lm_speed.genai_generate(gm, short, 4), lambda: lm_speed.genai_generate(gm, ids, n_new))
                record("onnxruntime-genai", prec, t, r, "same ONNX, genai_config mapping optimum's I/O names")
                del gm
            except Exception as exc:
                res.skip(f"onnxruntime-genai {prec} t={t}", exc)
        # transformers eager FP32
        try:
            import torch

            from benchmarks.edgeq_adapter import _loaded

            torch.set_num_threads(t)
            tm = _loaded(model).model
            r = warm_then(lambda: lm_speed.torch_generate(tm, short, 4), lambda: lm_speed.torch_generate(tm, ids, n_new))
            record("transformers eager", "FP32", t, r)
        except Exception as exc:
            res.skip(f"transformers eager FP32 t={t}", exc)
        gc.collect()
    res.table(f"SmolLM2-135M generation: {n_prompt}-token prompt + {n_new} new tokens, greedy (median of {repeats})",
              ["engine", "precision", "threads", "prefill tok/s", "decode tok/s", "decode spread", "MB read/token",
               "fraction of bandwidth limit", "note"], rows,
              notes="Files: " + ", ".join(f"{k} = {v}" for k, v in LM_VARIANTS.items()) + " (the ONNX files bench_quality "
                    f"scored). Bandwidth limit: {bw_gbps:.1f} GB/s (best numpy copy, read+write). MB read per token = weight "
                    f"initializers (an embedding table read by Gather counts one row) + FP32 KV cache at {context} tokens.")
    _ratio_table(res, model)


def _rt_generate(rt: Any, ids: Any, n_new: int) -> dict[str, Any]:
    """edgeq runtime generate; prefill/decode seconds from the runtime's own GenerationResult timings.

    The runtime has no ignore-EOS switch: if greedy decoding meets EOS early, decode tok/s is over fewer tokens
    (the record keeps the count)."""
    gen = rt.generate(_ids_prompt(ids), max_new_tokens=n_new)
    return {"prefill_s": gen.prefill_s, "decode_s": gen.decode_s, "decode_tokens": max(len(gen.token_ids) - 1, 0),
            "prompt_tokens": gen.prompt_tokens}


def _ids_prompt(ids: Any) -> str:
    """The prompt as text decoded from the same ids (the runtime takes text; re-encoding may differ by a token)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(cached_export("smollm2-135m") / "tokenizer.json"))
    return tok.decode(ids[0].tolist())


def _ratio_table(res: Result, model: str) -> None:
    recs = [r for r in res.records if r.get("model") == model and r.get("decode_tok_s")]
    base = {r["threads"]: r["decode_tok_s"] for r in recs if r["engine"] == "onnxruntime (raw)" and r["precision"] == "FP32"}
    rows = [[r["engine"], r["precision"], r["threads"], fmt(r["decode_tok_s"] / base[r["threads"]], 3)]
            for r in recs if r["threads"] in base]
    if rows:
        res.table("Decode speed relative to raw onnxruntime FP32 at the same thread count", ["engine", "precision", "threads", "× FP32 ORT"], rows)
        labels = [f"{r[0]} {r[1]} t{r[2]}" for r in rows]
        res.chart("speed_smollm2_decode.png", "SmolLM2-135M decode tokens/s", "tok/s", labels,
                  {"decode tok/s": [next(x["decode_tok_s"] for x in recs if (x["engine"], x["precision"], x["threads"]) == tuple(r[:3])) for r in rows]})


def bench_encoder(res: Result, quick: bool, threads: list[int]) -> None:
    from benchmarks import edgeq_adapter, lm_eval

    model = "minilm-l6"
    src = cached_export(model)
    texts = [a for a, _ in lm_eval.load_pairs(DATA / "sentence_pairs.tsv")][:32]
    tok = lm_eval.tokenizer(src)
    repeats = 2 if quick else 5
    rows = []
    for prec, label in ENC_VARIANTS.items():
        p = _variant_path(model, label, res)
        if p is None:
            continue
        for t in threads:
            sess = lm_eval.session(p, t)
            for batch in (1, 32):
                chunks = [texts[i:i + batch] for i in range(0, len(texts), batch)]
                feeds = [lm_eval.encode_batch(tok, c) for c in chunks]
                from benchmarks.common import time_median

                tm = time_median(lambda: [lm_eval.embed(sess, f) for f in feeds], repeats=repeats, warmup=1)
                sps = len(texts) / tm.median
                res.records.append({"model": model, "engine": "onnxruntime (raw)", "precision": prec, "threads": t,
                                    "batch": batch, "sentences_per_s": sps, **tm.to_dict()})
                rows.append(["onnxruntime (raw)", prec, t, batch, fmt(sps, 4), fmt(tm.spread, 2)])
            if prec in ("FP32", "INT8", "INT4"):
                try:
                    bundle = CACHE / "bundles" / f"{model}-{prec}"
                    if not (bundle / "manifest.json").is_file():
                        edgeq_adapter.onnx_bundle(src, p.parent, bundle, precision=prec.lower())
                    with edgeq_adapter.open_runtime(bundle, t, monitor=False) as rt:
                        for batch in (1, 32):
                            chunks = [texts[i:i + batch] for i in range(0, len(texts), batch)]
                            from benchmarks.common import time_median

                            tm = time_median(lambda: [rt.embed(c) for c in chunks], repeats=repeats, warmup=1)
                            sps = len(texts) / tm.median
                            res.records.append({"model": model, "engine": "edgeq runtime embed", "precision": prec,
                                                "threads": t, "batch": batch, "sentences_per_s": sps, **tm.to_dict()})
                            rows.append(["edgeq runtime embed (incl. tokenization)", prec, t, batch, fmt(sps, 4), fmt(tm.spread, 2)])
                except Exception as exc:
                    res.skip(f"edgeq runtime embed {model} {prec} t={t}", exc)
            del sess
    for t in threads:
        try:
            import torch

            from benchmarks.common import time_median
            from benchmarks.edgeq_adapter import _loaded

            torch.set_num_threads(t)
            tmodel = _loaded(model).model
            for batch in (1, 32):
                chunks = [lm_eval.encode_batch(tok, texts[i:i + batch]) for i in range(0, len(texts), batch)]

                def run() -> None:
                    with torch.inference_mode():
                        for f in chunks:
                            tmodel(**{k: torch.from_numpy(v) for k, v in f.items()})

                tm = time_median(run, repeats=repeats, warmup=1)
                sps = len(texts) / tm.median
                res.records.append({"model": model, "engine": "transformers eager", "precision": "FP32", "threads": t,
                                    "batch": batch, "sentences_per_s": sps, **tm.to_dict()})
                rows.append(["transformers eager", "FP32", t, batch, fmt(sps, 4), fmt(tm.spread, 2)])
        except Exception as exc:
            res.skip(f"transformers eager {model} t={t}", exc)
    res.table(f"MiniLM-L6 sentences/s ({len(texts)} sentences of sentence_pairs.tsv, max 128 tokens)",
              ["engine", "precision", "threads", "batch", "sentences/s", "spread"], rows,
              notes="Raw onnxruntime rows time tokenized feeds (tokenization excluded); edgeq runtime rows time embed(texts).")


def bench_overhead(res: Result, quick: bool) -> None:
    """Runtime.infer vs InferenceSession.run on MiniLM FP32 batch 1 (short inputs make overhead visible),
    and Runtime.embed throughput with the monitor at its default schedule vs off. Interleaved blocks."""
    import numpy as np

    from benchmarks import edgeq_adapter, lm_eval

    model = "minilm-l6"
    src = cached_export(model)
    bundle = CACHE / "bundles" / f"{model}-FP32"
    try:
        if not (bundle / "manifest.json").is_file():
            edgeq_adapter.onnx_bundle(src, src, bundle, precision="fp32")
        texts = [a for a, _ in lm_eval.load_pairs(DATA / "sentence_pairs.tsv")][:16]
        feeds = lm_eval.encode_batch(lm_eval.tokenizer(src), texts[:1])
        sess = lm_eval.session(src / "model.onnx", 1)
        names = [i.name for i in sess.get_inputs()]
        feeds = {k: feeds[k] for k in names}
        blocks, calls = (3, 50) if quick else (9, 200)
        with edgeq_adapter.open_runtime(bundle, 1, monitor=False) as rt:
            raw_t, rt_t = [], []
            for _ in range(3):
                sess.run(None, feeds), rt.infer(feeds)
            for _ in range(blocks):
                t0 = time.perf_counter()
                for _ in range(calls):
                    sess.run(None, feeds)
                raw_t.append((time.perf_counter() - t0) / calls)
                t0 = time.perf_counter()
                for _ in range(calls):
                    rt.infer(feeds)
                rt_t.append((time.perf_counter() - t0) / calls)
        raw, rtm = statistics.median(raw_t), statistics.median(rt_t)
        ovh = 100.0 * (rtm / raw - 1.0)
        res.records.append({"what": "runtime_overhead", "raw_s": raw, "runtime_s": rtm, "overhead_pct": ovh,
                            "blocks": blocks, "calls_per_block": calls, "model": model})
        rows = [["Runtime.infer vs InferenceSession.run (MiniLM FP32, batch 1, 1 thread)", fmt(raw * 1e3, 4), fmt(rtm * 1e3, 4),
                 fmt(ovh, 3), "≤ 3 %"]]
        # monitor overhead: embed() throughput with the default monitor vs disabled, interleaved
        mon_t, off_t = [], []
        with edgeq_adapter.open_runtime(bundle, 1, monitor=True) as on, edgeq_adapter.open_runtime(bundle, 1, monitor=False) as off:
            n = 20 if quick else 100
            for _ in range(blocks):
                t0 = time.perf_counter()
                for i in range(n):
                    off.embed(texts[i % len(texts)])
                off_t.append((time.perf_counter() - t0) / n)
                t0 = time.perf_counter()
                for i in range(n):
                    on.embed(texts[i % len(texts)])
                mon_t.append((time.perf_counter() - t0) / n)
            canaries = on.status().canaries if hasattr(on, "status") else None
        a, b = statistics.median(off_t), statistics.median(mon_t)
        mov = 100.0 * (b / a - 1.0)
        res.records.append({"what": "monitor_overhead", "off_s": a, "on_s": b, "overhead_pct": mov, "blocks": blocks,
                            "calls_per_block": n, "monitor_status": canaries})
        rows.append(["Runtime.embed, monitor default schedule vs off (MiniLM FP32, 1 thread)", fmt(a * 1e3, 4), fmt(b * 1e3, 4),
                     fmt(mov, 3), "≤ 2 %"])
        res.table("edgeq runtime overhead (median of interleaved blocks)",
                  ["measurement", "baseline ms/call", "edgeq ms/call", "overhead %", "aim"], rows)
        del np
    except Exception as exc:
        res.skip("runtime/monitor overhead", exc)


def main() -> None:
    setup_env()
    p = arg_parser(__doc__)
    p.add_argument("--threads", type=int, nargs="*", default=None, help="thread counts (default 1 2; quick: 2)")
    p.add_argument("--skip", nargs="*", default=[], choices=["lm", "encoder", "overhead"])
    args = p.parse_args()
    threads = args.threads or ([2] if args.quick else [1, 2])
    res = Result("speed", args.quick)
    bws = [copy_bandwidth(mib=128 if args.quick else 512, threads=t) for t in sorted({1, *threads})]
    for b in bws:
        res.records.append({"what": "copy_bandwidth", **b})
    bw = max(bws, key=lambda b: b["best_gbps"])
    res.table("Memory bandwidth (STREAM-like numpy copy)", ["threads", "array MiB", "best GB/s", "median GB/s", "spread"],
              [[b["threads"], b["array_mib"], fmt(b["best_gbps"], 3), fmt(b["median_gbps"], 3), b["timing"]["spread"]] for b in bws],
              notes="Bytes read + bytes written per second, as STREAM counts a copy. The decode bandwidth limit below "
                    "is the best of these.")
    if "lm" not in args.skip:
        bench_lm(res, args.quick, threads, bw["best_gbps"])
    if "encoder" not in args.skip:
        bench_encoder(res, args.quick, threads)
    if "overhead" not in args.skip:
        bench_overhead(res, args.quick)
    res.write(args.out)


if __name__ == "__main__":
    main()
