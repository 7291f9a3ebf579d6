"""edgeq.sdk.trt: build TensorRT / TensorRT-RTX engines from QDQ ONNX (host and device), no torch.

``plan`` is standard library only; ``builder`` imports the TensorRT flavour lazily, when it builds.
"""

from edgeq.sdk.trt.plan import BuildPlan, InputShape, OptimizationProfile

__all__ = ["BuildPlan", "InputShape", "OptimizationProfile"]
