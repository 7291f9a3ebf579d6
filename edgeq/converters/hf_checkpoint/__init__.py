"""Quantized Hugging Face checkpoints out: the weights edgeq's QDQ ONNX holds, as safetensors + config.json in
the formats transformers and vLLM read natively (compressed-tensors, AutoAWQ GEMM, fine-grained FP8).

``api.quantize_to_hf(model, scheme, out)`` quantizes once and writes both files from the same plans:
``out/`` is the checkpoint, ``out/onnx/`` the QDQ ONNX of the same weights (``snap`` first puts the plans
on what the checkpoint format can store, so nothing is rounded twice). This ``__init__`` imports nothing.
"""
