"""edgeq.sdk.engine: build TensorRT / TensorRT-RTX engines from QDQ ONNX, on the host or on the device, without torch.

``builder`` imports the TensorRT flavour lazily, when it builds; the plan it builds from is part of the bundle
format (``edgeq.sdk.bundle.plan``).
"""
