"""Run plans in torch: swap each planned Linear's weight for its dequantized value and fake-quantize its
input (W8A8), exactly as the emitted QDQ graph computes. Used by sensitivity and the accuracy budget."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from edgeq.converters.quantize.calibrate import model_inputs
from edgeq.converters.quantize.numerics import LinearPlan
from edgeq.converters.sources import TEXT_GENERATION, LoadedModel


@contextlib.contextmanager
def simulated(model: Any, plans: dict[str, LinearPlan]) -> Iterator[None]:
    """Within the block the model computes with ``plans`` applied; the FP weights come back after.

    Each planned Linear gets a new weight Parameter (never ``.data`` of the old one): an LM head tied to the
    embedding must not quantize the embedding lookup with it.
    """
    saved: dict[str, torch.nn.Parameter] = {}
    handles = []
    try:
        for name, plan in plans.items():
            mod = model.get_submodule(name)
            saved[name] = mod.weight
            mod.weight = torch.nn.Parameter(plan.dequant().to(saved[name].dtype), requires_grad=False)
            if plan.act_scale is not None or plan.act_group is not None:
                def pre(_m: Any, args: tuple[Any, ...], p: LinearPlan = plan) -> tuple[Any, ...]:
                    return (p.quantize_input(args[0]),) + tuple(args[1:])
                handles.append(mod.register_forward_pre_hook(pre))
        yield
    finally:
        for h in handles:
            h.remove()
        for name, w in saved.items():
            model.get_submodule(name).weight = w


def forward_outputs(loaded: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    """Log-probabilities [n, seq, vocab] of an LM, or pooled embeddings [n, hidden] (normalised) of an encoder."""
    with torch.no_grad():
        if loaded.task == TEXT_GENERATION:
            out = [torch.log_softmax(loaded.model(input_ids=ids[i:i + 1], use_cache=False).logits.float(), -1)
                   for i in range(ids.shape[0])]
            return torch.cat(out)
        feeds = model_inputs(loaded, ids)
        hidden = loaded.model(**feeds).last_hidden_state.float()
        emb = hidden[:, 0] if loaded.pooling == "cls" else hidden.mean(dim=1)
        return torch.nn.functional.normalize(emb, dim=-1)


def divergence(loaded: LoadedModel, ref: torch.Tensor, got: torch.Tensor) -> float:
    """Mean KL(ref || got) per token for LMs; 1 - mean cosine for encoders (both: 0 means identical)."""
    if loaded.task == TEXT_GENERATION:
        return float((ref.exp() * (ref - got)).sum(-1).mean())
    return float(1.0 - (ref * got).sum(-1).mean())


def nll(logprobs: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean next-token negative log-likelihood of ``ids`` under ``logprobs``."""
    lp = logprobs[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    return float(-lp.mean())


def compare_simulated(loaded: LoadedModel, plans: dict[str, LinearPlan], ids: torch.Tensor) -> dict[str, Any]:
    """What ``evaluate.compare_lm`` / ``compare_embeddings`` report, computed by the torch model with ``plans``
    simulated against the FP model, on ``ids`` [n, seq]: for schemes whose graph ONNX Runtime CPU cannot run."""
    import math

    ref = forward_outputs(loaded, ids)
    with simulated(loaded.model, plans):
        got = forward_outputs(loaded, ids)
    if loaded.task == TEXT_GENERATION:
        nll_r, nll_c = nll(ref, ids), nll(got, ids)
        return {"mean_kl": divergence(loaded, ref, got),
                "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
                "ppl_candidate": math.exp(nll_c), "ppl_reference": math.exp(nll_r),
                "ppl_increase_pct": 100.0 * (math.exp(nll_c - nll_r) - 1.0), "tokens": int(ids.numel())}
    cos = (ref * got).sum(-1)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "n": int(cos.numel())}
