"""Check edgeq's quantized HF checkpoints with loaders that need a GPU (run by hand on the H200; not in CI).

transformers' fine-grained FP8 loader (``quant_method: fp8``) refuses to run without a GPU, and its AWQ path needs
a GPU kernel package, so those checks cannot run on the CPU host. Two steps:

    # 1. here (CPU host, edgeq installed): write the checkpoints and the ONNX greedy record of each
    python benchmarks/gpu_fp8_loader_check.py prepare            # -> .cache/gpu_loader_payload (~0.4 GB)
    # 2. on the GPU machine (torch + transformers only; edgeq not needed): load each with transformers on CUDA
    python gpu_fp8_loader_check.py check PAYLOAD_DIR             # -> PAYLOAD_DIR/results.json

``check`` decodes the recorded prompts greedily with each checkpoint and compares the ids with the ids edgeq's
QDQ ONNX of the same weights decoded on the CPU host (``edgeq_greedy.json``), reporting per prompt the match, the
first differing step and, teacher-forced along the ONNX's sequence, the top-1 agreement and logit differences (the
record holds the ONNX's top-5 logits per step). Three ways:

1. transformers' own FP8Linear forward (its Triton kernels: activations quantized per token and block-width channel
   group, W8A8), against the record of the ONNX that quantizes activations the same way (``fp8-block``'s default);
2. the weights that loader put on the GPU, dequantized (codes x block scales) into FP32 linears whose inputs get
   the same per-group FP8 rounding in torch, against the same record;
3. those dequantized weights without activation rounding, against the record of the weight-only ONNX of the same
   weights (``edgeq_greedy_weight_only.json``; ``prepare`` checks that both ONNX share the checkpoint's bytes).

3 is the same arithmetic up to FP32 summation order and must match exactly. 1 and 2 cannot: a summation-order
difference flips an activation's FP8 rounding now and then, and on a 30-layer model that grows to logit
differences of the size of the quantization error itself. ``prepare`` measures that floor on the host between two
implementations of one arithmetic (edgeq's torch simulation vs ONNX Runtime, ``edgeq_host_noise_floor.json``), so
the GPU figures are read against it. The block is 128 where a model's sizes allow it, else 64 (SmolLM2's width 576;
tiny-llama's 64-wide k/v projections): transformers' activation quantizer takes whole blocks only. ``--out`` names
the results file.
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


WEIGHT_ONLY_RECORD = "edgeq_greedy_weight_only.json"
HOST_FLOOR = "edgeq_host_noise_floor.json"


def prepare(out: Path, only: list[str] | None) -> None:
    sys.path.insert(0, str(HERE.parent))
    import tempfile

    from edgeq.converters.hf_checkpoint.api import hf_config_for, quantize_to_hf
    from edgeq.converters.quantize import get_config

    out.mkdir(parents=True, exist_ok=True)
    for name, model, scheme, fmt, opts in CHECKPOINTS:
        if only and name not in only:
            continue
        t0 = time.time()
        hf = hf_config_for(fmt, new_tokens=24)
        res = quantize_to_hf(model, get_config(scheme, **opts), out / name, hf=hf, overwrite=True)
        if scheme == "fp8-block":
            (out / name / HOST_FLOOR).write_text(json.dumps(_host_floor(res), indent=1) + "\n")
            # the same weights with weight-only activations: the record a dequantized FP32 model must match exactly
            with tempfile.TemporaryDirectory() as tmp:
                wo = quantize_to_hf(model, get_config(scheme, **opts, activations="none"), Path(tmp) / "wo", hf=hf)
                same = (wo.out_dir / "model.safetensors").read_bytes() == (res.out_dir / "model.safetensors").read_bytes()
                assert same, "fp8-block's weights depend on its activation option"
                shutil.copy(wo.out_dir / "edgeq_greedy.json", out / name / WEIGHT_ONLY_RECORD)
        shutil.rmtree(res.onnx_dir)  # the GPU side needs the records, not the ONNX
        print(f"{name}: {res.hf.format} checkpoint in {time.time() - t0:.0f} s")
    shutil.copy(Path(__file__), out / Path(__file__).name)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"payload {out}: {size / 1e6:.0f} MB; copy it to the GPU machine and run `check` there")


def _host_floor(res) -> list[dict]:
    """Two implementations of the same arithmetic on this CPU: edgeq's torch simulation of the plans against the
    ONNX record (ONNX Runtime), teacher-forced. With dynamic FP8 activations, summation-order differences flip
    activation roundings and grow through the layers: this is the agreement a correct GPU loader can reach."""
    import torch

    from edgeq.converters.quantize.simulate import simulated

    record = json.loads((res.out_dir / "edgeq_greedy.json").read_text())
    model = res.quantized.loaded.model
    rows = []
    with simulated(model, res.quantized.plans), torch.no_grad():
        for row in record["prompts"]:
            seq = torch.tensor([row["prompt_ids"] + row["greedy_ids"][:-1]])
            rows.append({"text": row["text"], **_tf_stats(model(input_ids=seq, use_cache=False).logits[0].float(), row)})
    return rows


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


def _group_fp8(x, group: int):
    """Per token and ``group`` channels: max|x|/448 scales, E4M3 rounding (edgeq's ``fp8_dynamic_act``)."""
    import torch

    xg = x.float().reshape(-1, group)
    s = (xg.abs().amax(dim=-1, keepdim=True) / 448.0).clamp(min=1e-12)
    return ((xg / s).to(torch.float8_e4m3fn).float() * s).reshape(x.shape).to(x.dtype)


def _dequantized_fp32(model, act_group: int | None):
    """The loaded model with every FP8Linear replaced by an FP32 nn.Linear holding codes x block scales (and, when
    the record's ONNX quantized activations, the same per-group FP8 rounding of its input)."""
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
        if act_group:
            lin.register_forward_pre_hook(lambda _m, args, g=act_group: (_group_fp8(args[0], g),) + tuple(args[1:]))
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, lin)
    # ``model.float()`` is refused on a quantized model: cast what is left (embeddings, norms) tensor by tensor
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point() and t.dtype != torch.float32:
                t.data = t.data.float()
    model.config.torch_dtype = torch.float32
    return model


