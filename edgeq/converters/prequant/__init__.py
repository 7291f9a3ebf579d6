"""Pre-quantized checkpoints in: fine-grained FP8, AutoAWQ GEMM and compressed-tensors models, read on the CPU.

``load.load_prequantized`` reads a model directory whose ``config.json`` has a ``quantization_config`` without
transformers' quantizers (they refuse FP8 without a GPU), dequantizes every published linear exactly to build
the FP32 torch model edgeq exports and calibrates, and keeps the published codes, scales and zero points
(``formats.PublishedLinear``). ``scheme`` turns them into fixed LinearPlans (the ``prequantized`` scheme);
``target`` decides, per target, whether they are kept or re-quantized.

No module here is imported by this package's ``__init__``: ``sources`` imports ``load`` lazily, and ``load``
never imports ``sources`` (no import cycle).
"""
