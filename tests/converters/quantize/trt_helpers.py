"""A minimal TensorRT-RTX parse + AOT build (no GPU needed) to prove a QDQ ONNX is acceptable to it.

The targets helper owns the real builder; this only checks that our emitted graph parses and builds.
"""

from __future__ import annotations

import json
from pathlib import Path


def build_rtx(model_dir: Path, sm: str = "SM89") -> tuple[bool, str]:
    """(ok, log tail): parse ``model_dir/model.onnx`` strongly typed and build for ``sm`` with small shapes."""
    import tensorrt_rtx_bindings as trt

    logs: list[str] = []

    class _Log(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg):  # noqa: ANN001
            if severity <= trt.ILogger.WARNING:
                logs.append(msg)

    logger = _Log()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_dir / "model.onnx")):
        return False, "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
    info = json.loads((model_dir / "edgeq_model.json").read_text())
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(getattr(trt.ComputeCapability, sm), 0)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if t.name.startswith("past_key_values"):
            kv, hd = info["num_key_value_heads"], info["head_dim"]
            profile.set_shape(t.name, (1, kv, 0, hd), (1, kv, 16, hd), (1, kv, 64, hd))
        elif t.name == "attention_mask" and "num_key_value_heads" in info:
            profile.set_shape(t.name, (1, 1), (1, 32), (1, 128))
        else:
            profile.set_shape(t.name, (1, 1), (1, 16), (1, 64))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    return engine is not None and engine.nbytes > 0, "\n".join(logs[-20:])
