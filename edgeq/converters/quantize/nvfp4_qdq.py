"""NVFP4 in ONNX, in the form TensorRT's ONNX parser takes (and ModelOpt exports): two DequantizeLinear per weight.

Weight ``[in, out]`` (``qdq.py``'s layout, blocks of 16 along the input axis 0)::

    w_f4 (FLOAT4E2M1) ─┐
    w_s8 (E4M3, [in/16, out]) ─ DequantizeLinear(x_scale = s2, FP32 scalar) ─ block scales ─ DequantizeLinear(axis 0,
                                                                                            block_size 16) ─ MatMul

W4A4 adds TensorRT's dynamic activation quantizer in front of the MatMul: ``trt::TRT_FP4DynamicQuantize(x, s2)``
(axis -1, block 16, E4M3 scales: TensorRT's IDynamicQuantizeLayer; standard ONNX has no dynamic FP4 block
quantizer) followed by the same two DequantizeLinear. It is the one non-standard op edgeq writes, and only for
``nvfp4``; ``nvfp4-wo`` files are standard opset-23 ONNX. FP4 needs opset 23 (FLOAT4E2M1 in DequantizeLinear).
FP4 tensors are packed two per byte, the first element in the low nibble (the ONNX and TensorRT layout);
``onnx.numpy_helper`` packs them from ml_dtypes' float4_e2m1fn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeq.converters.quantize.numerics import LinearPlan

OPSET = 23
TRT_DOMAIN = "trt"
DYNQ_OP = "TRT_FP4DynamicQuantize"


def pack_e2m1(values: np.ndarray) -> np.ndarray:
    """Float values already on the E2M1 grid -> ml_dtypes float4_e2m1fn (what numpy_helper packs for ONNX)."""
    import ml_dtypes

    return np.asarray(values, dtype=np.float32).astype(ml_dtypes.float4_e2m1fn)


def weight_nodes(plan: LinearPlan, base: str, path: str) -> tuple[list[Any], list[Any], str]:
    """(nodes, initializers, output name) of a planned weight's two DequantizeLinear, transposed to ``[in, out]``."""
    import ml_dtypes
    import torch
    from onnx import helper, numpy_helper

    w = pack_e2m1(plan.q.T.contiguous().numpy())
    s8 = plan.scale.T.contiguous().view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
    s2 = np.array(plan.global_scale, dtype=np.float32)
    inits = [numpy_helper.from_array(w, f"{base}_wq"), numpy_helper.from_array(s8, f"{base}_wscale_e4m3"),
             numpy_helper.from_array(s2, f"{base}_wscale_global")]
    prefix = f"/{path.replace('.', '/')}"
    nodes = [helper.make_node("DequantizeLinear", [f"{base}_wscale_e4m3", f"{base}_wscale_global"], [f"{base}_wscale"],
                              name=f"{prefix}/weight_scale_DequantizeLinear"),
             helper.make_node("DequantizeLinear", [f"{base}_wq", f"{base}_wscale"], [f"{base}_w_dq"],
                              name=f"{prefix}/weight_DequantizeLinear", axis=0, block_size=16)]
    return nodes, inits, f"{base}_w_dq"


def insert_dynamic_quant(model: Any, acts: list[tuple[str, float, int]], compute: int) -> int:
    """Put ``TRT_FP4DynamicQuantize -> DequantizeLinear x2`` on input 0 of each named MatMul (``acts``: node name,
    the activations' tensor scale, the input size). Runs after the FP16 rewrite, so each MatMul's input already
    has the compute dtype ``compute`` (an onnx.TensorProto type); MatMuls reading one tensor under one scale share
    one quantizer.
    Returns how many quantizers were inserted."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    want = {name: (scale, in_f) for name, scale, in_f in acts}
    ranks = _ranks(model)
    shared: dict[tuple[str, float], str] = {}
    new_nodes: list[Any] = []
    for node in graph.node:
        if node.op_type == "MatMul" and node.name in want:
            scale, in_f = want[node.name]
            key = (node.input[0], float(scale))
            if key not in shared:
                tag = f"nvfp4_act{len(shared)}"
                prefix = node.name.rsplit("/", 1)[0]
                graph.initializer.extend([
                    numpy_helper.from_array(np.array(key[1], dtype=np.float32), f"{tag}_scale_global"),
                    # TensorRT needs the blocked axis' extent at build time; after a Reshape(.., -1) (the attention
                    # output before o_proj) it is not: pin it, copying every other dim (0)
                    numpy_helper.from_array(np.array([0] * (ranks.get(key[0], 3) - 1) + [in_f], dtype=np.int64),
                                            f"{tag}_shape")])
                new_nodes += [
                    helper.make_node("Reshape", [key[0], f"{tag}_shape"], [f"{tag}_in"], name=f"{prefix}/input_Reshape"),
                    helper.make_node(DYNQ_OP, [f"{tag}_in", f"{tag}_scale_global"], [f"{tag}_f4", f"{tag}_scale_e4m3"],
                                     name=f"{prefix}/input_{DYNQ_OP}", domain=TRT_DOMAIN, axis=-1, block_size=16,
                                     scale_type=TensorProto.FLOAT8E4M3FN),
                    helper.make_node("DequantizeLinear", [f"{tag}_scale_e4m3", f"{tag}_scale_global"], [f"{tag}_scale"],
                                     name=f"{prefix}/input_scale_DequantizeLinear", output_dtype=compute),
                    helper.make_node("DequantizeLinear", [f"{tag}_f4", f"{tag}_scale"], [f"{tag}_dq"],
                                     name=f"{prefix}/input_DequantizeLinear", axis=-1, block_size=16)]
                shared[key] = f"{tag}_dq"
            node.input[0] = shared[key]
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    if shared and not any(o.domain == TRT_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(TRT_DOMAIN, 1))
    return len(shared)


def _ranks(model: Any) -> dict[str, int]:
    """Rank of every tensor shape inference knows (over the graph without its weight bytes)."""
    import onnx

    from edgeq.converters.quantize.half import _light

    g = onnx.shape_inference.infer_shapes(_light(model)).graph
    return {v.name: len(v.type.tensor_type.shape.dim) for v in [*g.value_info, *g.input]
            if v.type.tensor_type.HasField("shape")}

