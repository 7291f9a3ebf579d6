"""Quantize a model with several schemes and measure each against the FP32 export on the eval text.

For the benchmark helper and for the issue's reference numbers:

    python -m edgeq.converters.quantize.measure --model smollm2-135m --out /tmp/q --schemes fp8 int8-wo int4-awq

LMs: perplexity on the first ``--tokens`` tokens of eval.txt (windows of ``--window``), KL and top-1 vs FP32.
Encoders: cosine of pooled embeddings vs FP32 on eval.txt paragraphs. Prints and writes ``measure.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def measure_schemes(model: str, schemes: list[str], out_root: Path, *, block_size: int = 128,
                    tokens: int = 2048, window: int = 1024, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Quantize ``model`` with each scheme under ``out_root`` and compare with its FP32 export."""
    from edgeq.converters import evaluate
    from edgeq.converters.export import export_onnx
    from edgeq.converters.quantize import get_config, quantize
    from edgeq.converters.sources import TEXT_GENERATION, load_model

    loaded = load_model(model)
    fp_dir = out_root / "fp32"
    if not (fp_dir / "model.onnx").is_file():
        export_onnx(loaded, fp_dir)
    results: dict[str, Any] = {"model": model, "tokens": tokens, "window": window}
    if loaded.task == TEXT_GENERATION:
        results["fp32"] = evaluate.perplexity(fp_dir, num_tokens=tokens, window=window).to_dict()
    for scheme in schemes:
        # the held-out gate would abort a scheme that misses its tolerance; here we want its numbers
        opts = {"validate": False, **(overrides or {})}
        if scheme.startswith("int4"):
            opts.setdefault("block_size", block_size)
        cfg = get_config(scheme, **opts)
        t0 = time.time()
        res = quantize(loaded, cfg, out_root / scheme, overwrite=True)
        row: dict[str, Any] = {"config": cfg.to_dict(), "wall_s": round(time.time() - t0, 1),
                               "quantize_s": res.report["time_s"]["quantize"],
                               "quantize_cpu_s": res.report["time_s"]["quantize_cpu"], "peak_rss_mb": res.report["peak_rss_mb"],
                               "onnx_bytes": res.report["sizes"]["quantized_onnx_bytes"],
                               "holdout_validation": res.report["validation"]}
        if loaded.task == TEXT_GENERATION:
            row["eval"] = evaluate.compare_lm(res.out_dir, fp_dir, num_tokens=tokens, window=window).to_dict()
        else:
            row["eval"] = evaluate.compare_embeddings(res.out_dir, fp_dir).to_dict()
        results[scheme] = row
        print(json.dumps({scheme: row["eval"], "wall_s": row["wall_s"], "rss_mb": row["peak_rss_mb"]}), flush=True)
    (out_root / "measure.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--schemes", nargs="+", default=["fp8", "int8-wo", "int8", "int4-rtn", "int4-awq"])
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--window", type=int, default=1024)
    a = ap.parse_args()
    measure_schemes(a.model, a.schemes, a.out, block_size=a.block_size, tokens=a.tokens, window=a.window)


if __name__ == "__main__":
    main()
