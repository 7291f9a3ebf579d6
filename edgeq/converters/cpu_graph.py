"""The CPU graph: a bundle's QDQ ONNX rewritten for ONNX Runtime's CPU provider, sharing the bundle's weight bytes.

A GPU bundle's graph computes in FP16 and may quantize activations (FP8 / INT8 W8A8): what tensor cores run,
and what ONNX Runtime's CPU kernels run slowest (about 1 tok/s for the FP8 demo bundle). The CPU graph is the
same model as ONNX Runtime's CPU kernels want it:

- FP32 compute: FP16 initializers, casts, constants and graph I/O (the KV cache) become FP32;
- activation Q→DQ pairs (W8A8) are dropped: the CPU graph is weight-only, closer to the FP reference;
- FP8 weights are requantized to INT8 per output channel (DequantizeLinear int8, what an ``int8-wo`` CPU build
  runs; ONNX Runtime's FP8 DequantizeLinear→MatMul fusion refuses float8 inputs, and FP32 weights would read 4x
  the bytes); INT4 / INT8 DQ stays as it is and is fused into MatMulNBits at load, as for a CPU build;
- ONNX Runtime's transformer optimizer fusions: RotaryEmbedding, SimplifiedLayerNormalization and
  SkipSimplifiedLayerNormalization.

Its large tensors are not copied (the INT8 codes of FP8 weights aside): every initializer whose bytes equal one of the bundle graph's external-data
tensors points at those bytes (``model.onnx_data``, same directory), and an FP32 initializer that is exactly an
FP16 one of the bundle graph becomes that FP16 tensor plus a Cast (folded at load). The CPU graph adds a few MB
to a bundle; the runtime picks it on a CPU (``EngineInfo.device == "cpu"``). The build checks it against the
bundle graph (greedy tokens) and the canaries (``converters.health``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: an ONNX file's external data sits beside it: ``model.onnx`` → ``model.onnx_data``
DATA_SUFFIX = ".onnx_data"


def data_path(onnx_path: Path) -> Path:
    """Where ``onnx_path`` keeps its external data (``model.onnx`` → ``model.onnx_data``)."""
    return onnx_path.with_name(onnx_path.stem + DATA_SUFFIX)
#: tensors at least this large are looked up in the bundle graph's bytes (every tensor its data file holds);
#: smaller ones stay in the CPU graph
SHARE_MIN_BYTES = 1024
#: the CPU graph's own tensors at least this large go to its data file, smaller ones inline
OWN_DATA_MIN_BYTES = 1 << 16
_KV = ("past_key_values.", "present.")


@dataclass
class CpuGraphStats:
    """What the rewrite did (recorded in the manifest's build info)."""

    nodes_in: int = 0
    nodes_out: int = 0
    fp16_to_fp32: int = 0
    activation_qdq_removed: int = 0
    fp8_weights: int = 0
    fp8_as: str = ""
    fusions: dict[str, int] = field(default_factory=dict)
    shared_tensors: int = 0
    shared_bytes: int = 0
    own_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def save_with_external_data(model: Any, path: Path) -> None:
    """Save ``model`` as ``path`` + ``data_path(path)`` (every tensor of ``SHARE_MIN_BYTES`` or more in the data file)."""
    import onnx

    data = data_path(path)
    if data.exists():
        data.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=SHARE_MIN_BYTES)


def to_external_data(onnx_path: Path) -> Path:
    """Rewrite ``onnx_path`` in place so that its tensors live in ``<name>.onnx_data`` (the same graph);
    returns the data file. What the CPU graph's shared tensors point into."""
    import onnx

    model = onnx.load(str(onnx_path))
    save_with_external_data(model, onnx_path)
    return data_path(onnx_path)


