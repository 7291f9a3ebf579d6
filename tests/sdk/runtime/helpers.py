"""Test helpers: a small weight-only INT8 QDQ transform, fault injectors, and bundle building from exports."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

TOKENIZER_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
CONFIG_SIDE_FILES = ("config.json", "generation_config.json", "edgeq_model.json")


def qdq_int8_weights(src_dir: Path, out_dir: Path, *, scale_factor: dict[str, float] | None = None) -> list[str]:
    """Copy an export with every 2-D MatMul weight as int8 + per-column scale + DequantizeLinear.

    ``scale_factor`` multiplies named weights' scales (the drift fault: a quantized layer's scale x1.05).
    Returns the quantized weight names (graph order).
    """
    import onnx
    from onnx import helper, numpy_helper

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_SIDE_FILES + CONFIG_SIDE_FILES:
        if (src_dir / name).is_file():
            shutil.copy(src_dir / name, out_dir / name)
    model = onnx.load(str(src_dir / "model.onnx"))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    done: list[str] = []
    new_nodes = []
    for node in g.node:
        if node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            wname = node.input[1]
            if wname not in done:
                w = numpy_helper.to_array(inits[wname]).astype(np.float32)
                scale = np.maximum(np.abs(w).max(axis=0), 1e-8) / 127.0
                q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
                scale = (scale * (scale_factor or {}).get(wname, 1.0)).astype(np.float32)
                g.initializer.remove(inits[wname])
                g.initializer.extend([numpy_helper.from_array(q, wname + "_q"),
                                      numpy_helper.from_array(scale, wname + "_scale")])
                new_nodes.append(helper.make_node("DequantizeLinear", [wname + "_q", wname + "_scale"], [wname + "_dq"],
                                                  axis=1, name=wname + "_DQ"))
                done.append(wname)
            node.input[1] = wname + "_dq"
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    onnx.save(model, str(out_dir / "model.onnx"))
    return done


def bundle_files(onnx_dir: Path, health_dir: Path, health_rels: list[tuple[str, str]]) -> dict[str, tuple[Path, str]]:
    files: dict[str, tuple[Path, str]] = {"model/model.onnx": (onnx_dir / "model.onnx", "onnx")}
    for n in TOKENIZER_SIDE_FILES:
        if (onnx_dir / n).is_file():
            files["tokenizer/" + n] = (onnx_dir / n, "tokenizer")
    for n in CONFIG_SIDE_FILES:
        if (onnx_dir / n).is_file():
            files["tokenizer/" + n] = (onnx_dir / n, "model_config")
    for rel, role in health_rels:
        files[rel] = (health_dir / rel, role)
    return files


def make_bundle(fp_dir: Path, q_dir: Path, out: Path, *, name: str, version: int, task: str,
                signing_key: Any = None) -> Path:
    """A bundle of ``q_dir``'s ONNX with health data against ``fp_dir`` (ONNX run by ONNX Runtime)."""
    from edgeq.converters.bundle import BundleContents, write_bundle
    from edgeq.converters.health import build_health_data
    from edgeq.sdk.bundle.manifest import EngineInfo

    stage = out.parent / f".{out.name}-health"
    rels = build_health_data(task, fp_dir, q_dir, stage, threads=1)
    contents = BundleContents(model_name=name, bundle_version=version, task=task, target="cpu", precision="int8",
                              files=bundle_files(q_dir, stage, rels),
                              engines=(EngineInfo(flavour="onnx", onnx="model/model.onnx"),))
    path = write_bundle(contents, out, signing_key=signing_key)
    shutil.rmtree(stage, ignore_errors=True)
    return path
