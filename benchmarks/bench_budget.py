"""Accuracy budgets: what each target's recipe (precision + budget + upgrade ladder) costs and what it buys, beside
the same scheme without a budget, in the same run.

SmolLM2-135M, FP16-compute graphs as GPU targets get them (run here by ONNX Runtime CPU): perplexity vs the FP32
export on the first 2048 tokens of eval.txt and on 4096 tokens of text the project does not hold
(``external_text.py``); quantize wall/CPU time on this machine (the budget's aim: ≤ 2× plain FP8); the weight
fraction per precision and effective bits per weight. MiniLM-L6: mean cosine to FP32 on sentence_pairs.tsv.

    python benchmarks/bench_budget.py [--quick] [--models minilm-l6]

``--models`` reruns only those models' rows and keeps the other rows of ``results/budget.json``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DATA, EVAL_TEXT, Result, arg_parser, cached_export, fmt, setup_env  # noqa: E402

#: (label, model, scheme, budget, upgrade): plain scheme, then the recipe of the target named in the label
RUNS = (
    ("fp8 (rtx-ada precision, no budget)", "smollm2-135m", "fp8", None, ()),
    ("fp8 + ppl+1% (rtx-ada recipe)", "smollm2-135m", "fp8", "ppl+1%", ()),
    ("int4-awq (jetson-orin precision, no budget)", "smollm2-135m", "int4-awq", None, ()),
    ("int4-awq + ppl+1.5%, int8-wo rung (jetson-orin recipe)", "smollm2-135m", "int4-awq", "ppl+1.5%", ("int8-wo",)),
    ("int8 W8A8 (jetson-orin encoder precision, no budget)", "minilm-l6", "int8", None, ()),
    ("int8 + cosine>=0.995, int8-wo rung (jetson-orin recipe)", "minilm-l6", "int8", "cosine>=0.995", ("int8-wo",)),
    ("fp8 + cosine>=0.995 (rtx-ada encoder recipe)", "minilm-l6", "fp8", "cosine>=0.995", ()),
)


def _quantize(loaded: Any, scheme: str, budget: str | None, upgrade: tuple[str, ...], out: Path) -> tuple[Any, float, float]:
    from edgeq.converters.quantize import get_config, quantize
    from edgeq.converters.quantize.mixed import rung_config

    t, c = time.time(), time.process_time()
    # without a budget the scheme's own sanity gate would refuse a miss; the point here is to show the miss
    cfg = get_config(scheme, compute_dtype="float16", validate=budget is not None)
    res = quantize(loaded, cfg, out, accuracy_budget=budget,
                   upgrade=tuple(rung_config(u, "float16") for u in upgrade), overwrite=True)
    return res, time.time() - t, time.process_time() - c


def _kept_rows(path: Path, models: list[str]) -> dict[str, Any]:
    import json
    import re

    doc = json.loads(path.read_text())
    rows = {t["title"].split(",")[0].split(":")[0].split("-")[0]: t["rows"] for t in doc["tables"]}
    return {"records": doc["records"], "not_run": doc["not_run"],
            "rows": rows, "started": next((m.group(1) for n in doc["notes"]
                                           if (m := re.search(r"from the run started (\S+?)\.$", n))), doc["started"])}


def main() -> None:
    setup_env()
    ap = arg_parser(__doc__)
    ap.add_argument("--models", nargs="*", help="only these models (the rest of results/budget.json is kept)")
    args = ap.parse_args()
    res = Result("budget", args.quick)
    keep = _kept_rows(args.out / "budget.json", args.models) if args.models else None
    from benchmarks.external_text import external_text
    from edgeq.converters import evaluate
    from edgeq.converters.sources import load_model

    text, used = external_text()
    res.notes.append(f"External text: package descriptions of {', '.join(f'{k} {v}' for k, v in used.items())}.")
    lm_tokens, ext_tokens = (256, 512) if args.quick else (2048, 4096)
    loaded: dict[str, Any] = {}
    rows_lm, rows_enc = [], []
    with tempfile.TemporaryDirectory(prefix="edgeq-budget-") as work:
        for i, (label, model, scheme, budget, upgrade) in enumerate(RUNS):
            if args.models and model not in args.models:
                continue
            if model not in loaded:
                loaded[model] = load_model(model)
            ref = cached_export(model)
            try:
                q, wall, cpu = _quantize(loaded[model], scheme, budget, upgrade, Path(work) / f"q{i}")
            except Exception as exc:
                res.skip(f"{model}: {label}", exc)
                continue
            b = q.report.get("accuracy_budget") or {}
            mix = b.get("weight_fraction", {scheme: 1.0})
            rec: dict[str, Any] = {"label": label, "model": model, "scheme": scheme, "budget": budget, "upgrade": list(upgrade),
                                   "quantize_wall_s": round(wall, 1), "quantize_cpu_s": round(cpu, 1),
                                   "weight_fraction": mix, "effective_bits": b.get("effective_bits"),
                                   "budget_record": {k: v for k, v in b.items() if k not in ("raised", "kept")} or None}
            if q.report["task"] == "text-generation":
                ev = evaluate.compare_lm(q.out_dir, ref, ids=evaluate.tokenize(ref, EVAL_TEXT.read_text()), num_tokens=lm_tokens)
                ex = evaluate.compare_lm(q.out_dir, ref, ids=evaluate.tokenize(ref, text), num_tokens=ext_tokens)
                rec.update(eval_txt=ev.to_dict(), external=ex.to_dict())
                rows_lm.append([label, fmt(ev.ppl_increase_pct, 3), fmt(ex.ppl_increase_pct, 3),
                                fmt(100 * mix.get(scheme, 0.0), 3), b.get("effective_bits"), fmt(wall, 3), fmt(cpu, 3),
                                f"{b['graph_measured'] / b['graph_reference'] * 100 - 100:+.2f}%" if b.get("graph_reference") else "—"])
            else:
                from benchmarks import lm_eval

                pairs = lm_eval.load_pairs(DATA / "sentence_pairs.tsv")
                emb = evaluate.compare_embeddings(q.out_dir, ref, texts=[a for a, _ in pairs] + [c for _, c in pairs])
                rec.update(pairs=emb.to_dict())
                rows_enc.append([label, fmt(emb.mean_cosine, 5), fmt(emb.min_cosine, 5), fmt(100 * mix.get(scheme, 0.0), 3),
                                 b.get("effective_bits"), fmt(wall, 3),
                                 fmt(b.get("graph_measured"), 5) if b.get("graph_measured") is not None else "—"])
            res.records.append(rec)
            print(f"[budget] {label}: {wall:.0f} s, mix {mix}", flush=True)
    if keep is not None:  # the rows of the models not rerun, as the earlier run wrote them
        res.records = [r for r in keep["records"] if r["model"] not in args.models] + res.records
        rerun = [lbl for lbl, m, *_ in RUNS if m in args.models]
        res.not_run = [n for n in keep["not_run"] if not any(lbl in n["what"] for lbl in rerun)] + res.not_run
        res.notes.append(f"Rows of {', '.join(args.models)} rerun on {time.strftime('%Y-%m-%d')}; the others are "
                         f"from the run started {keep['started']}.")
        rows_lm = rows_lm or keep["rows"].get("SmolLM2", [])
        rows_enc = rows_enc or keep["rows"].get("MiniLM", [])
    res.table(f"SmolLM2-135M, FP16-compute graphs: perplexity increase vs FP32 on {lm_tokens} tokens of eval.txt and "
              f"{ext_tokens} tokens of external text",
              ["run", "Δppl eval.txt %", "Δppl external %", "% weights at the scheme", "bits/w", "quantize wall s",
               "quantize CPU s", "Δppl held-out calib (graph)"], rows_lm,
              notes="Budgets are fitted on held-out calibration text (the last column, in the emitted graph); the other "
                    "two texts were never seen. Times are quantize() end to end (export, calibration, scoring, search, "
                    "emission, ONNX Runtime checks) on this machine's 2 cores; the aim is budgeted FP8 ≤ 2× plain FP8.")
    res.table("MiniLM-L6: mean / min cosine to FP32 on sentence_pairs.tsv (170 sentences)",
              ["run", "cos mean", "cos min", "% weights at the scheme", "bits/w", "quantize wall s",
               "cosine held-out calib (graph)"], rows_enc)
    res.write(args.out)


if __name__ == "__main__":
    main()
