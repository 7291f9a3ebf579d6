"""Turn the H200's ``results.json`` from ``gpu_fp8_loader_check.py check`` into ``results/gpu_loader.json``.

    python benchmarks/gpu_loader_result.py RESULTS_JSON --commit SHA --payload DESCRIPTION
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Result, setup_env  # noqa: E402


def _summary(rows: list[dict] | None) -> str:
    """``greedy a/b (first difference at step ...)``, plus the teacher-forced top-1 agreement and largest
    top-5 logit difference where the record has logits."""
    if not rows:
        return "-"
    ok = sum(r["match"] for r in rows)
    diffs = [str(r["first_difference"]) for r in rows if not r["match"]]
    text = f"greedy {ok}/{len(rows)}" + (f" (first difference at step {', '.join(diffs)})" if diffs else "")
    tf = [r["teacher_forced"] for r in rows if r.get("teacher_forced")]
    if tf:
        text += "; " + _tf_text(tf)
    return text


def _tf_text(tf: list[dict]) -> str:
    agree, steps = sum(t["top1_agree"] for t in tf), sum(t["steps"] for t in tf)
    margins = [d["onnx_margin"] for t in tf for d in t["differing_steps"]]
    text = f"top-1 {agree}/{steps}, max |Δlogit| {max(t['max_abs_logit_diff_top5'] for t in tf):.3g}"
    return text + (f" (ONNX margin at the flips ≤ {max(margins):.3g})" if margins else "")


def main() -> None:
    setup_env()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results", type=Path)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--payload", required=True)
    ap.add_argument("--note", action="append", default=[], help="a line for the notes (repeatable)")
    args = ap.parse_args()
    doc = json.loads(args.results.read_text())
    res = Result("gpu_loader", False)
    rows = []
    for name, e in sorted(doc["checkpoints"].items()):
        res.records.append({"checkpoint": name, **e})
        rows.append([name, e.get("weight_block_size") or "-", _summary(e.get("prompts")), e.get("forward_error") or "-",
                     _summary(e.get("loaded_weights_fp32")), _summary(e.get("loaded_weights_fp32_weight_only")),
                     _tf_text(e["host_noise_floor"]) if e.get("host_noise_floor") else "-", e.get("error") or "-"])
    res.table(f"edgeq's FP8 block checkpoints in transformers {doc['transformers']} (torch {doc['torch']}) on the "
              f"{doc['gpu']}: tokens vs edgeq's QDQ ONNX of the same weights (24 new tokens, 3 prompts)",
              ["checkpoint", "block", "FP8Linear forward (W8A8 kernel) vs W8A8 ONNX", "forward error",
               "loaded weights FP32 + FP8 act rounding vs W8A8 ONNX", "loaded weights FP32 vs weight-only ONNX",
               "host floor: torch vs ONNX Runtime, W8A8", "load error"], rows,
              notes="transformers 4.57.6 (with huggingface_hub 0.36.2 and tokenizers 0.22.2, carried as wheels) "
                    "instead of the image's 5.17, whose FP8Linear needs the `kernels` package from the Hub. Greedy: "
                    "decoded ids equal; top-1 / |Δlogit|: teacher-forced along the ONNX's own sequence, against its "
                    "top-5 logits per step. The W8A8 ONNX quantizes activations per token and block of channels, as "
                    "the kernel does; the weight-only ONNX holds the same checkpoint bytes. Weight-only is the same "
                    "arithmetic up to FP32 summation order and must match exactly; with FP8 activations a summation "
                    "difference flips a rounding now and then and that grows through the layers, so the last column "
                    "measures, on the CPU host, how far two implementations of the same W8A8 arithmetic (edgeq's torch "
                    "simulation and ONNX Runtime) land apart: the floor to read the GPU columns against.")
    res.notes.append(f"Device run on the lent H200; payload {args.payload}; edgeq commit {args.commit}.")
    res.notes.extend(args.note)
    res.write()


if __name__ == "__main__":
    main()
