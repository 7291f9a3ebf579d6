"""NVFP4 quality beside INT4-AWQ and FP8, measured through edgeq's torch simulation of each QDQ graph.

ONNX Runtime CPU has no DequantizeLinear(23) kernel for FLOAT4E2M1 (onnxruntime 1.32: NOT_IMPLEMENTED) and no
TensorRT engine runs on this host, so every row here, the FP32 reference included, is the torch model with the
scheme's plans applied as ``edgeq.converters.quantize.simulate`` applies them: the dequantized weights and the
activation fake-quantization the graph computes (FP32 compute). tests/converters/quantize/test_nvfp4.py checks
that the simulation equals the ONNX graph run by onnx's reference evaluator. bench_quality.py measures the other
schemes through ONNX Runtime on the same text; its numbers differ from these by ORT's int4/FP8 kernels.

SmolLM2-135M: perplexity, mean KL and top-1 agreement vs FP32 on the first 2048 tokens of eval.txt (one pass).
MiniLM-L6: cosine to FP32 and pair-score Spearman on benchmarks/data/sentence_pairs.tsv.

    python benchmarks/bench_nvfp4.py [--quick]
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DATA, EVAL_TEXT, Result, arg_parser, cached_export, fmt, setup_env  # noqa: E402

#: (label, scheme, options, what it is)
CANDIDATES = (
    ("edgeq fp8", "fp8", {}, "E4M3 W8A8, per-channel weights, static per-tensor activations"),
    ("edgeq int4-awq g64", "int4-awq", {"block_size": 64}, "INT4 AWQ asymmetric, block 64"),
    ("edgeq int4-awq g128", "int4-awq", {"block_size": 128}, "INT4 AWQ asymmetric, block 128 requested"),
    ("edgeq nvfp4-wo", "nvfp4-wo", {}, "NVFP4 W4A16: E2M1 weights, E4M3 scale per 16, FP32 scale per tensor"),
    ("edgeq nvfp4", "nvfp4", {}, "NVFP4 W4A4: nvfp4-wo weights + activations per 16-block (dynamic), static tensor scale"),
)
#: stored bits per quantized weight, scales included (the handlers' weight_bits)
_SIZE_NOTE = "bits/w: the scheme handler's stored bits per quantized weight (scales and offsets included)."


def _plans(loaded, scheme: str, opts: dict, work: Path):
    from edgeq.converters.quantize import get_config, handler_named, quantize

    cfg = get_config(scheme, validate=False, **opts)
    t = time.time()
    res = quantize(loaded, cfg, work / scheme.replace("/", "_"), overwrite=True)
    return res.loaded, res.plans, time.time() - t, handler_named(scheme).weight_bits(cfg)


def run_lm(res: Result, quick: bool, work: Path) -> None:
    import numpy as np
    import torch

    from benchmarks import lm_eval
    from edgeq.converters.quantize.simulate import simulated
    from edgeq.converters.sources import load_model

    model = "smollm2-135m"
    n_tokens = 256 if quick else 2048
    ids = lm_eval.eval_ids(cached_export(model), EVAL_TEXT, n_tokens)
    loaded = load_model(model)

    def logits(m) -> np.ndarray:
        with torch.no_grad():
            return m(input_ids=torch.from_numpy(ids), use_cache=False).logits[0].float().numpy()

    ref = lm_eval.LmReference.from_logits(ids, logits(loaded.model))
    rows = []
    for label, scheme, opts, settings in CANDIDATES:
        try:
            qm, plans, seconds, bits = _plans(loaded, scheme, opts, work)
            with simulated(qm.model, plans):
                m = lm_eval.lm_metrics(ref, logits(qm.model))
        except Exception as exc:
            res.skip(f"{model} {label}", exc)
            continue
        finally:
            gc.collect()
        res.records.append({"model": model, "label": label, "scheme": scheme, "options": opts, "settings": settings,
                            "eval_tokens": n_tokens, "quantize_s": round(seconds, 1), "weight_bits": bits,
                            "layers": len(plans), "path": "torch simulation", **m})
        rows.append([label, round(m["ppl"], 3), round(m["ppl_delta_pct"], 2), round(m["kl"], 4), round(m["top1"], 3),
                     bits, fmt(seconds, 3), settings])
        print(f"[nvfp4] {label}: ppl {m['ppl']:.3f} ({m['ppl_delta_pct']:+.2f}%) kl {m['kl']:.4f} top1 {m['top1']:.3f}")
    res.table(f"SmolLM2-135M on {n_tokens} tokens of eval.txt, torch simulation (FP32 reference ppl {ref.ppl:.3f})",
              ["scheme", "ppl", "Δppl %", "mean KL", "top-1 agree", "bits/w", "quantize s", "settings"], rows,
              notes="Every row is the torch model with the scheme's plans simulated (ORT CPU cannot run FP4 "
                    "DequantizeLinear). The offline SmolLM2 comes from a GGUF Q4_1 file, which flatters asymmetric "
                    "INT4 (see the quality section); NVFP4's symmetric E2M1 grid gets no such help. " + _SIZE_NOTE)


def run_encoder(res: Result, quick: bool, work: Path) -> None:
    import numpy as np
    import torch

    from benchmarks import lm_eval
    from edgeq.converters.quantize.simulate import simulated
    from edgeq.converters.sources import load_model
    from edgeq.sdk.bundle.graph_io import pool

    model = "minilm-l6"
    pairs = lm_eval.load_pairs(DATA / "sentence_pairs.tsv")[: 16 if quick else None]
    texts = [a for a, _ in pairs] + [b for _, b in pairs]
    feeds = lm_eval.encode_batch(lm_eval.tokenizer(cached_export(model)), texts)
    loaded = load_model(model)

    def embed(m) -> np.ndarray:
        with torch.no_grad():
            hidden = m(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.float().numpy()
        return pool(hidden, feeds["attention_mask"], "mean", normalize=True)

    ref = embed(loaded.model)
    rows = []
    for label, scheme, opts, settings in CANDIDATES:
        try:
            qm, plans, seconds, bits = _plans(loaded, scheme, opts, work)
            with simulated(qm.model, plans):
                m = lm_eval.embedding_metrics(ref, embed(qm.model), len(pairs))
        except Exception as exc:
            res.skip(f"{model} {label}", exc)
            continue
        res.records.append({"model": model, "label": label, "scheme": scheme, "options": opts, "settings": settings,
                            "sentences": len(texts), "quantize_s": round(seconds, 1), "weight_bits": bits,
                            "layers": len(plans), "path": "torch simulation", **m})
        rows.append([label, fmt(m["cos_mean"], 5), fmt(m["cos_min"], 5), fmt(m["pair_spearman"], 4), bits,
                     fmt(seconds, 3), settings])
        print(f"[nvfp4] minilm {label}: cos mean {m['cos_mean']:.5f} min {m['cos_min']:.5f}")
    res.table(f"MiniLM-L6: {len(texts)} sentences ({len(pairs)} pairs), cosine to FP32, torch simulation",
              ["scheme", "cos mean", "cos min", "pair Spearman", "bits/w", "quantize s", "settings"], rows,
              notes="Mean pooling + L2 norm, as bench_quality; every row simulated in torch. " + _SIZE_NOTE)


def main() -> None:
    setup_env()
    args = arg_parser(__doc__).parse_args()
    res = Result("nvfp4", args.quick)
    res.notes.append("All rows: torch simulation of the emitted QDQ graph's arithmetic (FP32 compute). ONNX Runtime "
                     "CPU cannot execute FLOAT4E2M1 DequantizeLinear and no engine runs on this host.")
    with tempfile.TemporaryDirectory(prefix="edgeq-nvfp4-") as work:
        run_lm(res, args.quick, Path(work))
        run_encoder(res, args.quick, Path(work))
    res.write(args.out)


if __name__ == "__main__":
    main()