def derive_cpu_graph(src: Path, out: Path, *, num_heads: int, hidden_size: int, max_positions: int | None = None,
                     fuse: bool = True, fp8_as: str = "int8") -> CpuGraphStats:
    """Write the CPU graph of bundle graph ``src`` (saved with external data, ``to_external_data``) as ``out``.

    ``out`` must be in ``src``'s directory (its shared tensors name ``src``'s data file); its own tensors go to
    ``<out name>.onnx_data`` when there are any. ``num_heads`` / ``hidden_size`` are the attention shape the
    transformer optimizer's fusions need; ``max_positions`` (the model's position limit) trims the rotary
    caches the fusion makes (it sizes them for 131072 positions: 32 MiB for a 64-dim head). ``fp8_as``: FP8
    weights become INT8 per output channel (``"int8"``, new bytes: a quarter of FP32's, decode ~1.8x faster than
    FP32 on SmolLM2-135M) or ``Mul(Cast(W), scale)`` folded to FP32 at load (``"float32"``: shared bytes, exact).
    """
    if fp8_as not in ("int8", "float32"):
        raise ValueError(f"fp8_as must be 'int8' or 'float32', got {fp8_as!r}")
    import onnx

    if out.parent.resolve() != src.parent.resolve():
        raise ValueError("the CPU graph must sit beside the graph whose bytes it shares")
    model = onnx.load(str(src))
    stats = CpuGraphStats(nodes_in=len(model.graph.node))
    shared = _tensor_index(onnx.load(str(src), load_external_data=False), src.parent)
    stats.fp16_to_fp32 = _to_fp32(model)
    stats.activation_qdq_removed = _drop_activation_qdq(model)
    stats.fp8_weights = _fp8_weights_as_cast(model, as_int8=fp8_as == "int8")
    stats.fp8_as = fp8_as if stats.fp8_weights else ""
    if fuse:
        model, stats.fusions = _fuse(model, num_heads, hidden_size)
        if max_positions:
            _trim_rotary_caches(model, max_positions)
    _share(model, shared, stats)
    stats.nodes_out = len(model.graph.node)
    own = data_path(out)
    for p in (out, own):
        if p.exists():
            p.unlink()
    onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=own.name, size_threshold=OWN_DATA_MIN_BYTES, convert_attribute=False)
    if own.exists():
        stats.own_bytes = own.stat().st_size
        if stats.own_bytes == 0:
            own.unlink()
    return stats


# -- FP16 → FP32 ----------------------------------------------------------------------------------
def _to_fp32(model: Any) -> int:
    """Every FP16 type in the graph becomes FP32: initializers, Cast targets, constants, I/O, value infos."""
    from onnx import TensorProto, numpy_helper

    g, n = model.graph, 0
    for i, init in enumerate(g.initializer):
        if init.data_type == TensorProto.FLOAT16:
            arr = numpy_helper.to_array(init).astype(np.float32)
            g.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
            n += 1
    for node in _all_nodes(g):
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT16:
                a.i = TensorProto.FLOAT
                n += 1
            elif a.name == "value" and a.t.data_type == TensorProto.FLOAT16:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
                n += 1
            elif node.op_type == "ConstantOfShape" and a.name == "value" and a.t.data_type == TensorProto.FLOAT16:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32)))
    for vi in (*g.input, *g.output, *g.value_info):
        tt = vi.type.tensor_type
        if tt.elem_type == TensorProto.FLOAT16:
            tt.elem_type = TensorProto.FLOAT
    return n


def _all_nodes(g: Any) -> list[Any]:
    out = []
    for node in g.node:
        out.append(node)
        for a in node.attribute:
            if a.g is not None and a.g.node:
                out.extend(_all_nodes(a.g))
    return out


