"""Check edgeq's quantized HF checkpoints with loaders that need a GPU (run by hand on the H200; not in CI).

transformers' fine-grained FP8 loader (``quant_method: fp8``) refuses to run without a GPU, and its AWQ path needs
a GPU kernel package, so those checks cannot run on the CPU host. Two steps:

    # 1. here (CPU host, edgeq installed): write the checkpoints and the ONNX greedy record of each
    python benchmarks/gpu_fp8_loader_check.py prepare            # -> .cache/gpu_loader_payload (~0.4 GB)
    # 2. on the GPU machine (torch + transformers only; edgeq not needed): load each with transformers on CUDA
    python gpu_fp8_loader_check.py check PAYLOAD_DIR             # -> PAYLOAD_DIR/results.json

``check`` decodes the recorded prompts greedily with each checkpoint and compares the ids with the ids edgeq's
QDQ ONNX of the same weights decoded on the CPU host (``edgeq_greedy.json``), reporting per prompt the match
and the first differing step, twice: through transformers' own FP8Linear forward, and through the weights that
loader put on the GPU, dequantized (codes x block scales) into FP32 linears. The fine-grained FP8 kernels
quantize activations per 128-channel token group (W8A8) and compute in BF16 while the ONNX record is weight-only
FP32, so a late divergence in the first is activation rounding; the second is the same arithmetic as the record,
and must match exactly. transformers' activation quantizer asserts that the input width is a multiple of the
block (128); SmolLM2's 576 is not, so its FP8Linear forward cannot run, while its loaded weights still can be
checked.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: (name, model, scheme, --format, quantize options)
CHECKPOINTS = (
    ("tiny-llama-fp8-block", "tiny-llama", "fp8-block", "hf-fp8", {}),
    ("smollm2-fp8-block", "smollm2-135m", "fp8-block", "hf-fp8", {}),
    ("smollm2-ct-fp8", "smollm2-135m", "fp8", "hf", {}),
    ("smollm2-awq", "smollm2-135m", "int4-awq", "hf-awq", {"block_size": 64}),
)


def prepare(out: Path, only: list[str] | None) -> None:
    sys.path.insert(0, str(HERE.parent))
    from edgeq.converters.hf_checkpoint.api import hf_config_for, quantize_to_hf
    from edgeq.converters.quantize import get_config

    out.mkdir(parents=True, exist_ok=True)
    for name, model, scheme, fmt, opts in CHECKPOINTS:
        if only and name not in only:
            continue
        t0 = time.time()
        res = quantize_to_hf(model, get_config(scheme, **opts), out / name, hf=hf_config_for(fmt, new_tokens=24),
                             overwrite=True)
        shutil.rmtree(res.onnx_dir)  # the GPU side needs the record, not the ONNX
        print(f"{name}: {res.hf.format} checkpoint in {time.time() - t0:.0f} s")
    shutil.copy(Path(__file__), out / Path(__file__).name)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"payload {out}: {size / 1e6:.0f} MB; copy it to the GPU machine and run `check` there")


def _greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    import torch

    ids = torch.tensor([prompt_ids], device=model.device)
    out = []
    with torch.no_grad():
        for _ in range(n):  # full recompute per step, argmax, no stopping rule: the ONNX record's decoding
            nxt = int(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float().argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]], device=model.device)], dim=1)
    return out


def _dequantized_fp32(model):
    """The loaded model with every FP8Linear replaced by an FP32 nn.Linear holding codes x block scales."""
    import torch

    for name, mod in list(model.named_modules()):
        if type(mod).__name__ != "FP8Linear":
            continue
        w = mod.weight.float()
        b0, b1 = mod.block_size
        s = mod.weight_scale_inv.float()
        full = s.repeat_interleave(b0, 0)[: w.shape[0]].repeat_interleave(b1, 1)[:, : w.shape[1]]
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=mod.bias is not None, device=w.device, dtype=torch.float32)
        with torch.no_grad():
            lin.weight.copy_(w * full)
            if mod.bias is not None:
                lin.bias.copy_(mod.bias.float())
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, lin)
    # ``model.float()`` is refused on a quantized model: cast what is left (embeddings, norms) tensor by tensor
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point() and t.dtype != torch.float32:
                t.data = t.data.float()
    model.config.torch_dtype = torch.float32
    return model


def _compare(model, record) -> list[dict]:
    rows = []
    for row in record["prompts"]:
        got = _greedy(model, row["prompt_ids"], record["new_tokens"])
        first = next((i for i, (a, b) in enumerate(zip(got, row["greedy_ids"])) if a != b), None)
        rows.append({"text": row["text"], "match": first is None, "first_difference": first})
    return rows


def check(payload: Path) -> int:
    import torch
    import transformers

    results = {"transformers": transformers.__version__, "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "checkpoints": {}}
    failed = 0
    for ckpt in sorted(p.parent for p in payload.glob("*/edgeq_greedy.json")):
        record = json.loads((ckpt / "edgeq_greedy.json").read_text())
        qc = json.loads((ckpt / "config.json").read_text())["quantization_config"]
        entry: dict = {"quant_method": qc.get("quant_method")}
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, device_map="cuda")
            entry["linear_class"] = type(model.get_submodule("model.layers.0.mlp.down_proj")).__name__
            try:
                entry["prompts"] = _compare(model, record)
                entry["all_match"] = all(r["match"] for r in entry["prompts"])
            except Exception as exc:  # the loader's kernel refusing the model is a result, not a crash
                entry["forward_error"] = f"{type(exc).__name__}: {exc}"
            dq = _dequantized_fp32(model)
            entry["loaded_weights_fp32"] = _compare(dq, record)
            entry["loaded_weights_match"] = all(r["match"] for r in entry["loaded_weights_fp32"])
            failed += not entry["loaded_weights_match"]
            del model, dq
            torch.cuda.empty_cache()
        except Exception as exc:  # a loader that cannot load is the result to report, not a crash
            entry["error"] = f"{type(exc).__name__}: {exc}"
            failed += 1
        results["checkpoints"][ckpt.name] = entry
        print(ckpt.name, json.dumps(entry))
    (payload / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write the checkpoints + ONNX greedy records (CPU host)")
    p.add_argument("--out", type=Path, default=HERE.parent / ".cache" / "gpu_loader_payload")
    p.add_argument("--only", nargs="*", help="checkpoint names to write (default: all)")
    c = sub.add_parser("check", help="load each checkpoint with transformers on CUDA and compare (GPU machine)")
    c.add_argument("payload", type=Path)
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.out, args.only)
        return 0
    return check(args.payload)


if __name__ == "__main__":
    sys.exit(main())
