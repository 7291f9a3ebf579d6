"""Mixture-of-experts blocks in a form that exports to ONNX and builds in TensorRT: a module swap.

Hugging Face's sparse MoE blocks loop over the experts the router hit, with ``nonzero``/``where`` and
``index_add_``: traced as is, the graph bakes in the routing of the example input; optimum's patch loops over
every expert but still gathers each expert's tokens with ``NonZero``, which TensorRT-RTX 1.7 refuses.
:class:`DenseMoe` computes the same function with static shapes only: softmax, ``TopK``, a dense
``[tokens, experts]`` weight matrix (zero where an expert was not chosen, built by comparing the top-k indices
with ``0..E-1``: no scatter, no one-hot), and every expert applied to every token, each output kept where its
weight is non-zero. Experts are summed in ascending order, as HF's ``index_add_`` does; PyTorch results agree
with HF's to float rounding (the experts' GEMMs run on all rows instead of a subset).

Why dense (measured by ``benchmarks/bench_moe.py``, ONNX Runtime CPU, 1 thread, FP32 graphs): it is the faster
prefill (1.9x at 128 experts / top-8, 3.8x on tiny-qwen3-moe) and keeps one ``MatMul`` per expert linear under
that linear's module path, so the QDQ emitter gives each expert its own scales exactly as it does a dense MLP,
and TensorRT sees ordinary weight-quantized GEMMs. TopK + Gather of stacked weights decodes faster (5.3x at 128
experts / top-8, where dense computes 16x the expert FLOPs), but (not measured, from the documented limits) each
token copies k experts' weights (a 1024-token prefill of Qwen3-30B-A3B would gather ~77 GB per layer in FP16),
and per-expert quantized weights would need per-token gathered scales, which TensorRT's Dequantize layer does
not take (its scales are build-time constants of rank <= 2).

The routing (router linear, softmax, top-k, the dense weights) runs in a child module named ``router``:
the FP16 rewrite keeps it an FP32 island (``quantize.half.FP32_MODULES``), as HF computes the routing softmax
in FP32, and the quantizers never touch the router (``router_names``).

The same swap serves calibration (``calibrating_experts``): every expert sees every calibration token, so the
experts that the text rarely routes to still get statistics (llm-compressor's MoE calibration modules do the
same with ``calibrate_all_experts``), while the block's output keeps the true routing.

Blocks are found through a registry keyed by the HF class name (``register_moe_block``), so that a new
architecture adds an entry, not a branch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from edgeq.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class MoeSpec:
    """How to read one HF sparse MoE block: its router and experts, top-k, whether the top-k weights are
    renormalised, and each expert's up/down projection names (for scale folding)."""

    router: str
    experts: str
    top_k: Callable[[Any], int]
    normalize: Callable[[Any], bool]
    up: str = "up_proj"
    down: str = "down_proj"


_BLOCKS: dict[str, MoeSpec] = {}


def register_moe_block(class_name: str, spec: MoeSpec) -> MoeSpec:
    """Teach edgeq one HF MoE block class (matched by ``type(block).__name__``: transformers is not imported)."""
    _BLOCKS[class_name] = spec
    return spec


register_moe_block("Qwen3MoeSparseMoeBlock", MoeSpec(
    router="gate", experts="experts", top_k=lambda m: int(m.top_k), normalize=lambda m: bool(m.norm_topk_prob)))


