"""Calibration data and streaming, block-by-block activation capture.

The calibration text is tokenized once and cut into fixed-length sequences; the tail is held out for
budget and validation checks. Statistics are gathered one transformer block at a time (the block's
input is captured once, each block is run on it, its linears' inputs are seen through hooks and freed
before the next block), so memory is bounded by one block's activations, not the whole model's.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch

from edgeq.converters.sources import TEXT_GENERATION, LoadedModel
from edgeq.errors import QuantizationError, UnsupportedArchitectureError

log = logging.getLogger(__name__)

#: calibration/held-out sequence length of encoders
ENCODER_SEQ_LEN = 128
#: the LM head / pooler are quantized only when asked
_HEAD_NAMES = ("lm_head", "pooler.dense")

#: "scale folding" groups per model type: (block-relative predecessor, its kind, linears that consume its
#: output). The inverse of a per-input-channel scale can be folded into the predecessor only when its
#: output feeds nothing else (pre-norm LLMs: the norms; v->o when shapes match; up->down through SwiGLU's
#: elementwise product). BERT's LayerNorm output is also the residual, so only value->attention.output.
FOLD_GROUPS: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "llama": (
        ("input_layernorm", "norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        ("self_attn.v_proj", "linear", ("self_attn.o_proj",)),
        ("post_attention_layernorm", "norm", ("mlp.gate_proj", "mlp.up_proj")),
        ("mlp.up_proj", "linear", ("mlp.down_proj",)),
    ),
    "bert": (("attention.self.value", "linear", ("attention.output.dense",)),),
}
# qwen3_moe: attention groups (and dense-MLP layers' groups); its experts' up->down come from converters.moe
for _alias in ("qwen3", "qwen2", "mistral", "qwen3_moe"):
    FOLD_GROUPS[_alias] = FOLD_GROUPS["llama"]


def default_calibration_text() -> str:
    """The calibration text edgeq ships (CPython stdlib docstrings; disjoint from eval.txt)."""
    return resources.files("edgeq.converters.data").joinpath("calibration.txt").read_text(encoding="utf-8")


@dataclass
class CalibData:
    """Calibration sequences ``[n, seq]`` and held-out sequences for checks (never the eval text)."""

    calib: torch.Tensor
    holdout: torch.Tensor


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_calib_data(loaded: LoadedModel, text: str | None, *, tokens: int, seq_len: int, holdout: int) -> CalibData:
    """Tokenize ``text`` (default: the shipped calibration text) into calibration + held-out sequences.

    Raises QuantizationError when the text has fewer tokens than one calibration sequence plus one
    held-out sequence.
    """
    text = default_calibration_text() if text is None else text
    max_pos = getattr(loaded.model.config, "max_position_embeddings", None) or seq_len
    seq_len = min(seq_len, max_pos)
    if loaded.task != TEXT_GENERATION:
        # embedding models serve sentences/paragraphs: calibrate and check them at that length (pooling
        # over 512 tokens averages quantization noise away and overstates the cosine)
        seq_len = min(seq_len, ENCODER_SEQ_LEN)
    ids = _token_ids(loaded.tokenizer, text)
    hold_len = min(seq_len, holdout)
    need = seq_len + hold_len
    if len(ids) < need:
        raise QuantizationError(
            f"calibration text too short: {len(ids)} tokens, need at least {need} "
            f"({seq_len} calibration + {hold_len} held out)",
            hint="pass a longer --calib file or omit it to use the shipped calibration text",
        )
    hold_n = max(1, min(holdout, len(ids) - seq_len) // hold_len)
    held = torch.tensor(ids[len(ids) - hold_n * hold_len:], dtype=torch.long).reshape(hold_n, hold_len)
    avail = ids[: len(ids) - hold_n * hold_len]
    n = max(1, min(tokens, len(avail)) // seq_len)
    calib = torch.tensor(avail[: n * seq_len], dtype=torch.long).reshape(n, seq_len)
    if loaded.task != TEXT_GENERATION:
        # encoders always see [CLS] ... [SEP]; those positions carry the largest activations, so the
        # calibration sequences must have them too or the ranges come out too small
        calib, held = _with_specials(loaded.tokenizer, calib), _with_specials(loaded.tokenizer, held)
    return CalibData(calib=calib, holdout=held)


def _with_specials(tokenizer: Any, seqs: torch.Tensor) -> torch.Tensor:
    n_special = len(tokenizer.build_inputs_with_special_tokens([]))
    rows = [tokenizer.build_inputs_with_special_tokens(r[: seqs.shape[1] - n_special].tolist()) for r in seqs]
    return torch.tensor(rows, dtype=torch.long)


def model_inputs(loaded: LoadedModel, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if loaded.task != TEXT_GENERATION and "token_type_ids" in _forward_params(loaded.model):
        feeds["token_type_ids"] = torch.zeros_like(ids)
    return feeds


def _forward_params(model: Any) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


# -- which linears ------------------------------------------------------------------------------
def is_head(name: str) -> bool:
    """Whether a linear is the model's output head (``lm_head``, an encoder's ``pooler.dense``)."""
    return name.endswith(_HEAD_NAMES)


def quantizable_linears(loaded: LoadedModel, keep_globs: tuple[str, ...], quantize_head: bool) -> tuple[dict[str, torch.nn.Linear], dict[str, str]]:
    """(linears to quantize, {kept linear: reason}). Raises QuantizationError when none is left."""
    from edgeq.converters.moe import router_names

    chosen: dict[str, torch.nn.Linear] = {}
    kept: dict[str, str] = {}
    routers = router_names(loaded.model)
    for name, mod in loaded.model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        if name in routers:
            kept[name] = "MoE router (always kept: a changed top-k choice swaps whole experts)"
        elif not quantize_head and is_head(name):
            kept[name] = "head (quantize_lm_head off)"
        elif any(fnmatch.fnmatchcase(name, g) for g in keep_globs):
            kept[name] = "keep_fp16 glob"
        else:
            chosen[name] = mod
    if not chosen:
        raise QuantizationError(
            f"{loaded.name} has no linear layers to quantize ({len(kept)} kept by the config)",
            hint="check --keep-fp16 globs; the model needs nn.Linear layers",
        )
    return chosen, kept


def find_blocks(model: Any) -> tuple[str, torch.nn.ModuleList]:
    """The repeated transformer blocks: the ModuleList holding the most Linear layers. (Not the longest list:
    a MoE layer's expert list is longer than the decoder's layer list, and lives inside it.)"""
    best: tuple[str, torch.nn.ModuleList] | None = None
    best_n = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) and any(
            isinstance(m, torch.nn.Linear) for m in mod[0].modules()
        ):
            n = sum(isinstance(m, torch.nn.Linear) for m in mod.modules())
            if best is None or n > best_n:
                best, best_n = (name, mod), n
    if best is None:
        raise UnsupportedArchitectureError(f"no transformer block list found in {type(model).__name__}")
    return best


class _Stop(Exception):
    pass


def capture_block_inputs(loaded: LoadedModel, ids: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]:
    """Run the model up to its first block and return that block's (hidden_states, args, kwargs)."""
    _, blocks = find_blocks(loaded.model)
    seen: dict[str, Any] = {}

    def pre(_mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen["hs"] = args[0] if args else kwargs.pop("hidden_states")
        seen["args"], seen["kwargs"] = tuple(args[1:]), dict(kwargs)
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
    feeds = model_inputs(loaded, ids)
    if loaded.task == TEXT_GENERATION:
        feeds["use_cache"] = False  # blocks are re-run on their own: no KV cache object to thread through
    try:
        with torch.no_grad():
            loaded.model(**feeds)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "hs" not in seen:
        raise UnsupportedArchitectureError(f"{loaded.name}: the first block was never called")
    kwargs = {k: v for k, v in seen["kwargs"].items() if k not in ("past_key_value", "past_key_values")}
    return seen["hs"], seen["args"], kwargs


def run_block(block: Any, hs: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        out = block(hs, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def iterate_blocks(
    loaded: LoadedModel, ids: torch.Tensor,
) -> Iterator[tuple[int, str, Any, Callable[[], dict[str, torch.Tensor]], Callable[[], None]]]:
    """Yield per block: (index, block path, block, collect() -> {linear name: input rows [T, in]}, advance()).

    ``collect`` runs the block once with hooks on its linears; ``advance`` runs it again (after the caller
    changed its weights) to produce the next block's input. Only one block's activations are alive.
    """
    prefix, blocks = find_blocks(loaded.model)
    hs, args, kwargs = capture_block_inputs(loaded, ids)
    for i, block in enumerate(blocks):
        path = f"{prefix}.{i}"
        log.info("calibrating block %d/%d (%s)", i + 1, len(blocks), path)
        state = {"hs": hs}

        def collect(block: Any = block, path: str = path) -> dict[str, torch.Tensor]:
            inputs: dict[str, torch.Tensor] = {}
            shared: dict[int, torch.Tensor] = {}
            handles = []
            for rel, mod in block.named_modules():
                if isinstance(mod, torch.nn.Linear):
                    def hook(_m: Any, a: tuple[Any, ...], _o: Any, key: str = f"{path}.{rel}") -> None:
                        # linears reading one tensor (q/k/v) share one object: callers group by identity
                        ptr = a[0].data_ptr()
                        if ptr not in shared:
                            shared[ptr] = a[0].detach().reshape(-1, a[0].shape[-1])
                        inputs[key] = shared[ptr]
                    handles.append(mod.register_forward_hook(hook))
            try:
                run_block(block, state["hs"], args, kwargs)
            finally:
                for h in handles:
                    h.remove()
            return inputs

        def advance(block: Any = block) -> None:
            state["hs"] = run_block(block, state["hs"], args, kwargs)

        yield i, path, block, collect, advance
        hs = state["hs"]


def fold_groups(loaded: LoadedModel, block_path: str) -> list[tuple[str, str, list[str]]]:
    """Foldable (predecessor path, kind, [linear paths]) groups of one block for this model type."""
    from edgeq.converters.moe import expert_fold_groups

    groups = []
    for prev, kind, consumers in FOLD_GROUPS.get(loaded.model_type, ()):
        groups.append((f"{block_path}.{prev}", kind, [f"{block_path}.{c}" for c in consumers]))
    return groups + expert_fold_groups(loaded.model, block_path)


def predecessor_fits(model: Any, path: str, in_features: int) -> bool:
    """Whether the predecessor's output channels match the consumers' inputs (not so for v->o under GQA)."""
    return model.get_submodule(path).weight.shape[0] == in_features


def scale_predecessor(model: Any, path: str, kind: str, s: torch.Tensor) -> bool:
    """Divide the predecessor's output channels by ``s`` (norm weight/bias or linear rows). False if shapes differ."""
    mod = model.get_submodule(path)
    with torch.no_grad():
        if kind == "norm":
            if mod.weight.shape[0] != s.shape[0]:
                return False
            mod.weight.div_(s)
            if getattr(mod, "bias", None) is not None:
                mod.bias.div_(s)
        else:
            if mod.weight.shape[0] != s.shape[0]:
                return False
            mod.weight.div_(s[:, None])
            if mod.bias is not None:
                mod.bias.div_(s)
    return True


def group_by_input(inputs: dict[str, torch.Tensor], linears: Any) -> list[list[str]]:
    """Names in ``linears`` grouped by the input tensor object they read in ``collect()``'s output (q/k/v share
    one): one activation range per group, as one QDQ pair serves them."""
    groups: dict[int, list[str]] = {}
    for name, x in inputs.items():
        if name in linears:
            groups.setdefault(id(x), []).append(name)
    return list(groups.values())


def sample_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """An evenly strided subset of at most ``n`` rows (deterministic)."""
    if x.shape[0] <= n:
        return x
    idx = torch.linspace(0, x.shape[0] - 1, n).round().long()
    return x[idx]