# -- activation QDQ and FP8 weights ---------------------------------------------------------------
def _drop_activation_qdq(model: Any) -> int:
    """Remove QuantizeLinear→DequantizeLinear pairs on activations (W8A8): their consumers read the float input."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    nodes = list(g.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    rename: dict[str, str] = {}
    drop: set[int] = set()
    for i, node in enumerate(nodes):
        if node.op_type != "DequantizeLinear" or not node.input:
            continue
        q = producer.get(node.input[0])
        if q is None or nodes[q].op_type != "QuantizeLinear" or nodes[q].input[0] in inits:
            continue
        rename[node.output[0]] = nodes[q].input[0]
        drop.add(i)
    if not rename:
        return 0
    still_read = {name for i, n in enumerate(nodes) if i not in drop for name in n.input}
    drop |= {i for i, n in enumerate(nodes) if n.op_type == "QuantizeLinear" and n.output[0] not in still_read
             and n.input[0] not in inits}
    if any(o.name in rename for o in g.output):
        raise ValueError("a graph output is a dequantized activation")
    kept = [n for i, n in enumerate(nodes) if i not in drop]
    for n in kept:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    del g.node[:]
    g.node.extend(kept)
    return len(rename)


def _fp8_weights_as_cast(model: Any, as_int8: bool = False) -> int:
    """DequantizeLinear(FP8 weight, scale) → Mul(Cast(weight, float), scale): folded to FP32 weights at load."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    fp8 = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ}
    out, n = [], 0
    for node in g.node:
        w = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if w is None or w.data_type not in fp8 or len(node.input) < 2 or node.input[1] not in inits:
            out.append(node)
            continue
        scale = inits[node.input[1]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        rank = len(w.dims)
        s = numpy_helper.to_array(scale).astype(np.float32)
        if s.ndim == 1 and s.size > 1:  # per channel along ``axis``: broadcastable shape
            shape = [1] * rank
            shape[axis % rank] = s.size
            s = s.reshape(shape)
        elif s.ndim == rank and tuple(s.shape) != tuple(w.dims):  # blocked (e.g. FP8 128x128): expand to the weight
            block = next((a.i for a in node.attribute if a.name == "block_size"), 0)
            for i in range(rank):
                if s.shape[i] != w.dims[i]:
                    s = np.repeat(s, block, axis=i)[tuple(slice(0, w.dims[i]) if j == i else slice(None)
                                                         for j in range(rank))]
        if as_int8:  # INT8 per output channel: a quarter of FP32's bytes, new bytes (not shared)
            w32 = numpy_helper.to_array(w).astype(np.float32) * s
            red = tuple(i for i in range(rank) if i != axis % rank)
            s8 = np.maximum(np.abs(w32).max(axis=red), 1e-30).astype(np.float32) / 127.0
            q = np.clip(np.rint(w32 / s8.reshape([-1 if i == axis % rank else 1 for i in range(rank)])), -127, 127)
            g.initializer.append(numpy_helper.from_array(q.astype(np.int8), w.name + ".int8"))
            g.initializer.append(numpy_helper.from_array(s8, w.name + ".int8_scale"))
            out.append(helper.make_node("DequantizeLinear", [w.name + ".int8", w.name + ".int8_scale"], [node.output[0]],
                                        name=node.name + "/int8", axis=axis))
            n += 1
            continue
        sname = node.input[1] + ".cpu"
        g.initializer.append(numpy_helper.from_array(s, sname))
        cast = node.output[0] + ".f32"
        out.append(helper.make_node("Cast", [w.name], [cast], to=TensorProto.FLOAT, name=node.name + "/cast"))
        out.append(helper.make_node("Mul", [cast, sname], [node.output[0]], name=node.name + "/scale"))
        n += 1
    del g.node[:]
    g.node.extend(out)
    if as_int8:  # the FP8 tensors no node reads any more
        read = {i for node in _all_nodes(g) for i in node.input}
        keep = [i for i in g.initializer if i.name in read]
        del g.initializer[:]
        g.initializer.extend(keep)
    return n


# -- transformer optimizer fusions ----------------------------------------------------------------
def _fuse(model: Any, num_heads: int, hidden_size: int) -> tuple[Any, dict[str, int]]:
    """ONNX Runtime's transformer optimizer, Python fusions only (ORT's own graph optimizer runs at load)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = FusionOptions("gpt2")
    opts.enable_attention = False  # GPT-2's attention pattern; a Llama export does not have it
    logging.getLogger("onnxruntime.transformers").setLevel(logging.WARNING)
    om = optimize_model(model, model_type="gpt2", num_heads=num_heads, hidden_size=hidden_size, opt_level=0,
                        optimization_options=opts, only_onnxruntime=False)
    fused = {k: int(v) for k, v in om.get_fused_operator_statistics().items() if v}
    return om.model, fused


def _trim_rotary_caches(model: Any, max_positions: int) -> None:
    """Keep the first ``max_positions`` rows of the RotaryEmbedding cos/sin caches (positions never exceed it)."""
    from onnx import numpy_helper

    caches = {n.input[i] for n in model.graph.node if n.op_type == "RotaryEmbedding" for i in (2, 3) if len(n.input) > i}
    for init in model.graph.initializer:
        if init.name in caches and init.dims and init.dims[0] > max_positions:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init)[:max_positions].copy(), init.name))


# -- sharing the bundle graph's bytes -------------------------------------------------------------
def _tensor_index(meta: Any, base: Path) -> dict[tuple[int, tuple[int, ...], str], tuple[str, int, int]]:
    """(dtype, dims, sha256) → (location, offset, length) of every external tensor of the bundle graph."""
    index: dict[tuple[int, tuple[int, ...], str], tuple[str, int, int]] = {}
    files: dict[str, Any] = {}
    try:
        for init in meta.graph.initializer:
            ext = {e.key: e.value for e in init.external_data}
            if "location" not in ext:
                continue
            loc, off, length = ext["location"], int(ext.get("offset", 0)), int(ext["length"])
            if length < SHARE_MIN_BYTES:
                continue
            f = files.get(loc) or files.setdefault(loc, open(base / loc, "rb"))  # noqa: SIM115
            f.seek(off)
            digest = hashlib.sha256(f.read(length)).hexdigest()
            index[(init.data_type, tuple(init.dims), digest)] = (loc, off, length)
    finally:
        for f in files.values():
            f.close()
    return index


def _share(model: Any, index: dict[tuple[int, tuple[int, ...], str], tuple[str, int, int]],
           stats: CpuGraphStats) -> None:
    """Point initializers at the bundle graph's bytes: equal tensors directly, exact FP16 ones through a Cast."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    casts = []
    for init in g.initializer:
        raw = _raw(init)
        if raw is None or len(raw) < SHARE_MIN_BYTES:
            continue
        hit = index.get((init.data_type, tuple(init.dims), hashlib.sha256(raw).hexdigest()))
        if hit is None and init.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(init)
            half = arr.astype(np.float16)
            if np.array_equal(half.astype(np.float32), arr, equal_nan=True):
                key = (TensorProto.FLOAT16, tuple(init.dims), hashlib.sha256(half.tobytes()).hexdigest())
                if key in index:
                    name = init.name
                    init.CopyFrom(numpy_helper.from_array(half, name + ".fp16"))
                    casts.append(helper.make_node("Cast", [name + ".fp16"], [name], to=TensorProto.FLOAT,
                                                  name=name + "/fp16_to_fp32"))
                    hit = index[key]
        if hit is None:
            continue
        loc, off, length = hit
        _point(init, loc, off, length)
        stats.shared_tensors += 1
        stats.shared_bytes += length
    if casts:  # the Casts read initializers only: first in topological order
        nodes = casts + list(g.node)
        del g.node[:]
        g.node.extend(nodes)


def _raw(init: Any) -> bytes | None:
    from onnx import numpy_helper

    if init.data_location == 1:  # already external (not expected after a full load)
        return None
    if init.raw_data:
        return bytes(init.raw_data)
    try:
        return numpy_helper.to_array(init).tobytes()
    except Exception:  # a type numpy cannot hold: not shared
        return None


def _point(init: Any, location: str, offset: int, length: int) -> None:
    from onnx import TensorProto

    init.ClearField("raw_data")
    for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        init.ClearField(f)
    del init.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = init.external_data.add()
        e.key, e.value = k, v
    init.data_location = TensorProto.EXTERNAL
