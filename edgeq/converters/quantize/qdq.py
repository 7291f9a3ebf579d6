"""The QDQ ONNX emitter: rewrite an FP export so that planned linears read quantized weights.

Each ``MatMul`` whose weight is an initializer is mapped back to its torch Linear through the exporter's
node name (``/model/layers.0/self_attn/q_proj/MatMul`` -> ``model.layers.0.self_attn.q_proj``). Its FP
weight is replaced by a compact INT4/INT8/FP8 initializer + a standard-domain DequantizeLinear
(INT4: ``block_size`` along the input axis 0; INT8/FP8: per-output-channel, axis 1), and W8A8 layers get
a QuantizeLinear -> DequantizeLinear pair on their input activation. Asymmetric INT4 keeps the symmetric
DequantizeLinear (TensorRT takes no INT4 zero points) and adds the per-block offsets exactly:
``y = x @ DQ(q) + (x @ B) @ O`` with ``B`` the [in, blocks] 0/1 block indicator (its product with ``x`` is
each block's sum, shared by the layers reading one input) and ``O`` the [blocks, out] offsets.
Dynamic FP8 activations (``LinearPlan.act_group``: per token, or per token and channel group as the fine-grained
FP8 checkpoints' readers compute them) are written as their arithmetic, ``Cast`` to FLOAT8E4M3FN and back under a
scale computed from the input (``dynamic_fp8_nodes``): ONNX has no dynamic FP8 quantizer and TensorRT's
DynamicQuantize takes NVFP4 and MXFP8 blocks only, so such graphs check a checkpoint in ONNX Runtime and are built
by no TensorRT flavour. Only opset-21 ai.onnx ops are used,
so the same file loads in ONNX Runtime CPU (which fuses DQ(int4)->MatMul into MatMulNBits) and parses in
TensorRT(-RTX). NVFP4 plans (``nvfp4_qdq.py``) need opset 23 and run in TensorRT only; W4A4 NVFP4 adds
TensorRT's dynamic FP4 quantizer (domain ``trt``) after the FP16 rewrite, past the standard-domain check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeq.converters.quantize.numerics import LinearPlan
from edgeq.errors import QuantizationError

OPSET = 21
#: above this many bytes of initializers the model is saved with one external data file (protobuf's 2 GB cap)
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
EXTERNAL_DATA_NAME = "model.onnx.data"


def module_path(node_name: str) -> str | None:
    """``/model/layers.0/mlp/up_proj/MatMul`` -> ``model.layers.0.mlp.up_proj`` (None if not that form)."""
    parts = node_name.strip("/").split("/")
    if len(parts) < 2 or not parts[-1].startswith("MatMul"):
        return None
    return ".".join(parts[:-1])


def _np_weight(plan: LinearPlan) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(quantized weight [in, out] in its ONNX numpy dtype, scale in ONNX layout, DQ attributes)."""
    import ml_dtypes
    import torch

    q = plan.q.T.contiguous()
    if plan.kind == "int4":
        w = q.numpy().astype(ml_dtypes.int4)
        scale = plan.scale.T.contiguous().float().numpy()
        return w, scale, {"axis": 0, "block_size": int(plan.block_size or 0)}
    if plan.kind == "int8":
        return q.numpy().astype(np.int8), plan.scale.float().numpy(), {"axis": 1}
    if plan.kind == "fp8":
        w = q.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
        if plan.block_size:  # blocks along the input axis, as INT4 (pre-quantized block-wise FP8 checkpoints)
            return w, plan.scale.T.contiguous().float().numpy(), {"axis": 0, "block_size": int(plan.block_size)}
        return w, plan.scale.float().numpy(), {"axis": 1}
    raise QuantizationError(f"unknown weight kind {plan.kind!r}")


def _weight_source(node: Any, inits: dict[str, Any], producers: dict[str, Any]) -> tuple[str, bool] | None:
    """(initializer, transposed) a MatMul reads as its weight: the initializer itself, or ``Transpose(init)``
    (how the exporter writes an LM head tied to the embedding, whose [vocab, hidden] table the Gather also reads)."""
    w = node.input[1]
    if w in inits:
        return w, False
    p = producers.get(w)
    if p is not None and p.op_type == "Transpose" and p.input[0] in inits:
        perm = next((list(a.ints) for a in p.attribute if a.name == "perm"), [1, 0])
        if perm == [1, 0]:
            return p.input[0], True
    return None


def _act_zero_point(kind: str) -> np.ndarray:
    import ml_dtypes

    return np.zeros((), dtype=ml_dtypes.float8_e4m3fn if kind == "fp8" else np.int8)


