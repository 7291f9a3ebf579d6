"""edgeq.converters: host-side export to ONNX, quantization to QDQ ONNX, validation and engine builds."""
