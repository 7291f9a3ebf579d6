"""Rewrite an FP32-compute ONNX graph (plain or QDQ) to FP16 compute, with FP32 islands where FP16 breaks.

What GPU engines run: activations, unquantized weights and the DequantizeLinear outputs (their scales) in
FP16, so a strongly typed TensorRT network computes in FP16 and the quantized GEMMs take FP16 inputs.
Kept in FP32, as Hugging Face does in its FP16 models:

- normalisation modules (RMSNorm / LayerNorm: ``x²`` overflows FP16 above 256), the rotary embedding
  (``position * inv_freq`` loses whole radians in FP16 past a few thousand positions) and MoE routers
  (``converters.moe.Router``: HF ranks experts on an FP32 softmax): every node whose module path has a
  component matching ``FP32_MODULES``;
- graph inputs and outputs, except the KV cache (``past_key_values.*`` / ``present.*``), which stays in the
  compute dtype so that its memory and bandwidth halve. Logits and embeddings leave the graph in FP32.

Float constants are converted with saturation (the FP32 attention-mask minimum becomes -65504, not -inf,
so fully masked rows stay finite). A weight-DQ scale below FP16's normal range would lose precision: such
DQs keep an FP32 scale and their output is cast (counted in the stats). Types come from ONNX shape
inference of the source graph; the result is checked by strict shape inference.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgeq.errors import QuantizationError

#: module path components whose nodes compute in FP32
FP32_MODULES = re.compile(r"(norm|layernorm|rotary_emb|rotary|router)$", re.IGNORECASE)
#: graph inputs/outputs that carry the compute dtype (the KV cache)
KV_PREFIXES = ("past_key_values.", "present.")
FP16_MAX = float(np.finfo(np.float16).max)
FP16_TINY = float(np.finfo(np.float16).tiny)  # smallest normal


@dataclass
class HalfStats:
    fp16_nodes: int = 0
    fp32_nodes: int = 0
    casts_inserted: int = 0
    initializers_converted: int = 0
    saturated_values: int = 0
    fp32_scale_dqs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_fp32_node(node_name: str) -> bool:
    """True when the node belongs to a module that must compute in FP32 (``/model/layers.0/input_layernorm/Pow``)."""
    parts = node_name.strip("/").split("/")[:-1]
    return any(FP32_MODULES.search(p) for p in parts)


def _to_half(arr: np.ndarray, stats: HalfStats) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float32)
    over = np.abs(a) > FP16_MAX
    stats.saturated_values += int(np.count_nonzero(over & np.isfinite(a)))
    return np.clip(a, -FP16_MAX, FP16_MAX, where=np.isfinite(a), out=a.copy()).astype(np.float16)


def _light(model: Any) -> Any:
    """The graph with its initializers as typed inputs: shape inference needs no weight bytes (and a model past
    protobuf's 2 GB, e.g. an unquantized 0.6B model in FP32, could not be inferred with them)."""
    from onnx import helper

    g = model.graph
    weights = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer]
    light = helper.make_graph(list(g.node), g.name, [*g.input, *weights], list(g.output))
    return helper.make_model(light, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _infer_types(model: Any) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(_light(model))
    g = inferred.graph
    # the light graph carries the initializers as inputs, so their types come with g.input
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
                elif a.name in ("value_float", "value_floats"):
                    types[node.output[0]] = onnx.TensorProto.FLOAT
    return types


def to_float16(model: Any) -> HalfStats:
    """Rewrite ``model`` (an onnx.ModelProto, FP32 compute) in place to FP16 compute. Returns the stats."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    stats = HalfStats()
    graph = model.graph
    if any(a.type in (a.GRAPH, a.GRAPHS) for n in graph.node for a in n.attribute):
        raise QuantizationError("cannot convert to float16: the graph has control-flow subgraphs (If/Loop)")
    types = _infer_types(model)
    missing = [o for n in graph.node for o in n.output if o and o not in types]
    if missing:
        raise QuantizationError(f"cannot convert to float16: no inferred type for {missing[:5]}")
    inits = {t.name: t for t in graph.initializer}
    is_float = {name for name, t in types.items() if t == FLOAT}

    # where each float tensor lives: True = FP16
    home: dict[str, bool] = {}
    for inp in graph.input:
        if inp.name in is_float:
            kv = inp.name.startswith(KV_PREFIXES)
            home[inp.name] = kv
            if kv:
                inp.type.tensor_type.elem_type = HALF

    half_inits: dict[str, str] = {}
    casts: dict[tuple[str, bool], str] = {}
    new_nodes: list[Any] = []

    def cast(name: str, half: bool) -> str:
        key = (name, half)
        if key not in casts:
            out = f"{name}__to_{'fp16' if half else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=HALF if half else FLOAT,
                                              name=f"{name}__Cast_{'fp16' if half else 'fp32'}"))
            casts[key] = out
            stats.casts_inserted += 1
        return casts[key]

    def half_init(name: str) -> str:
        if name not in half_inits:
            arr = numpy_helper.to_array(inits[name])
            new = f"{name}__fp16"
            graph.initializer.append(numpy_helper.from_array(_to_half(arr, stats), new))
            half_inits[name] = new
            stats.initializers_converted += 1
        return half_inits[name]

    # two-level scales (NVFP4): a DequantizeLinear whose output is another DequantizeLinear's scale keeps its FP32
    # tensor scale (often below FP16's normal range) and writes its output in FP16 (``output_dtype``), as ModelOpt's
    # NVFP4 graphs do
    scale_dqs = {n.input[1] for n in graph.node if n.op_type == "DequantizeLinear" and len(n.input) > 1}
    for node in graph.node:
        half = not is_fp32_node(node.name)
        if node.op_type == "DequantizeLinear" and half and node.output[0] in scale_dqs and node.input[1] in inits:
            node.attribute.append(helper.make_attribute("output_dtype", HALF))
            home[node.output[0]] = True
            stats.fp16_nodes += 1
            new_nodes.append(node)
            continue
        if node.op_type == "DequantizeLinear" and half and node.input[1] in inits:
            scale = numpy_helper.to_array(inits[node.input[1]])
            if scale.size and float(np.abs(scale).min()) < FP16_TINY:
                half = False  # FP16 would round this scale coarsely: keep FP32, cast the output
                stats.fp32_scale_dqs.append(node.name)
        stats.fp16_nodes += half
        stats.fp32_nodes += not half
        for i, name in enumerate(node.input):
            if not name or name not in is_float:
                continue
            if name in inits:
                if half:
                    node.input[i] = half_init(name)
            elif home.get(name, False) != half:
                node.input[i] = cast(name, half)
        if half:
            _retype_attributes(node, stats)
        for out in node.output:
            if out and types.get(out) == FLOAT:
                home[out] = half
        new_nodes.append(node)

    _fix_outputs(graph, home, new_nodes, cast, stats)
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {n for node in graph.node for n in node.input}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:
            del graph.initializer[i]
    del graph.value_info[:]
    try:
        onnx.shape_inference.infer_shapes(_light(model), strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError subclasses of its C++ errors
        raise QuantizationError(f"float16 conversion produced an inconsistent graph: {exc}") from exc
    return stats


def _retype_attributes(node: Any, stats: HalfStats) -> None:
    """FLOAT → FLOAT16 in the attributes of a node that now computes in FP16 (Cast.to, Constant values...)."""
    from onnx import TensorProto, helper, numpy_helper

    for a in node.attribute:
        if a.name in ("to", "dtype", "output_dtype") and a.type == a.INT and a.i == TensorProto.FLOAT:
            a.i = TensorProto.FLOAT16
        elif a.type == a.TENSOR and a.t.data_type == TensorProto.FLOAT:
            arr = _to_half(numpy_helper.to_array(a.t), stats)
            a.t.CopyFrom(numpy_helper.from_array(arr, a.t.name))
        elif node.op_type == "Constant" and a.name in ("value_float", "value_floats"):
            vals = np.atleast_1d(np.asarray(a.f if a.name == "value_float" else list(a.floats), np.float32))
            arr = _to_half(vals, stats).reshape(() if a.name == "value_float" else (-1,))
            node.attribute.remove(a)
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(arr)))
            return


def _fix_outputs(graph: Any, home: dict[str, bool], new_nodes: list[Any], cast: Any, stats: HalfStats) -> None:
    """KV outputs leave in FP16, every other float output in FP32: rename the producer's tensor and cast."""
    from onnx import TensorProto, helper

    for out in graph.output:
        if out.name not in home:
            continue
        want_half = out.name.startswith(KV_PREFIXES)
        if home[out.name] == want_half:
            if want_half:
                out.type.tensor_type.elem_type = TensorProto.FLOAT16
            continue
        inner = f"{out.name}__{'fp16' if home[out.name] else 'fp32'}"
        for node in new_nodes:
            node.input[:] = [inner if n == out.name else n for n in node.input]
            node.output[:] = [inner if n == out.name else n for n in node.output]
        new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=TensorProto.FLOAT16 if want_half else TensorProto.FLOAT,
                                          name=f"/output/{out.name}/Cast"))
        stats.casts_inserted += 1
        out.type.tensor_type.elem_type = TensorProto.FLOAT16 if want_half else TensorProto.FLOAT
