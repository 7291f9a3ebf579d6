"""Fast per-layer sensitivity: one forward and one backward pass per calibration sequence scores every linear
at every candidate precision at once (the gradient method of ModelOpt's AutoQuantize).

For a linear with output ``Y`` and a candidate plan whose output is ``Y_q``, a second-order Taylor expansion
of the loss with the Fisher information standing in for the Hessian gives
``ΔL ≈ ½ Σ_i E[g_i²] (Y_q - Y)_i²``, ``g = ∂L/∂Y`` for the next-token loss of the calibration text. The forward
hook computes ``Y_q - Y`` from the layer's own input (activation fake-quantized as the graph will), the
tensor hook on ``Y`` multiplies it with the incoming gradient: no weight gradient is ever formed, and the
cost is one extra matmul per linear and candidate.

Encoders have no labels to take a loss of; they are scored by ``sensitivity.layer_sensitivity`` (one
forward per layer and candidate), which is cheap at their size.

The same pass records which linears read one input tensor (q/k/v, gate/up): ``input_groups`` merges them,
and a MoE layer's experts, into the groups that choose a precision together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from edgeq.converters.quantize.numerics import LinearPlan
from edgeq.converters.sources import TEXT_GENERATION, LoadedModel

_EXPERT = re.compile(r"^(.*\.experts)\.\d+\..*$")


def fisher_scores(loaded: LoadedModel, levels: Mapping[str, Mapping[str, LinearPlan]], ids: torch.Tensor
                  ) -> tuple[dict[str, dict[str, float]], list[list[str]]]:
    """({level: {linear: score}}, input-sharing groups) over ``ids`` [n, seq] of an LM.

    ``levels`` maps a candidate label (a scheme name) to its plans; every label must plan the same linears.
    A score is in nats of next-token loss per sequence (up to the Fisher approximation); 0 means harmless.
    """
    if loaded.task != TEXT_GENERATION:
        raise ValueError("fisher_scores needs a language model (next-token loss)")
    model = loaded.model
    names = sorted(next(iter(levels.values())))
    scores = {lvl: dict.fromkeys(names, 0.0) for lvl in levels}
    shared: dict[int, set[str]] = {}
    alive: list[torch.Tensor] | None = []  # inputs kept alive while sharing is recorded: a freed address is reused
    handles = []
    emb = model.get_input_embeddings()
    handles.append(emb.register_forward_hook(lambda _m, _a, out: out.requires_grad_(True)))
    for name in names:
        mod = model.get_submodule(name)

        def hook(m: Any, args: tuple[Any, ...], out: torch.Tensor, name: str = name) -> None:
            x = args[0].detach()
            if alive is not None:
                alive.append(x)
                shared.setdefault(x.data_ptr(), set()).add(name)
            if not out.requires_grad:
                return
            with torch.no_grad():
                y = out.detach().float()
                deltas = {}
                for lvl, plans in levels.items():
                    plan = plans[name]
                    xq = plan.quantize_input(x.float())
                    yq = xq @ plan.dequant().to(torch.float32).T
                    if m.bias is not None:
                        yq = yq + m.bias.float()
                    deltas[lvl] = (yq - y).pow(2)

            def grad_hook(g: torch.Tensor, deltas: dict[str, torch.Tensor] = deltas) -> None:
                g2 = g.detach().float().pow(2)
                for lvl, d2 in deltas.items():
                    scores[lvl][name] += 0.5 * float((g2 * d2).sum())
                deltas.clear()  # free the cached differences as soon as the gradient has passed

            out.register_hook(grad_hook)
        handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    # activation gradients only: no weight gradient is formed (time and a model-sized buffer saved)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        for i in range(ids.shape[0]):
            seq = ids[i:i + 1]
            with torch.enable_grad():
                logits = model(input_ids=seq, use_cache=False).logits.float()
                alive = None  # sharing is recorded on the first sequence only
                loss = torch.nn.functional.cross_entropy(logits[0, :-1], seq[0, 1:], reduction="sum")
                loss.backward()
    finally:
        for h in handles:
            h.remove()
        for p in trainable:
            p.requires_grad_(True)
        model.train(was_training)
    n = max(1, ids.shape[0])
    scores = {lvl: {k: v / n for k, v in s.items()} for lvl, s in scores.items()}
    return scores, input_groups(names, shared.values())


def input_groups(names: list[str], sharing: Any) -> list[list[str]]:
    """Union of the linears that read one tensor (``sharing``: sets of names) and of a MoE layer's experts."""
    parent = {n: n for n in names}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    for members in sharing:
        members = [m for m in members if m in parent]
        for m in members[1:]:
            union(members[0], m)
    first_expert: dict[str, str] = {}
    for n in names:
        m = _EXPERT.match(n)
        if m:
            union(first_expert.setdefault(m.group(1), n), n)
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(find(n), []).append(n)
    return sorted(groups.values())


def record_input_sharing(loaded: LoadedModel, names: list[str], ids: torch.Tensor) -> list[list[str]]:
    """``input_groups`` from one forward pass (encoders, whose scores come without a backward pass)."""
    from edgeq.converters.quantize.calibrate import model_inputs

    shared: dict[int, set[str]] = {}
    alive: list[torch.Tensor] = []  # a freed input's address is reused: keep them until the pass ends
    handles = []
    for name in names:
        def hook(_m: Any, args: tuple[Any, ...], _o: Any, name: str = name) -> None:
            alive.append(args[0])
            shared.setdefault(args[0].data_ptr(), set()).add(name)
        handles.append(loaded.model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            loaded.model(**model_inputs(loaded, ids[:1]))
    finally:
        for h in handles:
            h.remove()
    return input_groups(names, shared.values())
