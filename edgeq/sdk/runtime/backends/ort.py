"""ONNX Runtime backends: GPU (TensorRT / CUDA execution providers, with onnxruntime-gpu) and CPU.

The ONNX and its external-data files are opened by path after the store has verified their hashes.
``_infer`` is one ``InferenceSession.run`` call: nothing per call that the hot loop does not need.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from edgeq.errors import BundleError
from edgeq.sdk.runtime.backends.base import Backend, BackendOptions, register_backend
from edgeq.sdk.bundle.graph_io import session_input_dtypes
from edgeq.sdk.bundle.manifest import EngineInfo

log = logging.getLogger(__name__)

_GRAPH_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                 "all": "ORT_ENABLE_ALL"}


def onnx_engine(version: Any) -> EngineInfo | None:
    """The bundle's ONNX artifact: an ``onnx``-flavour engine entry, else the first file with role ``onnx``."""
    for e in version.manifest.engines:
        if e.flavour == "onnx" and (e.onnx or e.path):
            return e
    files = version.manifest.files_with_role("onnx")
    return EngineInfo(flavour="onnx", onnx=files[0].path) if files else None


class _OrtBackend(Backend):
    providers: ClassVar[tuple[str, ...]]
    #: set when the session had to be opened at basic optimization level (the first line of ORT's error)
    optimization_fallback: str | None = None

    @classmethod
    def match(cls, version: Any) -> EngineInfo | None:
        return onnx_engine(version)

    @classmethod
    def _ort(cls) -> Any:
        import onnxruntime

        return onnxruntime

    def _providers(self, ort: Any) -> list[str]:
        have = set(ort.get_available_providers())
        return [p for p in self.providers if p in have]

    def _open(self, version: Any, engine: EngineInfo, options: BackendOptions) -> None:
        ort = self._ort()
        onnx_rel = engine.onnx or engine.path
        if onnx_rel is None:
            raise BundleError(f"{version.model} v{version.version}: onnx engine entry names no file")
        # Verify the external data too: ORT reads it by the name the graph records, next to the model.
        for f in version.manifest.files_with_role("onnx_data"):
            version.path(f.path)
        model_path = version.path(onnx_rel)
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _GRAPH_LEVELS[options.graph_optimization])
        so.log_severity_level = 3
        self._session = self._session_with_fallback(ort, str(model_path), so)
        self._run = self._session.run
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.input_dtypes = session_input_dtypes(self._session)
        self.description = f"{self.name} ({', '.join(self._session.get_providers())})"

    def _session_with_fallback(self, ort: Any, model_path: str, so: Any) -> Any:
        """Open the session; if the graph optimizer's fusions reject the QDQ graph, retry at basic level.

        ONNX Runtime 1.30 fuses FP8 DequantizeLinear→MatMul into MatMulIntegerToFloat, which then refuses
        float8 inputs (InvalidGraph, seen on the H100 image); basic level runs the portable graph as written.
        """
        try:
            return ort.InferenceSession(model_path, so, providers=self._providers(ort))
        except Exception as exc:
            basic = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            if "InvalidGraph" not in type(exc).__name__ or so.graph_optimization_level in (
                basic, ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            ):
                raise
            log.warning("onnxruntime %s rejected the optimized graph (%s); running it with basic optimizations",
                        getattr(ort, "__version__", "?"), str(exc).splitlines()[0][:200])
            so.graph_optimization_level = basic
            self.optimization_fallback = str(exc).splitlines()[0][:200]
            return ort.InferenceSession(model_path, so, providers=self._providers(ort))

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        return self._run(None, feeds)

    def _close(self) -> None:
        self._session = None
        self._run = None


@register_backend
class OrtGpuBackend(_OrtBackend):
    """onnxruntime-gpu with the TensorRT (when its libraries load) or CUDA execution provider."""

    name = "onnxruntime-gpu"
    priority = 20
    providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

    @classmethod
    def available(cls) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed"
        have = cls._ort().get_available_providers()
        if "CUDAExecutionProvider" not in have and "TensorrtExecutionProvider" not in have:
            return "onnxruntime has no CUDA/TensorRT execution provider (install onnxruntime-gpu)"
        return None


@register_backend
class OrtCpuBackend(_OrtBackend):
    """ONNX Runtime on the CPU: runs every bundle's ONNX anywhere."""

    name = "onnxruntime-cpu"
    priority = 30
    providers = ("CPUExecutionProvider",)

    @classmethod
    def available(cls) -> str | None:
        return None if importlib.util.find_spec("onnxruntime") is not None else "onnxruntime is not installed"
