"""Test helpers: bundles built the way ``edgeq build`` builds them (edgeq's quantizer, the host health
producer, the bundle writer), and a broken-quantizer fault (weight scales multiplied after the fact)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

TOKENIZER_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
CONFIG_SIDE_FILES = ("config.json", "generation_config.json", "edgeq_model.json")


def quantize_export(fp_dir: Path, out_dir: Path, scheme: str = "int8-wo", **overrides: Any) -> Path:
    """Quantize the model behind an edgeq export with edgeq's own quantizer (as ``edgeq build`` does).

    The quantizer validates its output against the FP reference and raises past the scheme's tolerance.
    Returns the quantized model directory (model.onnx, side files, quant_config.json).
    """
    from edgeq.converters.quantize import get_config, quantize

    return Path(quantize(fp_dir, get_config(scheme, **overrides), out_dir).out_dir)


def qdq_int8_weights(src_dir: Path, out_dir: Path) -> Path:
    """INT8 weight-only QDQ of an export by edgeq's quantizer (the name the sample tests import)."""
    return quantize_export(src_dir, out_dir, "int8-wo")


def scale_weights(q_dir: Path, out_dir: Path, factor: float, layers: list[int] | None = None) -> list[str]:
    """Copy a quantized model with the scales of its weight DequantizeLinear nodes multiplied by ``factor``.

    A broken quantizer (or drifted weights): ``layers`` picks weight DQs by graph order (None: all).
    The quant_config.json is copied unchanged, so the copy still says what scheme it claims to be.
    Returns the names of the scale initializers changed.
    """
    import onnx
    from onnx import numpy_helper

    shutil.copytree(q_dir, out_dir)
    model = onnx.load(str(q_dir / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    weight_dqs = [n for n in model.graph.node
                  if n.op_type == "DequantizeLinear" and n.input[0] in inits and n.input[1] in inits]
    changed = []
    for i, node in enumerate(weight_dqs):
        if layers is None or i in layers:
            t = inits[node.input[1]]
            a = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array((a * np.asarray(factor, a.dtype)).astype(a.dtype), t.name))
            changed.append(t.name)
    if not changed:
        raise ValueError(f"no weight DequantizeLinear selected in {q_dir} (layers={layers})")
    onnx.save(model, str(out_dir / "model.onnx"))
    return changed


def precision_of(q_dir: Path) -> str:
    """What a model directory really is: the quantizer's scheme, or fp32 for an unquantized export."""
    p = q_dir / "quant_config.json"
    return str(json.loads(p.read_text())["scheme"]) if p.is_file() else "fp32"


def bundle_files(onnx_dir: Path, health_dir: Path, health_rels: list[tuple[str, str]]) -> dict[str, tuple[Path, str]]:
    files: dict[str, tuple[Path, str]] = {}
    for p in sorted(onnx_dir.glob("model.onnx*")):  # external weights beside the graph, as edgeq build ships them
        files[f"model/{p.name}"] = (p, "onnx" if p.name == "model.onnx" else "onnx_data")
    for n in TOKENIZER_SIDE_FILES:
        if (onnx_dir / n).is_file():
            files["tokenizer/" + n] = (onnx_dir / n, "tokenizer")
    for n in CONFIG_SIDE_FILES:
        if (onnx_dir / n).is_file():
            files["tokenizer/" + n] = (onnx_dir / n, "model_config")
    for rel, role in health_rels:
        files[rel] = (health_dir / rel, role)
    return files


def make_bundles(fp_dir: Path, q_dir: Path, root: Path, *, name: str, versions: tuple[int, ...], task: str,
                 signing_key: Any = None) -> dict[int, Path]:
    """Bundles ``root/v<N>`` of ``q_dir``'s ONNX with health data against ``fp_dir`` (ONNX run by ONNX Runtime),
    one per version; the health data is computed once (it depends on the model, not on the version).

    The manifest's precision is what ``q_dir`` is (``precision_of``): an FP export bundled against
    itself is labelled fp32, and its canaries can only show that the runtime reproduces the reference.
    """
    from edgeq.converters.bundle import BundleContents, write_bundle
    from edgeq.converters.health import build_health_data
    from edgeq.sdk.bundle.manifest import EngineInfo

    stage = root / f".{name}-health"
    rels = build_health_data(task, fp_dir, q_dir, stage, threads=1)
    precision = precision_of(q_dir)
    out = {}
    for v in versions:
        contents = BundleContents(model_name=name, bundle_version=v, task=task, target="cpu", precision=precision,
                                  files=bundle_files(q_dir, stage, rels),
                                  engines=(EngineInfo(flavour="onnx", onnx="model/model.onnx", precision=precision),))
        out[v] = write_bundle(contents, root / f"v{v}", signing_key=signing_key)
    shutil.rmtree(stage, ignore_errors=True)
    return out


def make_bundle(fp_dir: Path, q_dir: Path, out: Path, *, name: str, version: int, task: str,
                signing_key: Any = None) -> Path:
    """One bundle at ``out`` (see ``make_bundles``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    built = make_bundles(fp_dir, q_dir, out.parent / f".{out.name}-build", name=name, versions=(version,), task=task,
                         signing_key=signing_key)
    built[version].rename(out)
    shutil.rmtree(out.parent / f".{out.name}-build", ignore_errors=True)
    return out
