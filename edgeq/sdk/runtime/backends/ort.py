"""ONNX Runtime backends: GPU (TensorRT / CUDA execution providers, with onnxruntime-gpu) and CPU.

The ONNX and its external-data files are opened by path after the store has verified their hashes.
``_infer`` is one ``InferenceSession.run`` call: nothing per call that the hot loop does not need.
``binder()`` gives the decode loop an IOBinding (``ort_io``) that keeps the KV cache on the session's
device. The GPU backend asks only for the providers whose libraries load (``providers``).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from edgeq.errors import BackendUnavailableError, BundleError
from edgeq.sdk.bundle.graph_io import ORT_TYPES, session_input_dtypes
from edgeq.sdk.bundle.manifest import EngineInfo
from edgeq.sdk.runtime.backends import providers as eps
from edgeq.sdk.runtime.backends.base import Backend, BackendOptions, register_backend
from edgeq.sdk.runtime.backends.binding import Binder

log = logging.getLogger(__name__)

_GRAPH_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                 "all": "ORT_ENABLE_ALL"}


def onnx_engine(version: Any, device: str | None = None) -> EngineInfo | None:
    """The bundle's ONNX artifact for ``device``: an ``onnx``-flavour engine entry made for it (the CPU graph,
    for "cpu"), else one for any device, else the first file with role ``onnx``."""
    entries = [e for e in version.manifest.engines if e.flavour == "onnx" and (e.onnx or e.path)]
    for e in entries:
        if device is not None and e.device == device:
            return e
    for e in entries:
        if e.device is None:
            return e
    files = version.manifest.files_with_role("onnx")
    return EngineInfo(flavour="onnx", onnx=files[0].path) if files else None


class _OrtBackend(Backend):
    providers: ClassVar[tuple[str, ...]]
    #: set when the session had to be opened at basic optimization level (the first line of ORT's error)
    optimization_fallback: str | None = None
    #: where the session's I/O lives: "cuda" when its first provider is a GPU one
    device = "cpu"
    device_id = 0

    #: the engine entry ``device`` this backend prefers (None: only entries for any device)
    engine_device: ClassVar[str | None] = None

    @classmethod
    def match(cls, version: Any) -> EngineInfo | None:
        return onnx_engine(version, cls.engine_device)

    @classmethod
    def _ort(cls) -> Any:
        import onnxruntime

        return onnxruntime

    def _providers(self, ort: Any, version: Any, options: BackendOptions) -> list[Any]:
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
        if options.profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = options.profile_prefix
        self.device_id = options.device_id
        self._provider_list = self._providers(ort, version, options)
        self._session = self._session_with_fallback(ort, str(model_path), so, self._provider_list)
        self._run = self._session.run
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.input_dtypes = session_input_dtypes(self._session)
        self.output_dtypes = {o.name: ORT_TYPES.get(o.type, np.dtype(np.float32)) for o in self._session.get_outputs()}
        used = self._session.get_providers()
        self.device = "cuda" if used and used[0] in (eps.TRT_EP, eps.CUDA_EP) else "cpu"
        self._sampler: Any = None
        self._no_binder: str | None = None
        self.cpu_graph = engine.device == "cpu"
        self.description = f"{self.name} ({', '.join(used)}{'; CPU graph ' + onnx_rel if self.cpu_graph else ''})"

    # -- the decode loop's binder ------------------------------------------------------------------------
    def binder(self, info: Any) -> Binder | None:
        """An IOBinding for one generation of an LM with ``info`` (a ModelInfo); None for a graph without
        logits or a vocabulary size, or on CUDA without cuda-bindings."""
        if "logits" not in self.output_names or self._no_binder is not None:
            return None
        ort = self._ort()
        if self.device == "cuda":
            try:
                from edgeq.sdk.runtime.backends import cudart

                cudart.runtime()
            except BackendUnavailableError as exc:
                self._no_binder = exc.message
                log.warning("%s: the KV cache goes through the host: %s", self.name, exc.message)
                return None
            if self._sampler is None:
                self._sampler = self._open_sampler(ort)
        from edgeq.sdk.runtime.backends.ort_io import OrtBinder

        out = self._session.get_outputs()[self.output_names.index("logits")]
        vocab = out.shape[-1] if isinstance(out.shape[-1], int) else info.vocab_size
        if not vocab:
            return None
        return OrtBinder(ort, self._session, device=self.device, device_id=self.device_id, logits_name="logits",
                         vocab=vocab, logits_dtype=self.output_dtypes["logits"], sampler=self._sampler or None)

    def _open_sampler(self, ort: Any) -> Any:
        from edgeq.sdk.runtime.backends.ort_io import GreedySampler

        try:
            return GreedySampler(ort, self._provider_list)
        except Exception as exc:  # the logits still come back; greedy runs on the host
            log.warning("greedy sampling on the device unavailable (%s)", str(exc).splitlines()[0][:200])
            return False

    def end_profiling(self) -> str | None:
        """Stop ONNX Runtime's profiler (``BackendOptions.profile_prefix``) and return the trace file."""
        return self._session.end_profiling() if self._session is not None else None

    def _session_with_fallback(self, ort: Any, model_path: str, so: Any, providers: list[Any]) -> Any:
        """Open the session; if the graph optimizer's fusions reject the QDQ graph, retry at basic level.

        ONNX Runtime 1.30 fuses FP8 DequantizeLinear→MatMul into MatMulIntegerToFloat, which then refuses
        float8 inputs (InvalidGraph, seen on the H100 image); basic level runs the portable graph as written.
        """
        try:
            return ort.InferenceSession(model_path, so, providers=providers)
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
            return ort.InferenceSession(model_path, so, providers=providers)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        return self._run(None, feeds)

    def _close(self) -> None:
        self._session = None
        self._run = None
        self._sampler = None


@register_backend
class OrtGpuBackend(_OrtBackend):
    """onnxruntime-gpu with the TensorRT (when its libraries load) or CUDA execution provider."""

    name = "onnxruntime-gpu"
    priority = 20
    providers = (eps.TRT_EP, eps.CUDA_EP, eps.CPU_EP)

    @classmethod
    def available(cls) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed"
        ort = cls._ort()
        have = ort.get_available_providers()
        gpu = [p for p in (eps.TRT_EP, eps.CUDA_EP) if p in have]
        if not gpu:
            return "onnxruntime has no CUDA/TensorRT execution provider (install onnxruntime-gpu)"
        problems = [f"{p}: {why}" for p in gpu if (why := eps.provider_problem(ort, p)) is not None]
        if len(problems) == len(gpu):
            return "no GPU execution provider can load: " + "; ".join(problems)
        return None

    def _providers(self, ort: Any, version: Any, options: BackendOptions) -> list[Any]:
        chosen, skipped = eps.gpu_providers(ort, version, options.device_id)
        for why in skipped:
            log.info("%s: not asking for %s", self.name, why)
        return chosen


@register_backend
class OrtCpuBackend(_OrtBackend):
    """ONNX Runtime on the CPU: runs every bundle's ONNX anywhere."""

    name = "onnxruntime-cpu"
    priority = 30
    providers = ("CPUExecutionProvider",)
    #: a bundle's CPU graph (FP32 compute, fused) when it has one: a GPU bundle's graph runs here as written
    #: only at a speed nobody can use (FP8 QDQ in an FP16 graph: about 1 tok/s)
    engine_device = "cpu"

    @classmethod
    def available(cls) -> str | None:
        return None if importlib.util.find_spec("onnxruntime") is not None else "onnxruntime is not installed"
