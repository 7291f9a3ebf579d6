"""Runtime backends, registered in preference order: TensorRT engine, ONNX Runtime GPU, ONNX Runtime CPU.

Importing this package imports no execution library; each backend imports its own when opened.
"""

from edgeq.sdk.runtime.backends.base import BACKENDS, Backend, BackendOptions, register_backend, select_backend
from edgeq.sdk.runtime.backends import ort as _ort  # noqa: F401  (registers onnxruntime backends)
from edgeq.sdk.runtime.backends import trt as _trt  # noqa: F401  (registers TensorRT backends)

__all__ = ["BACKENDS", "Backend", "BackendOptions", "register_backend", "select_backend"]
