"""One build stage per process, so that bench_build can measure each stage's wall time and peak RSS alone.

    python benchmarks/_build_stage.py export MODEL OUT
    python benchmarks/_build_stage.py quantize MODEL SCHEME OUT [COMPUTE_DTYPE]
    python benchmarks/_build_stage.py edgeq-engine ONNX TARGET PRECISION TASK PLAN_OUT ENGINE_OUT
    python benchmarks/_build_stage.py raw-trtrtx ONNX PLAN_JSON ENGINE_OUT
    python benchmarks/_build_stage.py edgeq-build MODEL TARGET OUT

Each prints one line ``BENCH_RESULT {json}`` at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _done(**kw: object) -> None:
    print("BENCH_RESULT " + json.dumps(kw, default=str), flush=True)


def export(model: str, out: str) -> None:
    from edgeq.converters.export import export_onnx

    r = export_onnx(model, out, overwrite=True)
    _done(onnx=str(r.onnx_path))


def quantize(model: str, scheme: str, out: str, compute_dtype: str = "float16") -> None:
    """Quantize as ``edgeq build`` does for a GPU target (FP16 compute unless told otherwise)."""
    from edgeq.converters.quantize import get_config
    from edgeq.converters.quantize import quantize as q

    r = q(model, get_config(scheme, compute_dtype=compute_dtype), out, overwrite=True)
    _done(onnx=str(r.onnx_path), time_s=r.report.get("time_s"))


def edgeq_engine(onnx: str, target: str, precision: str, task: str, plan_out: str, engine_out: str) -> None:
    """edgeq's engine builder on an existing ONNX, with the plan edgeq derives from the target profile."""
    from edgeq.converters.build_plan import make_plan
    from edgeq.sdk.engine.builder import build_engine
    from edgeq.targets import get_profile

    info = json.loads((Path(onnx).parent / "edgeq_model.json").read_text())
    plan, _ = make_plan(get_profile(target), task, Path(onnx), precision, max_positions=info.get("max_position_embeddings"))
    Path(plan_out).write_text(plan.to_json())
    t0 = time.perf_counter()
    built = build_engine(plan, onnx)
    seconds = time.perf_counter() - t0
    Path(engine_out).write_bytes(built.engine)
    _done(engine_bytes=Path(engine_out).stat().st_size, build_s=seconds, info=built.info.to_dict())


def raw_trtrtx(onnx: str, plan_json: str, engine_out: str) -> None:
    """The same build straight on tensorrt_rtx_bindings (no edgeq code): same shapes and compute capabilities."""
    import tensorrt_rtx_bindings as trt

    plan = json.loads(Path(plan_json).read_text())
    logger = trt.Logger(trt.Logger.WARNING)
    t0 = time.perf_counter()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx):
        raise SystemExit("parse failed: " + "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    for prof in plan["profiles"]:
        p = builder.create_optimization_profile()
        for i in prof["inputs"]:
            p.set_shape(i["name"], i["min"], i["opt"], i["max"])
        config.add_optimization_profile(p)
    caps = plan.get("compute_capabilities") or []
    config.num_compute_capabilities = len(caps)
    for k, cc in enumerate(caps):
        config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + cc.replace(".", "")), k)
    if plan.get("workspace_bytes"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan["workspace_bytes"])
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise SystemExit("build_serialized_network returned None")
    seconds = time.perf_counter() - t0
    Path(engine_out).write_bytes(bytes(engine))
    _done(engine_bytes=Path(engine_out).stat().st_size, build_s=seconds, trt_version=trt.__version__)


def edgeq_build(model: str, target: str, out: str) -> None:
    from edgeq.converters.build import build

    r = build(model, target, out=out, overwrite=True)
    _done(engine_mode=r.engine_mode, precision=r.precision, onnx_bytes=r.onnx_bytes, fp16_onnx_bytes=r.fp16_onnx_bytes,
          engine_bytes=r.engine_bytes, stage_seconds=r.stage_seconds, memory=r.memory, accuracy=r.accuracy,
          engine_build=r.engine_build)


STAGES = {"export": export, "quantize": quantize, "edgeq-engine": edgeq_engine, "raw-trtrtx": raw_trtrtx,
          "edgeq-build": edgeq_build}

if __name__ == "__main__":
    STAGES[sys.argv[1]](*sys.argv[2:])
