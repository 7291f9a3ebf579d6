"""Cost per inference per target, from measured throughput (speed.json, h100_fp8.json) and hourly prices
given as inputs (benchmarks/data/hourly_prices.json or --price label=USD).

CPI = hourly cost × time / requests (edgeq.converters.bench.cost_per_inference); one request = the speed
benchmark's LM request (its prompt + generated tokens) served by one stream.

    python benchmarks/bench_cpi.py [--price cpu-2core-vm=0.08 --price h100-sxm=2.5]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DATA, RESULTS, Result, arg_parser, fmt, setup_env  # noqa: E402


def main() -> None:
    setup_env()
    p = arg_parser(__doc__)
    p.add_argument("--price", action="append", default=[], help="label=USD per hour (overrides the prices file)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where speed.json / h100_fp8.json are read from")
    args = p.parse_args()
    from edgeq.converters.bench import cost_per_inference

    prices = {k: v for k, v in json.loads((DATA / "hourly_prices.json").read_text()).items() if not k.startswith("_")}
    for item in args.price:
        label, _, usd = item.partition("=")
        prices[label] = float(usd)
    res = Result("cpi", args.quick)
    res.notes.append("Hourly prices are inputs (" + ", ".join(f"{k}: {v} USD/h" for k, v in prices.items()) +
                     "), not measurements; replace them with yours: `python benchmarks/bench_cpi.py --price label=USD`.")
    rows = []
    speed = RESULTS / "speed.json" if args.results == RESULTS else args.results / "speed.json"
    cpu_price = next((v for k, v in prices.items() if k.startswith("cpu")), None)
    if speed.is_file() and cpu_price is not None:
        doc = json.loads(speed.read_text())
        for r in doc["records"]:
            if r.get("model") != "smollm2-135m" or not r.get("decode_tok_s") or r.get("engine") not in ("onnxruntime (raw)", "edgeq runtime"):
                continue
            secs = r["prompt_tokens"] / r["prefill_tok_s"] + r["decode_tokens"] / r["decode_tok_s"]
            req = r["decode_tokens"] + 1
            c = cost_per_inference(cpu_price, secs)
            shape = f"{r['prompt_tokens']}-token prompt + {req} generated tokens"
            res.records.append({"target": "cpu (this machine)", "engine": r["engine"], "precision": r["precision"],
                                "threads": r["threads"], "request": shape, "seconds_per_request": secs, "usd_per_hour": cpu_price,
                                "usd_per_request": c, "usd_per_million_tokens": c / req * 1e6, "source": "speed.json"})
            rows.append(["cpu (this machine)", r["engine"], r["precision"], r["threads"], shape, fmt(secs, 3), cpu_price,
                         fmt(c, 3), fmt(c / req * 1e6, 3), f"measured ({doc['machine']['date']})"])
    else:
        res.skip("CPU cost per inference", f"needs {speed} (run bench_speed.py) and a price labelled cpu-*")
    h100 = (args.results / "h100_fp8.json")
    gpu_price = next((v for k, v in prices.items() if k.startswith("h100")), None)
    if h100.is_file() and gpu_price is not None:
        doc = json.loads(h100.read_text())
        stack = {r["M"]: r for r in doc["records"] if r.get("what") == "linear_stack"}
        if 1 in stack and stack[1].get("layers") == 30:
            n_new, n_prompt = 128, 128
            pre_m = min((m for m in stack if m >= n_prompt), default=None)
            for kind in ("bf16", "fp8_static"):
                if f"{kind}_s" not in stack[1]:
                    continue
                secs = n_new * stack[1][f"{kind}_s"] + (stack[pre_m][f"{kind}_s"] if pre_m else 0.0)
                c = cost_per_inference(gpu_price, secs)
                res.records.append({"target": "h100-fp8", "engine": "torch linears only", "precision": kind,
                                    "seconds_per_request": secs, "usd_per_hour": gpu_price, "usd_per_request": c,
                                    "usd_per_million_tokens": c / n_new * 1e6, "source": "h100_fp8.json"})
                rows.append(["h100-fp8 (LOWER BOUND: linear layers only)", "torch._scaled_mm / bf16 matmul", kind, None,
                             f"{n_prompt}-token prompt + {n_new} generated tokens", fmt(secs, 3), gpu_price, fmt(c, 3), fmt(c / n_new * 1e6, 3),
                             f"measured ({doc['machine']['date']}); prefill timed at M={pre_m}"])
    else:
        res.skip("H100 cost per inference", f"needs {h100} from the device run and a price labelled h100-*")
    for tgt in ("rtx-ampere", "rtx-ada", "rtx-blackwell", "jetson-orin"):
        res.skip(f"{tgt} cost per inference", "engines for this target cannot run on this machine (no GPU); "
                 "run `edgeq bench --model <bundle> --target " + tgt + " --hourly-price <USD>` on the device")
    res.table("Cost per inference of SmolLM2-135M requests (one stream)",
              ["target", "engine", "precision", "threads", "request", "s / request", "USD/hour (input)", "USD / request",
               "USD / 1M generated tokens", "throughput source"], rows)
    res.write(args.out)


if __name__ == "__main__":
    main()
