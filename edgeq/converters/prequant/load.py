"""Load a pre-quantized checkpoint on the CPU: dequantized FP32 torch model + the published quantization.

transformers' own quantizers cannot do this here: its fine-grained FP8 loader refuses to run without a GPU
(which edgeq used to report as "corrupt or truncated weights"), and AWQ needs a GPU kernel package. edgeq
reads the safetensors itself, builds the model from its config without the ``quantization_config``, and loads
the exactly dequantized weights into it. Imported lazily by ``sources`` (never the other way round).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from edgeq.converters.prequant.formats import Published, parse_quantization_config
from edgeq.converters.prequant.readers import TensorSource, is_ignored, published_tensor_names, read_published
from edgeq.errors import CorruptWeightsError, ModelNotFoundError

log = logging.getLogger(__name__)
#: what a checkpoint directory needs locally (a hub id is fetched with these patterns)
_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]


def checkpoint_dir(path_or_id: str | Path, revision: str | None = None) -> Path:
    """A local directory for a model dir or hub id (the hub's cache, honouring HF_HUB_OFFLINE)."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id), revision=revision, allow_patterns=_PATTERNS))
    except Exception as exc:  # hub errors (offline, not found, gated) all mean: no local copy to read
        raise ModelNotFoundError(f"cannot fetch pre-quantized checkpoint {path_or_id}: {exc}") from exc


def load_prequantized(path_or_id: str | Path, config: Any, task: str, revision: str | None = None) -> tuple[Any, Published]:
    """(FP32 eval-mode torch model with the dequantized weights, the published quantization).

    Args:
        path_or_id: the model directory or hub id.
        config: its transformers config (with ``quantization_config``).
        task: ``text-generation`` or ``feature-extraction`` (picks the auto class).
    Raises UnsupportedArchitectureError for formats edgeq does not read, CorruptWeightsError for tensors that
    are missing, misshapen or unreadable.
    """
    import torch
    import transformers

    qc = config.quantization_config
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    fmt = parse_quantization_config(qc)
    directory = checkpoint_dir(path_or_id, revision)
    src = TensorSource(directory)
    published = {m: p for m, p in read_published(src, fmt).items() if not is_ignored(m, fmt.ignore)}
    if not published:
        raise CorruptWeightsError(f"{path_or_id} declares {fmt.name} quantization but publishes no quantized linear")
    consumed = {n for m in published for n in published_tensor_names(m, fmt)}
    state = {m + ".weight": p.dequant() for m, p in published.items()}
    for key in src.keys():
        if key not in consumed and key not in state:
            t = src.get(key)
            state[key] = t.float() if t.is_floating_point() else t

    plain = copy.deepcopy(config)
    del plain.quantization_config  # build the plain architecture: the weights arrive dequantized
    auto = transformers.AutoModelForCausalLM if task == "text-generation" else transformers.AutoModel
    model = auto.from_config(plain, dtype=torch.float32)
    prefix = getattr(model, "base_model_prefix", "")
    if task != "text-generation" and prefix and all(k.startswith(prefix + ".") for k in state):
        state = {k[len(prefix) + 1:]: v for k, v in state.items()}  # an encoder checkpoint saved with its prefix
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise CorruptWeightsError(f"{path_or_id}: tensors do not fit the architecture: "
                                  + ", ".join(f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in bad[:3]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ()) if getattr(plain, "tie_word_embeddings", False) else set()
    missing = [k for k in missing if k not in tied and not k.endswith("rotary_emb.inv_freq")]
    if missing:
        raise CorruptWeightsError(f"{path_or_id}: weights missing from the checkpoint: {missing[:5]}")
    if unexpected:
        log.warning("%s: ignoring %d checkpoint tensors the model has no place for: %s", path_or_id,
                    len(unexpected), unexpected[:5])
    if tied:
        model.tie_weights()
    model.eval()
    source_dtype = str(getattr(config, "torch_dtype", None) or getattr(config, "dtype", None) or "float32")
    return model, Published(fmt, published, source_dtype=source_dtype.removeprefix("torch."))
