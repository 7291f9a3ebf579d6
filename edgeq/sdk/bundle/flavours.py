"""The engine flavours: which library builds and loads each kind of artifact a bundle lists, in one table.

Every other list of flavours derives from ``ENGINE_FLAVOURS``: the manifest's engine entries, the build
plan, the target profiles, the device probe and the engine builder. Adding a flavour adds a row here (plus
its builder ``configure`` step and its runtime backend). Standard library only: this runs on devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from edgeq.errors import ConfigError


@dataclass(frozen=True)
class EngineFlavour:
    """One library that runs a bundle's model.

    Args:
        name: the name bundles, plans and target profiles use.
        title: how messages name it.
        tensorrt: a TensorRT engine, built from a plan for a GPU (False: the QDQ ONNX runs as it is).
        module: the Python module that builds and loads it (looked up with ``find_spec``, imported
            only where used: importing TensorRT costs seconds and GPU memory).
        install_hint: how to get ``module``.
        cross_builds: builds ahead of time for named compute capabilities on any machine, CPU-only
            included (TensorRT-RTX); False: builds for the GPU it runs on, so on the device.
        cli_tool: its command-line builder (what the plan's ``trtexec.txt`` calls), if any.
    """

    name: str
    title: str
    tensorrt: bool
    module: str
    install_hint: str
    cross_builds: bool = False
    cli_tool: str | None = None


ENGINE_FLAVOURS: Mapping[str, EngineFlavour] = MappingProxyType({f.name: f for f in (
    EngineFlavour("tensorrt", "TensorRT", tensorrt=True, module="tensorrt",
                  install_hint="install TensorRT 10.x (JetPack ships it on Jetson; `pip install tensorrt` on x86 with a GPU)",
                  cli_tool="trtexec"),
    EngineFlavour("tensorrt_rtx", "TensorRT-RTX", tensorrt=True, module="tensorrt_rtx_bindings",
                  install_hint="pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs",
                  cross_builds=True, cli_tool="tensorrt_rtx"),
    EngineFlavour("onnx", "ONNX Runtime", tensorrt=False, module="onnxruntime", install_hint="pip install onnxruntime"),
)})

#: Flavours whose artifact is a TensorRT engine built from a plan (what a target profile may name).
TENSORRT_FLAVOURS: tuple[str, ...] = tuple(n for n, f in ENGINE_FLAVOURS.items() if f.tensorrt)

#: The dtypes a bundle's graph may compute in: the FP32 export or edgeq's FP16 rewrite (quantize/half.py).
#: The quantizer produces exactly these and every flavour runs both; a target profile's ``compute_dtype``
#: must be one of them (the runtime reads the KV-cache dtype from the graph's inputs).
COMPUTE_DTYPES: tuple[str, ...] = ("float32", "float16")


def engine_flavour(name: str) -> EngineFlavour:
    """The table row of ``name``; ConfigError listing the known flavours otherwise."""
    try:
        return ENGINE_FLAVOURS[name]
    except KeyError:
        raise ConfigError(f"unknown engine flavour {name!r}; expected one of {list(ENGINE_FLAVOURS)}") from None