def _tf_stats(logits, row) -> dict:
    """Along the ONNX's own sequence (prompt + its greedy ids), given a model's logits over it: how often its top-1
    is the ONNX's token, the largest logit difference over the ONNX's top-5 ids, and at each step where the top-1
    differs, the ONNX's own margin there (its top-1 minus top-2 logit: a near tie that one rounding can flip)."""
    start = len(row["prompt_ids"]) - 1
    agree, worst, flips = 0, 0.0, []
    for t, top in enumerate(row["top_logits"]):
        lg = logits[start + t]
        worst = max(worst, max(abs(float(lg[i]) - v) for i, v in top))
        if int(lg.argmax()) == top[0][0]:
            agree += 1
        else:
            flips.append({"step": t, "onnx_margin": round(top[0][1] - top[1][1], 5)})
    return {"top1_agree": agree, "steps": len(row["top_logits"]), "max_abs_logit_diff_top5": round(worst, 5),
            "differing_steps": flips}


def _teacher_forced(model, row) -> dict:
    import torch

    ids = torch.tensor([row["prompt_ids"] + row["greedy_ids"][:-1]], device=model.device)
    with torch.no_grad():
        return _tf_stats(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float(), row)


def _compare(model, record) -> list[dict]:
    rows = []
    for row in record["prompts"]:
        got = _greedy(model, row["prompt_ids"], record["new_tokens"])
        first = next((i for i, (a, b) in enumerate(zip(got, row["greedy_ids"])) if a != b), None)
        entry = {"text": row["text"], "match": first is None, "first_difference": first}
        if row.get("top_logits"):
            entry["teacher_forced"] = _teacher_forced(model, row)
        rows.append(entry)
    return rows


def check(payload: Path, out_name: str = "results.json") -> int:
    import torch
    import transformers

    results = {"transformers": transformers.__version__, "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "checkpoints": {}}
    failed = 0
    for ckpt in sorted(p.parent for p in payload.glob("*/edgeq_greedy.json")):
        record = json.loads((ckpt / "edgeq_greedy.json").read_text())
        qc = json.loads((ckpt / "config.json").read_text())["quantization_config"]
        made = json.loads((ckpt / "edgeq_checkpoint.json").read_text())["config"]
        act_group = (qc.get("weight_block_size") or [None, None])[1] if made.get("activations") == "dynamic" else None
        entry: dict = {"quant_method": qc.get("quant_method"), "weight_block_size": qc.get("weight_block_size"),
                       "record_activations": made.get("activations", "none")}
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, device_map="cuda", dtype=torch.float32)
            entry["linear_class"] = type(model.get_submodule("model.layers.0.mlp.down_proj")).__name__
            try:
                entry["prompts"] = _compare(model, record)
                entry["all_match"] = all(r["match"] for r in entry["prompts"])
            except Exception as exc:  # the loader's kernel refusing the model is a result, not a crash
                entry["forward_error"] = f"{type(exc).__name__}: {exc}"
            dq = _dequantized_fp32(model, act_group)
            entry["loaded_weights_fp32"] = _compare(dq, record)
            entry["loaded_weights_match"] = all(r["match"] for r in entry["loaded_weights_fp32"])
            del model, dq
            if (ckpt / WEIGHT_ONLY_RECORD).is_file():  # the same weights, no activation rounding: must match exactly
                wo_record = json.loads((ckpt / WEIGHT_ONLY_RECORD).read_text())
                model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, device_map="cuda", dtype=torch.float32)
                dq = _dequantized_fp32(model, None)
                entry["loaded_weights_fp32_weight_only"] = _compare(dq, wo_record)
                entry["weight_only_match"] = all(r["match"] for r in entry["loaded_weights_fp32_weight_only"])
                failed += not entry["weight_only_match"]
                del model, dq
            else:
                failed += not entry["loaded_weights_match"]
            if (ckpt / HOST_FLOOR).is_file():
                entry["host_noise_floor"] = json.loads((ckpt / HOST_FLOOR).read_text())
            torch.cuda.empty_cache()
        except Exception as exc:  # a loader that cannot load is the result to report, not a crash
            entry["error"] = f"{type(exc).__name__}: {exc}"
            failed += 1
        results["checkpoints"][ckpt.name] = entry
        print(ckpt.name, json.dumps(entry))
    (payload / out_name).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write the checkpoints + ONNX greedy records (CPU host)")
    p.add_argument("--out", type=Path, default=HERE.parent / ".cache" / "gpu_loader_payload")
    p.add_argument("--only", nargs="*", help="checkpoint names to write (default: all)")
    c = sub.add_parser("check", help="load each checkpoint with transformers on CUDA and compare (GPU machine)")
    c.add_argument("payload", type=Path)
    c.add_argument("--out", default="results.json", help="results file name inside PAYLOAD")
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.out, args.only)
        return 0
    return check(args.payload, args.out)


if __name__ == "__main__":
    sys.exit(main())
