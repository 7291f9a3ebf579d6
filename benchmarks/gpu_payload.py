"""Prepare what the GPU run needs, on the CPU host: weight-free graphs and the tiny test bundles.

- ``models/smollm2-<v>``: SmolLM2-135M's FP16-compute files as ``edgeq quantize --compute-dtype float16``
  makes them (fp16, int8-wo, int4-awq g128, fp8; the same candidates as bench_quality), without weights.
- ``models/llama1b-int4``: a Llama-3.2-1B-shaped model (random init from a transformers config), exported
  and quantized INT4 (block 128, FP16 compute) here, without weights (see ``llama1b_graph``). RTN rather
  than AWQ: on random weights AWQ's search has nothing to find, and the graph (DequantizeLinear blocks +
  offset correction) is the same.
- ``tests/``: tiny-llama bundles built for ``h100-fp8`` (fp16 v1, int8-wo v2) and tiny-qwen3 fp16, with
  canaries, for tests/gpu.

A weight-free graph keeps every initializer under 16 KiB in place and points the rest at an external-data
file that ``gpu_fill.fill`` writes on the device from a seed (see there). The payload is a few MB.

    python benchmarks/gpu_payload.py [--out .cache/gpu_payload] [--skip-1b]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import CACHE, setup_env  # noqa: E402
from benchmarks.gpu_fill import FILL_JSON  # noqa: E402

PAYLOAD = CACHE.parent / "gpu_payload"
SMOLLM2 = {"fp16": "fp16 (fp16-compute)", "int8-wo": "edgeq int8-wo fp16-compute",
           "int4-awq": "edgeq int4-awq g128 fp16-compute", "fp8": "edgeq fp8 fp16-compute"}
#: Llama-3.2-1B's shape (config.json of meta-llama/Llama-3.2-1B), weights random
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)
SIDE = (".json", ".txt", ".jinja", ".model")
MIN_BYTES = 16 * 1024


def strip_weights(src: Path, out_dir: Path, *, min_bytes: int = MIN_BYTES) -> dict:
    """Copy ``src`` (model.onnx + external data) to ``out_dir`` with large initializers external and unwritten."""
    import numpy as np
    import onnx
    from onnx import TensorProto as T

    kinds = {T.FLOAT: "float32", T.FLOAT16: "float16", T.BFLOAT16: "bfloat16", T.INT8: "bytes", T.UINT8: "bytes",
             T.INT4: "bytes", T.UINT4: "bytes", T.FLOAT8E4M3FN: "float8e4m3fn", T.FLOAT8E5M2: "bytes"}
    m = onnx.load(str(src))
    out_dir.mkdir(parents=True, exist_ok=True)
    data_file = "model.onnx.data"
    tensors, offset = [], 0
    for init in m.graph.initializer:
        kind = kinds.get(init.data_type)
        if kind is None or not init.HasField("raw_data") or len(init.raw_data) < min_bytes:
            continue  # small tensors, and integer ones (shapes, indices), keep their real values
        raw = init.raw_data
        entry = {"name": init.name, "kind": kind, "dims": list(init.dims), "offset": offset, "length": len(raw)}
        if kind in ("float32", "float16"):
            vals = np.frombuffer(raw, np.dtype(kind))[: 1 << 20].astype(np.float32)
            entry.update(mean=float(vals.mean()), std=float(vals.std()))
        elif kind == "bfloat16":
            vals = (np.frombuffer(raw, np.uint16)[: 1 << 20].astype(np.uint32) << 16).view(np.float32)
            entry.update(mean=float(vals.mean()), std=float(vals.std()))
        tensors.append(entry)
        init.ClearField("raw_data")
        init.data_location = T.EXTERNAL
        del init.external_data[:]
        for k, v in (("location", data_file), ("offset", str(offset)), ("length", str(len(raw)))):
            init.external_data.add(key=k, value=v)
        offset = (offset + len(raw) + 4095) // 4096 * 4096  # page-aligned, so ORT can map each tensor
    onnx.save(m, str(out_dir / "model.onnx"))
    spec = {"data_file": data_file, "total_bytes": offset, "tensors": tensors, "source": str(src),
            "min_bytes": min_bytes}
    (out_dir / FILL_JSON).write_text(json.dumps(spec, indent=1) + "\n")
    for f in src.parent.iterdir():
        if f.suffix in SIDE and f.name != FILL_JSON and not (out_dir / f.name).exists():
            shutil.copy2(f, out_dir / f.name)
    return spec


def smollm2_graphs(out: Path) -> None:
    from benchmarks import schemes

    for short, label in SMOLLM2.items():
        cand = next(c for c in schemes.REGISTRY["smollm2-135m"] if c.label == label)
        onnx_path, _ = schemes.produce("smollm2-135m", cand, fresh=False)
        spec = strip_weights(onnx_path, out / f"smollm2-{short}")
        print(f"smollm2-{short}: {len(spec['tensors'])} tensors, {spec['total_bytes'] / 1e6:.1f} MB to fill")


def replicate_layer(model: Any, src: int, total: int) -> None:
    """Grow a decoder graph to ``total`` layers by copying layer ``src`` (its last), rewired in sequence.

    A layer's nodes are those named ``layers.<src>`` / ``layers/<src>/``; a copy gets its own tensors and
    weights (renamed ``layers.<k>``, ``layers_<k>_``, ``past_key_values.<k>``, ``present.<k>``) and shares
    what the layer reads from outside it (rotary tables, the mask, constants, block indicators). Its hidden
    input is the previous layer's output; whatever read layer ``src``'s output reads the last copy's.
    """
    import copy
    import re

    g = model.graph
    mark = re.compile(rf"(layers[./_]){src}(?=[/._])|((?:past_key_values|present)\.){src}(?=\.)")
    mine = [n for n in g.node if mark.search(n.name)]
    made = {o for n in mine for o in n.output}
    hidden_in = next(i for n in mine for i in n.input
                     if i not in made and re.search(rf"layers\.{src - 1}/", i))
    hidden_out = next(o for o in made for n in g.node if not mark.search(n.name) and o in n.input)
    inits = {i.name: i for i in g.initializer}
    own_inits = {i for n in mine for i in n.input if i in inits and mark.search(i)}

    def rename(name: str, k: int) -> str:
        new = mark.sub(lambda m: (m.group(1) or m.group(2)) + str(k), name)
        return new if new != name else f"{name}__layer{k}"

    copies, prev_out = [], hidden_out
    for k in range(src + 1, total):
        table = {t: rename(t, k) for t in made | own_inits}
        table.update({f"past_key_values.{src}.key": f"past_key_values.{k}.key",
                      f"past_key_values.{src}.value": f"past_key_values.{k}.value", hidden_in: prev_out})
        for n in mine:
            c = copy.deepcopy(n)
            c.name = rename(n.name, k)
            c.input[:] = [table.get(i, i) for i in n.input]
            c.output[:] = [table.get(o, o) for o in n.output]
            copies.append(c)
        for name in own_inits:
            t = copy.deepcopy(inits[name])
            t.name = table[name]
            g.initializer.append(t)
        for vi, coll in ((g.input, g.input), (g.output, g.output)):
            for v in list(vi):
                if v.name in (f"past_key_values.{src}.key", f"past_key_values.{src}.value",
                              f"present.{src}.key", f"present.{src}.value"):
                    c = copy.deepcopy(v)
                    c.name = v.name.replace(f".{src}.", f".{k}.")
                    coll.append(c)
        prev_out = table[hidden_out]
    nodes, placed = [], False
    for n in g.node:
        if not placed and not mark.search(n.name) and hidden_out in n.input:
            nodes += copies
            placed = True
            n.input[:] = [prev_out if i == hidden_out else i for i in n.input]
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)


def llama1b_graph(out: Path, work: Path) -> None:
    """Llama-3.2-1B-shaped INT4 graph: a random-init 2-layer model of that width exported and quantized by
    edgeq (int4-rtn g128, FP16 compute; 2 layers because exporting 1.2B parameters on this 2-core host
    takes longer than the session has), then layer 1 copied to 16 layers, then made weight-free."""
    import onnx
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks.common import cached_export
    from edgeq.converters.quantize import get_config, quantize

    hf = work / "llama1b-2l-hf"
    if not (hf / "config.json").is_file():
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**{**LLAMA_1B, "num_hidden_layers": 2}, bos_token_id=1, eos_token_id=2))
        model.save_pretrained(hf)
        del model
        tok_src = cached_export("smollm2-135m")  # a tokenizer whose ids fit the vocabulary
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (tok_src / name).is_file():
                shutil.copy2(tok_src / name, hf / name)
    q = work / "llama1b-2l-int4"
    if not (q / "model.onnx").is_file():
        cfg = get_config("int4-rtn", block_size=128, compute_dtype="float16", validate=False)
        quantize(str(hf), cfg, q, overwrite=True)
    layers = LLAMA_1B["num_hidden_layers"]
    full = work / "llama1b-int4"
    full.mkdir(parents=True, exist_ok=True)
    m = onnx.load(str(q / "model.onnx"))
    replicate_layer(m, src=1, total=layers)
    onnx.save(m, str(full / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx_data", size_threshold=1024)
    del m
    for f in q.iterdir():
        if f.suffix in SIDE:
            shutil.copy2(f, full / f.name)
    for name, key in (("edgeq_model.json", "num_layers"), ("config.json", "num_hidden_layers")):
        d = json.loads((full / name).read_text())
        d[key] = layers
        if name == "edgeq_model.json":
            d["name"] = "llama-3.2-1b-shaped"
        (full / name).write_text(json.dumps(d, indent=1))
    spec = strip_weights(full / "model.onnx", out / "llama1b-int4")
    print(f"llama1b-int4: {len(spec['tensors'])} tensors, {spec['total_bytes'] / 1e6:.1f} MB to fill")


def test_bundles(out: Path) -> None:
    """tiny-llama fp16 (v1) and int8-wo (v2) bundles for h100-fp8, tiny-qwen3 fp16: what tests/gpu serve."""
    from edgeq.converters.build import build

    for model, precision, version in (("tiny-llama", "fp16", 1), ("tiny-llama", "int8-wo", 2), ("tiny-qwen3", "fp16", 1)):
        dest = out / f"{model}-{precision}-v{version}"
        if not (dest / "manifest.json").is_file():
            build(model, "h100-fp8", precision, dest, bundle_version=version, overwrite=True)
        print(f"bundle {dest.name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=PAYLOAD)
    p.add_argument("--skip-1b", action="store_true")
    p.add_argument("--only", choices=("tests", "smollm2", "1b"), default=None)
    a = p.parse_args()
    setup_env()
    if a.only in (None, "tests"):
        test_bundles(a.out / "tests")
    if a.only in (None, "smollm2"):
        smollm2_graphs(a.out / "models")
    if a.only in (None, "1b") and not a.skip_1b:
        llama1b_graph(a.out / "models", CACHE / "gpu")
    size = sum(f.stat().st_size for f in a.out.rglob("*") if f.is_file())
    print(f"payload {a.out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
