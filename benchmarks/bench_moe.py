"""Which MoE formulation to export: speed on ONNX Runtime CPU of three numerically equivalent graphs.

- ``dense``: edgeq's :class:`~edgeq.converters.moe.DenseMoe`, one MatMul chain per expert on every token,
  outputs kept where the router chose the expert (what ``edgeq export`` writes);
- ``dense-stacked``: the same arithmetic as one batched MatMul over the stacked ``[E, in, out]`` weights;
- ``gather``: TopK, then Gather of the chosen experts' stacked weights per token (``[T, k, in, out]``) and a
  batched MatMul: only the chosen experts are computed, but every token copies k experts' weights.

Each is exported with optimum (KV cache), checked against the HF model, and timed in one ORT session at
1 intra-op thread: prefill (batch 1, 128 tokens, no past) and decode (1 token after 128 of past).
Models: the built-in ``tiny-qwen3-moe`` (8 experts, top-2) and a random ``mid`` Qwen3-MoE with Qwen3-30B-A3B's
expert count and top-k (128 experts, top-8) at a quarter of its widths, 2 layers.

    python benchmarks/bench_moe.py [--quick]
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Result, arg_parser, fmt, setup_env, time_median  # noqa: E402

PAST = 128
PREFILL = 128


def _stacked(experts: Any) -> tuple[Any, Any, Any]:
    import torch

    g = torch.stack([e.gate_proj.weight.T for e in experts]).detach().contiguous()  # [E, h, I]
    u = torch.stack([e.up_proj.weight.T for e in experts]).detach().contiguous()
    d = torch.stack([e.down_proj.weight.T for e in experts]).detach().contiguous()  # [E, I, h]
    return g, u, d


def _modules() -> dict[str, Any]:
    import torch

    from edgeq.converters.moe import DenseMoe

    class StackedDense(DenseMoe):
        def __init__(self, base: DenseMoe) -> None:
            r = base.router
            super().__init__(r.gate, base.experts, r.top_k, r.normalize, base.spec, base._original[0])
            g, u, d = _stacked(base.experts)
            self.register_buffer("w_gu", torch.cat([g, u], dim=-1))
            self.register_buffer("w_d", d)
            self.act = base.experts[0].act_fn

        def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            shape = hidden_states.shape
            x = hidden_states.reshape(-1, shape[-1])
            logits, dense = self.router(x)
            gu = torch.matmul(x.unsqueeze(0), self.w_gu)  # [E, T, 2I]
            gate, up = gu.chunk(2, dim=-1)
            y = torch.matmul(self.act(gate) * up, self.w_d)  # [E, T, h]
            w = dense.T.unsqueeze(-1)  # [E, T, 1]
            y = torch.where(w > 0, y * w, torch.zeros((), dtype=x.dtype)).sum(0)
            return y.reshape(shape), logits

    class Gather(DenseMoe):
        def __init__(self, base: DenseMoe) -> None:
            r = base.router
            super().__init__(r.gate, base.experts, r.top_k, r.normalize, base.spec, base._original[0])
            g, u, d = _stacked(base.experts)
            self.register_buffer("w_g", g)
            self.register_buffer("w_u", u)
            self.register_buffer("w_d", d)
            self.act = base.experts[0].act_fn

        def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            shape = hidden_states.shape
            x = hidden_states.reshape(-1, shape[-1])
            logits = self.router.gate(x)
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
            top_w, top_i = torch.topk(probs, self.router.top_k, dim=-1)
            if self.router.normalize:
                top_w = top_w / top_w.sum(dim=-1, keepdim=True)
            xe = x[:, None, None, :]  # [T, 1, 1, h]
            h = self.act(torch.matmul(xe, self.w_g[top_i])) * torch.matmul(xe, self.w_u[top_i])  # [T, k, 1, I]
            y = torch.matmul(h, self.w_d[top_i]).squeeze(2)  # [T, k, h]
            return (y * top_w.to(x.dtype).unsqueeze(-1)).sum(1).reshape(shape), logits

    return {"dense": None, "dense-stacked": StackedDense, "gather": Gather}


@contextlib.contextmanager
def _formulation(model: Any, cls: Any) -> Iterator[None]:
    from edgeq.converters.moe import dense_moe

    with dense_moe(model) as blocks:
        if cls is None:
            yield
            return
        saved = {}
        for path, block in blocks.items():
            parent, _, child = path.rpartition(".")
            saved[path] = block
            setattr(model.get_submodule(parent), child, cls(block))
        try:
            yield
        finally:
            for path, block in saved.items():
                parent, _, child = path.rpartition(".")
                setattr(model.get_submodule(parent), child, block)


def _mid_model() -> Any:
    from edgeq.converters.sources import _tiny

    import transformers

    def cfg(vocab: int) -> Any:
        return transformers.Qwen3MoeConfig(
            vocab_size=vocab, hidden_size=512, intermediate_size=1536, moe_intermediate_size=192,
            num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, num_hidden_layers=2,
            num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        )

    return _tiny("mid-qwen3-moe", cfg, None)


def _export(loaded: Any, cls: Any, out: Path) -> Path:
    from optimum.exporters.onnx import onnx_export_from_model

    with _formulation(loaded.model, cls), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_export_from_model(loaded.model, out, opset=21, task="text-generation-with-past", do_validation=False)
    return out / "model.onnx"


def _feeds(session: Any, loaded: Any, new: int, past: int) -> dict[str, Any]:
    import numpy as np

    from edgeq.converters.validate import lm_feeds

    cfg = loaded.model.config
    rng = np.random.default_rng(0)
    ids = rng.integers(3, cfg.vocab_size, size=(1, new), dtype=np.int64)
    kv = [(rng.standard_normal((1, cfg.num_key_value_heads, past, cfg.head_dim)).astype(np.float32),) * 2
          for _ in range(cfg.num_hidden_layers)] if past else []
    return lm_feeds(session, ids, kv, cfg.num_key_value_heads, cfg.head_dim)


def main() -> None:
    args = arg_parser(__doc__).parse_args()
    setup_env()
    import onnxruntime as ort

    from edgeq.converters.sources import load_model
    from edgeq.converters.validate import validate_export

    res = Result("moe", quick=args.quick)
    models = {"tiny-qwen3-moe": lambda: load_model("tiny-qwen3-moe")}
    if not args.quick:
        models["mid"] = _mid_model
    rows = []
    for name, make in models.items():
        loaded = make()
        n_params = sum(p.numel() for p in loaded.model.parameters())
        with tempfile.TemporaryDirectory() as tmp:
            for form, cls in _modules().items():
                t0 = time.time()
                path = _export(loaded, cls, Path(tmp) / form)
                export_s = time.time() - t0
                report = validate_export(loaded, path, num_threads=1)
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 1
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                timings = {}
                for case, (new, past) in {"prefill": (PREFILL, 0), "decode": (1, PAST)}.items():
                    feeds = _feeds(sess, loaded, new, past)
                    t = time_median(lambda: sess.run(["logits"], feeds), repeats=3 if args.quick else 9, warmup=2)
                    timings[case] = t
                    res.records.append({"model": name, "formulation": form, "case": case, **t.to_dict()})
                rows.append([name, f"{n_params / 1e6:.1f}M", form, report.passed, fmt(report.worst().max_abs, 3),
                             fmt(timings["prefill"].median * 1e3, 3), fmt(PREFILL / timings["prefill"].median, 4),
                             fmt(timings["decode"].median * 1e3, 3), fmt(1 / timings["decode"].median, 4),
                             round(export_s, 1)])
                print(rows[-1], flush=True)
                del sess
    res.table("MoE formulations on ONNX Runtime CPU (1 thread)",
              ["model", "params", "formulation", "matches PyTorch", "worst |diff|", "prefill ms", "prefill tok/s",
               "decode ms", "decode tok/s", "export s"], rows,
              notes=f"prefill: batch 1, {PREFILL} tokens, no past; decode: 1 token after {PAST} of past; "
                    "median of repeated runs in one session")
    res.write()


if __name__ == "__main__":
    main()