def dynamic_fp8_nodes(x: str, group: int, tag: str, path: str) -> tuple[list[Any], list[Any], str]:
    """(nodes, initializers, output) computing ``numerics.fp8_dynamic_act(x, group)`` in float32."""
    from onnx import TensorProto, helper, numpy_helper

    from edgeq.converters.quantize.numerics import FP8_MAX

    consts = {"groups": np.array([-1, group], dtype=np.int64), "axis": np.array([-1], dtype=np.int64),
              "qmax": np.array(FP8_MAX, dtype=np.float32), "eps": np.array(1e-12, dtype=np.float32)}
    inits = [numpy_helper.from_array(v, f"{tag}_{k}") for k, v in consts.items()]
    t = {k: f"{tag}_{k}" for k in ("shape", "g", "abs", "amax", "s0", "s", "scaled", "q", "qf", "dq", "out")}
    name = f"/{path.replace('.', '/')}/input_dynamic_fp8"
    steps = [("Shape", [x], t["shape"], {}), ("Reshape", [x, f"{tag}_groups"], t["g"], {}),
             ("Abs", [t["g"]], t["abs"], {}), ("ReduceMax", [t["abs"], f"{tag}_axis"], t["amax"], {"keepdims": 1}),
             ("Div", [t["amax"], f"{tag}_qmax"], t["s0"], {}), ("Max", [t["s0"], f"{tag}_eps"], t["s"], {}),
             ("Div", [t["g"], t["s"]], t["scaled"], {}), ("Cast", [t["scaled"]], t["q"], {"to": TensorProto.FLOAT8E4M3FN}),
             ("Cast", [t["q"]], t["qf"], {"to": TensorProto.FLOAT}), ("Mul", [t["qf"], t["s"]], t["dq"], {}),
             ("Reshape", [t["dq"], t["shape"]], t["out"], {})]
    nodes = [helper.make_node(op, ins, [out], name=f"{name}/{op}_{i}", **attrs) for i, (op, ins, out, attrs) in enumerate(steps)]
    return nodes, inits, t["out"]


