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
    if not rows:
        return "-"
    ok = sum(r["match"] for r in rows)
    diffs = [str(r["first_difference"]) for r in rows if not r["match"]]
    return f"{ok}/{len(rows)}" + (f" (first difference at step {', '.join(diffs)})" if diffs else "")


def main() -> None:
    setup_env()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results", type=Path)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--payload", required=True)
    args = ap.parse_args()
    doc = json.loads(args.results.read_text())
    res = Result("gpu_loader", False)
    rows = []
    for name, e in sorted(doc["checkpoints"].items()):
        res.records.append({"checkpoint": name, **e})
        rows.append([name, e.get("quant_method"), e.get("linear_class"), _summary(e.get("prompts")),
                     e.get("forward_error") or "-", _summary(e.get("loaded_weights_fp32")), e.get("error") or "-"])
    res.table(f"edgeq's FP8 block checkpoints in transformers {doc['transformers']} (torch {doc['torch']}) on the "
              f"{doc['gpu']}: greedy tokens vs edgeq's QDQ ONNX of the same weights (24 new tokens, 3 prompts)",
              ["checkpoint", "quant_method", "linear class", "FP8Linear forward (W8A8 kernel)", "forward error",
               "loaded weights, dequantized, FP32", "load error"], rows,
              notes="transformers 4.57.6 (with huggingface_hub 0.36.2 and tokenizers 0.22.2, carried as wheels) "
                    "instead of the image's 5.17, whose FP8Linear needs the `kernels` package from the Hub. The W8A8 "
                    "kernel quantizes activations per 128-channel group in BF16, the ONNX record is weight-only FP32: "
                    "a late first difference is activation rounding. The kernel asserts that a linear's input width "
                    "is a multiple of 128, which SmolLM2's 576 is not. The last columns decode with the weights the "
                    "loader put on the GPU (E4M3 codes x weight_scale_inv) in FP32 linears: the record's arithmetic.")
    res.notes.append(f"Device run on the lent H200; payload {args.payload}; edgeq commit {args.commit}.")
    res.write()


if __name__ == "__main__":
    main()
