"""edgeq.sdk: the device runtime. Loads the active engine from the store and serves generate/embed/infer.

Imports here must stay light: no torch, transformers or optimum, ever (a test enforces it).
Heavy optional libraries (onnxruntime, tensorrt, tensorrt_rtx) are imported where they are used.
"""
from edgeq.errors import EdgeqError

__all__ = ["EdgeqError"]