def emit_qdq(src: Path, plans: dict[str, LinearPlan], dst: Path, compute_dtype: str = "float32") -> dict[str, Any]:
    """Write ``dst`` (model.onnx) from the FP export ``src`` with ``plans`` applied, computing in ``compute_dtype``
    (``float16``: see ``half.to_float16``).

    Returns {"replaced": [...], "unmatched": [...], "float16": stats or None} so the caller can check that every
    plan landed.
    Raises QuantizationError when a planned weight's shape disagrees with the ONNX initializer.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}

    producers = {o: n for n in graph.node for o in n.output}
    new_nodes: list[Any] = []
    new_inits: list[Any] = []
    act_qdq: dict[tuple[str, float, str], str] = {}
    block_sums: dict[tuple[str, int], str] = {}
    replaced: list[str] = []
    replaced_weights: set[str] = set()
    fp4_acts: list[tuple[str, float, int]] = []  # (MatMul node, activation tensor scale, in size): W4A4 NVFP4
    for orig in graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(orig)  # the repeated field is cleared below; keep owned copies
        path = module_path(node.name) if node.op_type == "MatMul" else None
        plan = plans.get(path) if path else None
        source = _weight_source(node, inits, producers) if plan is not None and len(node.input) == 2 else None
        if plan is None or source is None:
            new_nodes.append(node)
            continue
        w_name, transposed = source
        out_f, in_f = plan.q.shape
        want = [out_f, in_f] if transposed else [in_f, out_f]
        if list(inits[w_name].dims) != want:
            raise QuantizationError(
                f"ONNX weight of {path} has shape {list(inits[w_name].dims)}, plan expects {want}")
        base = path.replace(".", "_")
        if plan.kind == "nvfp4":  # two DequantizeLinear (nvfp4_qdq.py); W4A4's input quantizer goes in after FP16
            from edgeq.converters.quantize import nvfp4_qdq

            nodes, inits4, dq_out = nvfp4_qdq.weight_nodes(plan, base, path)
            new_nodes += nodes
            new_inits += inits4
            if plan.act_scale is not None:
                fp4_acts.append((node.name, float(plan.act_scale), int(plan.q.shape[1])))
        else:
            w, scale, attrs = _np_weight(plan)
            new_inits += [numpy_helper.from_array(w, f"{base}_wq"), numpy_helper.from_array(scale, f"{base}_wscale")]
            dq_out = f"{base}_w_dq"
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}_wq", f"{base}_wscale"], [dq_out],
                                              name=f"/{path.replace('.', '/')}/weight_DequantizeLinear", **attrs))
        a_in = node.input[0]
        if plan.act_group is not None:
            if compute_dtype != "float32":
                raise QuantizationError(f"{path}: dynamic FP8 activations are written for float32 graphs only",
                                        hint="no TensorRT flavour builds them; use compute dtype float32")
            key = (a_in, -float(plan.act_group), "fp8-dynamic")
            if key not in act_qdq:
                nodes, inits_d, act_qdq[key] = dynamic_fp8_nodes(a_in, plan.act_group, f"{base}_dyn{len(act_qdq)}", path)
                new_nodes += nodes
                new_inits += inits_d
            a_in = act_qdq[key]
        elif plan.act_scale is not None and plan.kind != "nvfp4":
            key = (a_in, float(plan.act_scale), plan.act_kind or "")
            if key not in act_qdq:
                tag = f"{base}_act{len(act_qdq)}"
                zp = _act_zero_point(plan.act_kind or "int8")
                new_inits += [numpy_helper.from_array(np.array(plan.act_scale, dtype=np.float32), f"{tag}_scale"),
                              numpy_helper.from_array(zp, f"{tag}_zp")]
                new_nodes.append(helper.make_node("QuantizeLinear", [a_in, f"{tag}_scale", f"{tag}_zp"], [f"{tag}_q"],
                                                  name=f"/{path.replace('.', '/')}/input_QuantizeLinear"))
                new_nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_scale", f"{tag}_zp"],
                                                  [f"{tag}_dq"], name=f"/{path.replace('.', '/')}/input_DequantizeLinear"))
                act_qdq[key] = f"{tag}_dq"
            a_in = act_qdq[key]
        node.input[0] = a_in
        replaced_weights.add(w_name)
        node.input[1] = dq_out
        new_nodes.append(node)
        if plan.offset is not None:
            new_nodes += _offset_correction(node, plan, plan.offset, base, path, block_sums, new_inits)
        replaced.append(path)

    # a tied head read its weight through Transpose(embedding): drop that Transpose once nothing reads it;
    # an FP weight goes when no node reads it any more (a tied embedding table stays for its Gather)
    read = {name for n in new_nodes for name in n.input}
    new_nodes = [n for n in new_nodes if not (n.op_type == "Transpose" and n.input[0] in replaced_weights
                                              and n.output[0] not in read)]
    read = {name for n in new_nodes for name in n.input}
    dead = replaced_weights - read
    del graph.node[:]
    graph.node.extend(new_nodes)
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name in dead:
            del graph.initializer[i]
    graph.initializer.extend(new_inits)
    fp4 = any(p.kind == "nvfp4" for p in plans.values())
    _set_opset(model, 23 if fp4 else OPSET)  # FLOAT4E2M1 in DequantizeLinear arrives with opset 23
    _check_domains(model)
    half = None
    if compute_dtype == "float16":
        from edgeq.converters.quantize.half import to_float16

        half = to_float16(model).to_dict()
    if fp4_acts:
        from onnx import TensorProto

        from edgeq.converters.quantize.nvfp4_qdq import insert_dynamic_quant

        insert_dynamic_quant(model, fp4_acts, TensorProto.FLOAT16 if compute_dtype == "float16" else TensorProto.FLOAT)
    _save(model, dst)
    return {"replaced": replaced, "unmatched": sorted(set(plans) - set(replaced)), "float16": half}


def _offset_correction(node: Any, plan: LinearPlan, offset: Any, base: str, path: str,
                       block_sums: dict[tuple[str, int], str], new_inits: list[Any]) -> list[Any]:
    """Nodes adding asymmetric INT4's offsets to ``node``'s output (renamed): block sums of its input (made
    once per input and block size), times the [blocks, out] offsets, added back under the original name."""
    from onnx import helper, numpy_helper

    out_f, in_f = plan.q.shape
    block = int(plan.block_size or 0)
    prefix = f"/{path.replace('.', '/')}"
    nodes = []
    key = (node.input[0], block)
    if key not in block_sums:
        ind = f"block_indicator_{in_f}_{block}"
        if not any(t.name == ind for t in new_inits):
            eye = np.repeat(np.eye(in_f // block, dtype=np.float32), block, axis=0)  # [in, blocks]
            new_inits.append(numpy_helper.from_array(eye, ind))
        block_sums[key] = f"{base}_block_sums"
        nodes.append(helper.make_node("MatMul", [node.input[0], ind], [block_sums[key]], name=f"{prefix}/BlockSums_MatMul"))
    offsets = numpy_helper.from_array(offset.T.contiguous().float().numpy(), f"{base}_woffset")  # [blocks, out]
    new_inits.append(offsets)
    y = node.output[0]
    node.output[0] = f"{base}_main"
    nodes.append(helper.make_node("MatMul", [block_sums[key], offsets.name], [f"{base}_offset"], name=f"{prefix}/Offset_MatMul"))
    nodes.append(helper.make_node("Add", [f"{base}_main", f"{base}_offset"], [y], name=f"{prefix}/Offset_Add"))
    return nodes


def _set_opset(model: Any, opset: int = OPSET) -> None:
    from onnx import helper

    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            if imp.version < opset:
                imp.version = opset
            return
    model.opset_import.append(helper.make_opsetid("", opset))


def _check_domains(model: Any) -> None:
    bad = sorted({n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if bad:
        raise QuantizationError(f"emitted graph uses non-standard domains {bad}; the portable file must not")


def _save(model: Any, dst: Path) -> None:
    import onnx

    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=EXTERNAL_DATA_NAME, size_threshold=1024)
    else:
        onnx.save_model(model, str(dst))