class Router(torch.nn.Module):
    """Router linear -> softmax (FP32) -> top-k -> dense ``[T, E]`` routing weights (0 where not chosen)."""

    def __init__(self, gate: torch.nn.Linear, top_k: int, normalize: bool) -> None:
        super().__init__()
        if not 0 < top_k <= gate.out_features:
            raise UnsupportedArchitectureError(f"MoE top-k {top_k} is not in [1, {gate.out_features}]")
        self.gate = gate
        self.top_k = top_k
        self.normalize = normalize
        self.register_buffer("expert_ids", torch.arange(gate.out_features), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(router logits [T, E], dense routing weights [T, E] in ``x``'s dtype)."""
        logits = self.gate(x)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        top_w, top_i = torch.topk(probs, self.top_k, dim=-1)
        if self.normalize:
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        hit = (top_i.unsqueeze(-1) == self.expert_ids).to(top_w.dtype)  # [T, k, E]: one 1 per (token, slot)
        return logits, (hit * top_w.unsqueeze(-1)).sum(dim=1).to(x.dtype)


class DenseMoe(torch.nn.Module):
    """A sparse MoE block computed densely with static shapes (see the module docstring).

    The expert modules are the original objects under their original attribute, so that their parameter paths,
    ONNX node names and the quantizer's view of their linears are unchanged by the swap.
    """

    def __init__(self, gate: torch.nn.Linear, experts: torch.nn.ModuleList, top_k: int, normalize: bool,
                 spec: MoeSpec, original: torch.nn.Module) -> None:
        super().__init__()
        self.router = Router(gate, top_k, normalize)
        self.experts = experts
        self.spec = spec
        self._original = [original]  # a list: not a registered child (its parameters are already ours)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        logits, dense = self.router(x)
        out = torch.zeros_like(x)
        zero = torch.zeros((), dtype=x.dtype)
        for e, expert in enumerate(self.experts):
            w = dense[:, e:e + 1]
            # where, not a plain product: an expert evaluated on a token it was not routed to may overflow in an
            # FP16 engine, and inf * 0 is NaN; unchosen outputs are dropped, never multiplied in
            out = out + torch.where(w > 0, expert(x) * w, zero)
        return out.reshape(shape), logits


def _spec(block: Any) -> MoeSpec:
    return block.spec if isinstance(block, DenseMoe) else _BLOCKS[type(block).__name__]


def moe_blocks(model: Any) -> dict[str, Any]:
    """{module path: block} of every registered sparse MoE block (original or swapped) of ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, DenseMoe) or type(m).__name__ in _BLOCKS}


def is_moe(model: Any) -> bool:
    return bool(moe_blocks(model))


def _set(model: Any, path: str, module: Any) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@contextlib.contextmanager
def dense_moe(model: Any) -> Iterator[dict[str, DenseMoe]]:
    """Within the block, every sparse MoE block of ``model`` is a :class:`DenseMoe`; the originals come back after.

    Yields {block path: DenseMoe}. Nothing is copied: the swapped blocks share the router and expert modules.
    A model without MoE blocks is left alone (the context is a no-op).
    """
    blocks: dict[str, DenseMoe] = {}
    created: list[str] = []
    try:
        for path, block in moe_blocks(model).items():
            if not isinstance(block, DenseMoe):
                spec = _spec(block)
                dense = DenseMoe(getattr(block, spec.router), getattr(block, spec.experts), spec.top_k(block),
                                 spec.normalize(block), spec, block)
                _set(model, path, dense)
                created.append(path)
                block = dense
            blocks[path] = block
        yield blocks
    finally:
        for path in created:
            _set(model, path, blocks[path]._original[0])


def router_names(model: Any) -> set[str]:
    """Module paths of the router linears (kept at high precision: a changed top-k choice swaps whole experts)."""
    out = set()
    for path, block in moe_blocks(model).items():
        out.add(f"{path}.router.gate" if isinstance(block, DenseMoe) else f"{path}.{_spec(block).router}")
    return out


def expert_fold_groups(model: Any, block_path: str) -> list[tuple[str, str, list[str]]]:
    """Per-expert scale-folding groups of one transformer block, as ``calibrate.fold_groups`` returns them:
    each expert's up projection -> its down projection (SwiGLU's elementwise product lets ``1/s`` move into the
    up rows). The norm -> gate/up group of a MoE layer is left out: the norm also feeds the router, which would
    need the same scale folded in."""
    groups: list[tuple[str, str, list[str]]] = []
    for path, block in moe_blocks(model).items():
        if not path.startswith(block_path + "."):
            continue
        spec = _spec(block)
        for e, _expert in enumerate(getattr(block, spec.experts)):
            base = f"{path}.{spec.experts}.{e}"
            groups.append((f"{base}.{spec.up}", "linear", [f"{base}.{spec.down}"]))
    return groups


# -- routing statistics ---------------------------------------------------------------------------------
@dataclass
class RoutingLog:
    """Top-k expert choices per MoE block, one ``[tokens, k]`` tensor per forward call."""

    top_k: dict[str, int]
    num_experts: dict[str, int]
    calls: dict[str, list[torch.Tensor]]

    def counts(self) -> dict[str, list[int]]:
        """Tokens routed to each expert, per block, over all recorded calls."""
        return {p: torch.bincount(torch.cat(c).flatten(), minlength=self.num_experts[p]).tolist() if c
                else [0] * self.num_experts[p] for p, c in self.calls.items()}

    def distinct_routings(self) -> int:
        """How many different top-k expert sets the recorded tokens chose, counted in the first block."""
        if not self.calls:
            return 0
        first = next(iter(self.calls.values()))
        sets = {tuple(sorted(row.tolist())) for c in first for row in c}
        return len(sets)

    def summary(self) -> dict[str, Any]:
        return {"calls": len(next(iter(self.calls.values()), [])), "distinct_topk_sets": self.distinct_routings(),
                "tokens_per_expert": self.counts()}


@contextlib.contextmanager
def record_routing(model: Any) -> Iterator[RoutingLog | None]:
    """Record each MoE block's top-k choices on every forward within the block (None for a dense model).

    A forward hook on the block reads the router logits it returns (HF's blocks and DenseMoe both return
    ``(hidden, router_logits)``) and ranks them as the block does (softmax then top-k).
    """
    blocks = moe_blocks(model)
    if not blocks:
        yield None
        return
    log = RoutingLog(top_k={}, num_experts={}, calls={p: [] for p in blocks})
    handles = []
    for path, block in blocks.items():
        k = block.router.top_k if isinstance(block, DenseMoe) else _spec(block).top_k(block)
        log.top_k[path] = k
        log.num_experts[path] = len(getattr(block, _spec(block).experts))

        def hook(_m: Any, _a: Any, out: Any, path: str = path, k: int = k) -> None:
            logits = out[1].detach().reshape(-1, out[1].shape[-1])
            log.calls[path].append(torch.topk(torch.softmax(logits.float(), dim=-1), k, dim=-1).indices)

        handles.append(block.register_forward_hook(hook))
    try:
        yield log
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def calibrating_experts(loaded: Any, calib_ids: torch.Tensor | None) -> Iterator[dict[str, Any] | None]:
    """Calibrate a MoE model with every token through every expert; yields the report (None for a dense model).

    Before the swap, the FP model runs once on ``calib_ids`` to count the tokens the router actually sends to
    each expert (what the calibration text alone would have given each expert). Within the block every MoE
    block is a DenseMoe, so each expert's linears see all ``calib_ids.numel()`` calibration tokens.
    """
    model = loaded.model
    if not is_moe(model):
        yield None
        return
    report: dict[str, Any] = {
        "method": "every calibration token through every expert; the block output keeps the router's top-k",
        "routers_kept_unquantized": sorted(router_names(model)),
        "tokens_seen_per_expert": None if calib_ids is None else int(calib_ids.numel()),
        "routed_tokens_per_expert": None,
    }
    if calib_ids is not None:
        with record_routing(model) as log, torch.no_grad():
            for row in calib_ids:
                model(input_ids=row[None], use_cache=False)
        assert log is not None
        counts = log.counts()
        report["routed_tokens_per_expert"] = counts
        report["never_routed"] = {p: [e for e, c in enumerate(v) if c == 0] for p, v in counts.items() if 0 in v}
    with dense_moe(model):
        yield report
