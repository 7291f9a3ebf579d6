"""FP8 variants side by side: static per-tensor activations (max, mse), dynamic per-token activations
(``fp8-dynamic``, vLLM's FP8_DYNAMIC), block-scaled weights with dynamic per-token-group activations (``fp8-block``,
the fine-grained checkpoints' arithmetic) and weight-only block FP8.

SmolLM2-135M: perplexity increase vs FP32 on 2048 tokens of eval.txt and 4096 tokens of external text
(``external_text.py``); MiniLM-L6: cosine to FP32 on sentence_pairs.tsv. FP32-compute graphs in ONNX Runtime CPU
(dynamic FP8 is written out as Cast arithmetic, which only float32 graphs carry and no TensorRT builds).

    python benchmarks/bench_fp8.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DATA, EVAL_TEXT, Result, arg_parser, cached_export, fmt, setup_env  # noqa: E402

#: (label, model, scheme, options, what runs it)
RUNS: tuple[tuple[str, str, str, dict[str, Any], str], ...] = (
    ("fp8, static max", "smollm2-135m", "fp8", {}, "TensorRT (the rtx-ada / hopper-server precision)"),
    ("fp8, static mse", "smollm2-135m", "fp8", {"act_calib": "mse"}, "TensorRT"),
    ("fp8-dynamic, per token", "smollm2-135m", "fp8-dynamic", {}, "vLLM (compressed-tensors FP8_DYNAMIC)"),
    ("fp8-block 64x64, dynamic per token group", "smollm2-135m", "fp8-block", {},
     "transformers FP8Linear, vLLM (fine-grained FP8)"),
    ("fp8-block 64x64, weight-only", "smollm2-135m", "fp8-block", {"activations": "none"}, "ONNX Runtime, TensorRT-RTX"),
    ("fp8, static max", "minilm-l6", "fp8", {}, "TensorRT"),
    ("fp8-dynamic, per token", "minilm-l6", "fp8-dynamic", {}, "vLLM"),
)


def main() -> None:
    setup_env()
    args = arg_parser(__doc__).parse_args()
    res = Result("fp8", args.quick)
    from benchmarks import lm_eval
    from benchmarks.external_text import external_text
    from edgeq.converters import evaluate
    from edgeq.converters.quantize import get_config, quantize
    from edgeq.converters.sources import load_model

    text, used = external_text()
    res.notes.append(f"External text: package descriptions of {', '.join(f'{k} {v}' for k, v in used.items())}.")
    lm_tokens, ext_tokens = (256, 512) if args.quick else (2048, 4096)
    pairs = lm_eval.load_pairs(DATA / "sentence_pairs.tsv")
    loaded: dict[str, Any] = {}
    rows_lm, rows_enc = [], []
    with tempfile.TemporaryDirectory(prefix="edgeq-fp8-") as work:
        for i, (label, model, scheme, opts, runs_in) in enumerate(RUNS):
            loaded.setdefault(model, load_model(model))
            ref = cached_export(model)
            t = time.time()
            try:
                q = quantize(loaded[model], get_config(scheme, validate=False, **opts), Path(work) / f"q{i}", overwrite=True)
            except Exception as exc:  # a variant that fails is recorded with its error, not hidden
                res.skip(f"{model}: {label}", exc)
                continue
            wall = time.time() - t
            rec: dict[str, Any] = {"label": label, "model": model, "scheme": scheme, "options": opts, "runs_in": runs_in,
                                   "quantize_wall_s": round(wall, 1)}
            if q.report["task"] == "text-generation":
                ev = evaluate.compare_lm(q.out_dir, ref, ids=evaluate.tokenize(ref, EVAL_TEXT.read_text()), num_tokens=lm_tokens)
                ex = evaluate.compare_lm(q.out_dir, ref, ids=evaluate.tokenize(ref, text), num_tokens=ext_tokens)
                rec.update(eval_txt=ev.to_dict(), external=ex.to_dict())
                rows_lm.append([label, fmt(ev.ppl_increase_pct, 3), fmt(ex.ppl_increase_pct, 3), fmt(ev.mean_kl, 3),
                                fmt(wall, 3), runs_in])
            else:
                emb = evaluate.compare_embeddings(q.out_dir, ref, texts=[a for a, _ in pairs] + [c for _, c in pairs])
                rec.update(pairs=emb.to_dict())
                rows_enc.append([label, fmt(emb.mean_cosine, 5), fmt(emb.min_cosine, 5), fmt(wall, 3), runs_in])
            res.records.append(rec)
            print(f"[fp8] {model} {label}: {rec.get('eval_txt', rec.get('pairs'))}", flush=True)
    res.table(f"SmolLM2-135M, FP32-compute graphs: FP8 variants, perplexity increase vs FP32 on {lm_tokens} tokens of "
              f"eval.txt and {ext_tokens} tokens of external text",
              ["variant", "Δppl eval.txt %", "Δppl external %", "mean KL eval.txt", "quantize wall s", "runs in"], rows_lm,
              notes="Every linear but the LM head quantized, no accuracy budget (the build's mixing is in the budget "
                    "section). Static scales are calibrated on calibration.txt; dynamic ones are computed from each "
                    "token at run time. SmolLM2's 576-wide layers take 64x64 blocks, not the released checkpoints' 128.")
    res.table("MiniLM-L6, FP32-compute graphs: mean / min cosine to FP32 on sentence_pairs.tsv",
              ["variant", "cos mean", "cos min", "quantize wall s", "runs in"], rows_enc)
    res.write(args.out)


if __name__ == "__main__":
    main()
