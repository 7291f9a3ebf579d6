"""Hand-made tiny QDQ ONNX graphs (one MatMul) in each precision edgeq emits, for builder tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

K = N = 64
PRECISIONS = ("fp16", "fp8", "int8", "int8-wo", "int4")


def qdq_matmul(kind: str, path: Path, *, bad_node: bool = False) -> Path:
    """y = x @ W with W (and for W8A8, x) in ``kind``; FP16 activations, dynamic batch/sequence."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    inits, nodes = [], []
    x = h.make_tensor_value_info("x", T.FLOAT16, ["batch_size", "sequence_length", K])
    y = h.make_tensor_value_info("y", T.FLOAT16, ["batch_size", "sequence_length", N])
    if kind == "fp16":
        inits.append(nh.from_array(w.astype(np.float16), "w"))
        nodes.append(h.make_node("MatMul", ["x", "w"], ["y"], name="matmul"))
    elif kind in ("fp8", "int8", "int8-wo"):
        if kind == "fp8":
            sc = np.float16(np.abs(w).max() / 448)
            wq = h.make_tensor("wq", T.FLOAT8E4M3FN, [K, N], vals=(w / np.float32(sc)).flatten().tolist())
            zp = h.make_tensor("zp", T.FLOAT8E4M3FN, [], vals=[0.0])
        else:
            sc = np.float16(np.abs(w).max() / 127)
            wq = nh.from_array(np.clip(np.round(w / np.float32(sc)), -127, 127).astype(np.int8), "wq")
            zp = nh.from_array(np.array(0, np.int8), "zp")
        inits += [wq, nh.from_array(np.array(sc, np.float16), "ws"), zp]
        nodes.append(h.make_node("DequantizeLinear", ["wq", "ws", "zp"], ["wd"], name="w_dq"))
        act = "x"
        if kind != "int8-wo":  # W8A8: activations through Q/DQ too
            inits.append(nh.from_array(np.array(np.float16(0.05)), "xs"))
            nodes += [h.make_node("QuantizeLinear", ["x", "xs", "zp"], ["xq"], name="x_q"),
                      h.make_node("DequantizeLinear", ["xq", "xs", "zp"], ["xd"], name="x_dq")]
            act = "xd"
        nodes.append(h.make_node("MatMul", [act, "wd"], ["y"], name="matmul"))
    elif kind == "int4":
        bs = 32
        q = np.clip(np.round(w * 4), -8, 7).astype(np.int8)
        inits += [h.make_tensor("wq", T.INT4, [K, N], vals=q.flatten().tolist()),
                  nh.from_array(np.full((K // bs, N), 0.25, np.float16), "ws")]
        nodes += [h.make_node("DequantizeLinear", ["wq", "ws"], ["wd"], axis=0, block_size=bs, name="w_dq"),
                  h.make_node("MatMul", ["x", "wd"], ["y"], name="matmul")]
    else:
        raise ValueError(kind)
    if bad_node:
        nodes.append(h.make_node("NoSuchOp", ["y"], ["z"], name="mystery_node"))
        y = h.make_tensor_value_info("z", T.FLOAT16, ["batch_size", "sequence_length", N])
    g = h.make_graph(nodes, "g", [x], [y], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    if not bad_node:
        onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path
