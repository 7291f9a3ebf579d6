"""Size per scheme: ONNX bytes (with external data), ONNX-Runtime bundle bytes, and TensorRT-RTX engine
bytes (from this run's build.json when present), against FP16; embedding and LM-head share broken out.

FP16 reference = the FP32 export with every float32 initializer counted at 2 bytes (what an FP16 ONNX of the
same graph holds); all other sizes are the files on disk. Reuses the models bench_quality left in the cache
(producing any that are missing).

    python benchmarks/bench_size.py [--quick]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import CACHE, RESULTS, Result, arg_parser, cached_export, fmt, onnx_bytes, setup_env  # noqa: E402

_PASS_THROUGH = {"DequantizeLinear", "Transpose", "Reshape", "Cast", "Identity", "Mul", "Squeeze", "Unsqueeze"}


def weight_breakdown(onnx_path: Path) -> dict[str, int]:
    """Initializer bytes split into embedding table(s), LM head, and the rest; plus the FP16-equivalent total.

    The embedding is what a Gather reads; the head is what feeds the MatMul/Gemm producing a graph output,
    traced back through DequantizeLinear/Transpose/… to its initializers (scales and zero points included).
    """
    import onnx

    from benchmarks.lm_speed import _init_bytes

    m = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name: i for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    outs = {o.name for o in m.graph.output}

    def upstream(name: str, seen: set[str]) -> set[str]:
        if name in inits:
            return {name}
        node = producer.get(name)
        if node is None or node.op_type not in _PASS_THROUGH or name in seen:
            return set()
        seen.add(name)
        found: set[str] = set()
        for i in node.input:
            found |= upstream(i, seen)
        return found

    emb: set[str] = set()
    head: set[str] = set()
    for n in m.graph.node:
        if n.op_type == "Gather" and n.input:
            emb |= upstream(n.input[0], set())
        if n.op_type in ("MatMul", "Gemm") and set(n.output) & outs and len(n.input) > 1:
            head |= upstream(n.input[1], set())
    sizes = {k: _init_bytes(v) for k, v in inits.items()}
    fp16 = sum(s // 2 if inits[k].data_type == onnx.TensorProto.FLOAT else s for k, s in sizes.items())
    return {"total": sum(sizes.values()), "embedding": sum(sizes[k] for k in emb), "head": sum(sizes[k] for k in head),
            "embedding_and_head": sum(sizes[k] for k in emb | head), "tied": bool(emb & head), "fp16_equivalent": fp16}


def bundle_bytes(model: str, label: str, fp_dir: Path, q_dir: Path) -> int | None:
    from benchmarks.edgeq_adapter import onnx_bundle

    out = CACHE / "size-bundles" / model / label.replace(" ", "_")
    onnx_bundle(fp_dir, q_dir, out, precision="size")
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


def main() -> None:
    setup_env()
    args = arg_parser(__doc__).parse_args()
    res = Result("size", args.quick)
    from benchmarks import schemes

    engines = _engine_sizes()
    for model, cands in schemes.REGISTRY.items():
        fp_dir = cached_export(model)
        ref = weight_breakdown(fp_dir / "model.onnx")
        fp16 = ref["fp16_equivalent"] + (onnx_bytes(fp_dir / "model.onnx") - ref["total"])  # graph bytes as is
        rows = []
        for cand in cands:
            if not cand.runs_in("quick" if args.quick else "full"):
                continue
            try:
                path, _ = schemes.produce(model, cand, fresh=False)
                wb = weight_breakdown(path)
                size = onnx_bytes(path)
                bb = bundle_bytes(model, cand.label, fp_dir, path.parent)
            except Exception as exc:
                res.skip(f"size {model} {cand.label}", exc)
                continue
            eng = engines.get((model, cand.label))
            rec = {"model": model, "label": cand.label, "onnx_bytes": size, "bundle_bytes": bb, "fp16_bytes": fp16,
                   "weights": wb, "engine": eng}
            res.records.append(rec)
            rows.append([cand.label, round(size / 1e6, 1), fmt(size / fp16, 3), round(bb / 1e6, 1) if bb else None,
                         round(eng["engine_bytes"] / 1e6, 1) if eng else None, fmt(eng["engine_bytes"] / fp16, 3) if eng else None,
                         fmt(100 * wb["embedding"] / max(wb["total"], 1), 3), fmt(100 * wb["head"] / max(wb["total"], 1), 3),
                         "yes" if wb["tied"] else "no", fmt(100 * wb["embedding_and_head"] / max(wb["total"], 1), 3)])
        res.table(f"{model}: bytes per scheme (FP16 reference {fp16 / 1e6:.1f} MB)",
                  ["scheme", "ONNX MB", "ONNX / FP16", "bundle MB (ORT, no engine)", "engine MB", "engine / FP16",
                   "embedding % of weights", "LM head % of weights", "tied", "embedding ∪ head %"], rows,
                  notes="Engines: TensorRT-RTX engines built by bench_build in its latest run (SmolLM2 only); '—' where "
                        "none was built for that scheme. The LM head is kept in float by every scheme and peer here; "
                        "a tied head is the embedding table itself (same bytes, counted once in the union column).")
        lm = [r for r in res.records if r["model"] == model]
        if model == "smollm2-135m" and lm:
            res.chart("size_smollm2.png", "SmolLM2-135M ONNX size relative to FP16", "× FP16",
                      [r["label"] for r in lm], {"ONNX / FP16": [r["onnx_bytes"] / r["fp16_bytes"] for r in lm]}, hline=1.0,
                      hline_label="FP16")
    res.write(args.out)


def _engine_sizes() -> dict[tuple[str, str], dict[str, Any]]:
    """(model, candidate label) → engine record, from build.json's edgeq engine stages."""
    path = RESULTS / "build.json"
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    label = {"int4-awq": "edgeq int4-awq g128", "fp8": "edgeq fp8", "int8-wo": "edgeq int8-wo", "fp32": "fp32",
             "int4-rtn": "edgeq int4-rtn g128"}
    out = {}
    for r in doc.get("records", []):
        stage = r.get("stage", "")
        if stage.startswith("edgeq engine build ") and r.get("engine_bytes"):
            scheme = stage.split()[3]
            if scheme in label:
                out[(r["model"], label[scheme])] = {"engine_bytes": r["engine_bytes"], "target": stage.split("→")[-1].strip(),
                                                    "build_run": doc.get("machine", {}).get("date")}
    return out


if __name__ == "__main__":
    main()
