"""Which Hugging Face checkpoint to write, as a frozen, validated config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgeq.errors import ConfigError

COMPRESSED_TENSORS = "compressed-tensors"
AWQ = "awq"
FP8_BLOCK = "fp8"
#: format -> what it holds and who reads it natively
HF_FORMATS: dict[str, str] = {
    COMPRESSED_TENSORS: "compressed-tensors (INT4 pack-quantized W4A16, FP8 float-quantized): vLLM, transformers",
    AWQ: "AutoAWQ GEMM (INT4, zero points, FP16 scales): vLLM quantization='awq', transformers with a GPU AWQ kernel",
    FP8_BLOCK: "fine-grained FP8 (quant_method fp8, square block scales: 128x128, 64x64 for narrow models): transformers FineGrainedFP8 (GPU), vLLM",
}
DTYPES = ("float16", "bfloat16")
#: the block of the released fine-grained FP8 checkpoints (DeepSeek-V3, Qwen3-*-FP8); ``fp8-block`` goes smaller only
#: where a model's sizes are not multiples of it
FP8_BLOCK_SHAPE = (128, 128)


@dataclass(frozen=True)
class HfCheckpointConfig:
    """Args:
        format: one of ``HF_FORMATS``.
        dtype: the dtype of the unquantized tensors (norms, embeddings, the head) and of INT4 scales. The QDQ
            ONNX written alongside gets the same values (its FP32 weights are rounded to this dtype first), so
            the two files hold one set of weights. AutoAWQ GEMM kernels take FP16 only.
        prompts: prompts whose greedy continuation by the ONNX is recorded beside the checkpoint
            (``edgeq_greedy.json``), for loaders checked elsewhere (the GPU FP8 check).
        new_tokens: tokens generated per prompt for that record.
    """

    format: str = COMPRESSED_TENSORS
    dtype: str = "float16"
    prompts: tuple[str, ...] = ("def fibonacci(n):", "The capital of France is", "import numpy as np\n")
    new_tokens: int = 16

    def __post_init__(self) -> None:
        if self.format not in HF_FORMATS:
            raise ConfigError(f"unknown checkpoint format {self.format!r}; valid: {', '.join(HF_FORMATS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.format == AWQ and self.dtype != "float16":
            raise ConfigError("AutoAWQ GEMM checkpoints are FP16 (its kernels take FP16 scales and activations)")
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if self.new_tokens < 1:
            raise ConfigError(f"new_tokens must be >= 1, got {self.new_tokens}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prompts"] = list(self.prompts)
        return d
