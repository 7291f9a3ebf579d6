"""`edgeq plan`: parameter counts from config arithmetic (checked against real models), and whether
Qwen3-30B-A3B fits each Jetson Orin memory variant at each precision (checked against hand arithmetic)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeq.cli import main
from edgeq.converters.capacity import ARCHITECTURES, count_from_config, plan_from_config, read_config
from edgeq.converters.sources import SUPPORTED_MODEL_TYPES
from edgeq.errors import ConfigError, UnsupportedArchitectureError

DATA = Path(__file__).resolve().parent.parent / "data"
QWEN3_30B = DATA / "qwen3-30b-a3b.config.json"  # the published Qwen/Qwen3-30B-A3B config.json values
GIB = 1 << 30

#: small configs of every architecture the planner knows, leaving out fields whose defaults it must know
TINY: dict[str, dict[str, Any]] = {
    "llama": {"num_key_value_heads": 2, "attention_bias": True, "mlp_bias": True},
    "mistral": {"num_key_value_heads": 2},
    "qwen2": {"num_key_value_heads": 2, "tie_word_embeddings": True},
    "qwen3": {"num_key_value_heads": 2, "head_dim": 24},
    "qwen3_moe": {"num_key_value_heads": 2, "num_experts": 6, "num_experts_per_tok": 2, "moe_intermediate_size": 40,
                  "decoder_sparse_step": 2, "mlp_only_layers": [3]},
    "bert": {"max_position_embeddings": 64},
}


def _tiny_config(model_type: str) -> dict[str, Any]:
    return {"model_type": model_type, "vocab_size": 96, "hidden_size": 64, "intermediate_size": 80,
            "num_hidden_layers": 4, "num_attention_heads": 4, **TINY[model_type]}


def test_every_architecture_edgeq_exports_can_be_planned() -> None:
    assert set(ARCHITECTURES) == set(SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_config_arithmetic_matches_the_real_model(model_type: str) -> None:
    """The counts equal those of the torch model transformers builds from the same config, split as the build's
    memory check splits them (MoE routers outside the quantized linears)."""
    import torch
    import transformers

    from edgeq.converters.build_checks import count_params

    raw = _tiny_config(model_type)
    cfg = transformers.AutoConfig.for_model(**raw)
    torch.manual_seed(0)
    auto = transformers.AutoModel if SUPPORTED_MODEL_TYPES[model_type] == "feature-extraction" else transformers.AutoModelForCausalLM
    model = auto.from_config(cfg)
    got = count_from_config(raw)
    assert (got.linear, got.other) == count_params(model)
    assert got.total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_defaults_are_those_of_the_transformers_config_classes(model_type: str) -> None:
    import transformers

    ref = transformers.CONFIG_MAPPING[model_type]()
    for key, default in ARCHITECTURES[model_type].items():
        want = getattr(ref, key, None)
        if key == "head_dim" and default is None:  # derived from hidden size and heads when absent
            assert want in (None, ref.hidden_size // ref.num_attention_heads)
        elif key == "num_key_value_heads" and default is None:
            assert want in (None, ref.num_attention_heads)
        else:
            assert default == want, key


def test_qwen3_30b_a3b_counts_by_hand() -> None:
    p = count_from_config(QWEN3_30B)
    h, v, layers, experts, k, e_inter = 2048, 151936, 48, 128, 8, 768
    attn = h * 32 * 128 + 2 * h * 4 * 128 + 32 * 128 * h  # q, k, v, o
    per_expert = 3 * h * e_inter
    assert p.linear == layers * (attn + experts * per_expert) == 29_896_998_912
    assert p.expert == layers * experts * per_expert == 28_991_029_248
    # embeddings + untied head + routers + q/k norms + two norms per layer + the final norm
    assert p.other == 2 * v * h + layers * (h * experts + 2 * 128 + 2 * h) + h == 635_123_712
    assert p.total == 30_532_122_624  # "30.5B in total" on the model card
    assert p.active == p.total - layers * (experts - k) * per_expert == 3_353_032_704  # "3.3B activated"


def test_qwen3_30b_a3b_on_every_jetson_orin_variant() -> None:
    plan = plan_from_config(QWEN3_30B, "jetson-orin")
    assert plan.kv_batch == 2 and plan.kv_tokens == 2048 + 1024  # the profile's max batch and past + sequence
    kv = 2 * 48 * 4 * 128 * 2 * 3072 * 2  # K and V, layers, KV heads, head dim, batch, tokens, FP16 bytes
    assert kv == 603_979_776
    linear, other = 29_896_998_912, 635_123_712
    budgets = {"agx-orin-64": 64, "agx-orin-32": 32, "orin-nx-16": 16, "orin-nx-8": 8, "orin-nano-8": 8, "orin-nano-4": 4}
    want_fits = {"fp16": set(), "int8": {"agx-orin-64"}, "int8-wo": {"agx-orin-64"},
                 "int4-awq": {"agx-orin-64", "agx-orin-32"}, "int4-rtn": {"agx-orin-64", "agx-orin-32"}}
    # INT4 defaults: blocks of 128, asymmetric: an FP16 scale and an FP16 offset per block (4 + 32/128 bits)
    bits = {"fp16": 16, "int8": 8, "int8-wo": 8, "int4-awq": 4.25, "int4-rtn": 4.25}
    rows = {f.precision: f for f in plan.fits}
    assert rows["fp8"].refused and "sm87 has no FP8" in rows["fp8"].refused and not rows["fp8"].estimates
    for precision, fits in want_fits.items():
        weights = int(linear * bits[precision] / 8 + other * 2)
        for variant, gb in budgets.items():
            e = rows[precision].estimates[variant]
            assert (e.weights, e.kv_cache, e.workspace) == (weights, kv, 1 << 30)
            assert e.budget == int(gb * GIB * 0.6)
            assert e.fits == (variant in fits) == (weights + kv + (1 << 30) <= int(gb * GIB * 0.6)), (precision, variant)
    # the headline numbers, in GiB
    assert round(rows["int4-awq"].estimates["agx-orin-64"].total / GIB, 2) == 17.54
    assert round(rows["int8"].estimates["agx-orin-64"].total / GIB, 2) == 30.59
    assert round(rows["fp16"].estimates["agx-orin-64"].total / GIB, 2) == 58.43


def test_edgeq_plan_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model-config", str(QWEN3_30B), "--target", "jetson-orin"]) == 0
    out = capsys.readouterr().out
    assert "30.53 B parameters" in out and "48 x 128 experts, top-8: 3.35 B active per token" in out
    assert "batch 2 x 3072 tokens" in out
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in out.splitlines() if line.startswith("│")}
    assert lines["int4-awq"] == ["15.98", "0.56", "1.00", "17.54"]
    assert lines["agx-orin-64"] == ["38.40", "no", "fits", "fits", "fits", "fits"]
    assert lines["agx-orin-32"] == ["19.20", "no", "no", "no", "fits", "fits"]
    assert lines["orin-nx-16"] == ["9.60", "no", "no", "no", "no", "no"]
    assert "fp8: not run on jetson-orin: sm87 has no FP8 tensor cores" in out


def test_edgeq_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model-config", str(QWEN3_30B), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["precision"]: r for r in doc["precisions"]}
    assert doc["params"]["total"] == 30_532_122_624
    assert {v for v, e in rows["int4-awq"]["variants"].items() if e["fits"]} == {"agx-orin-64", "agx-orin-32"}


def test_plan_answers_in_seconds_without_torch() -> None:
    code = ("import sys, time; t = time.time()\n"
            "from edgeq.converters.capacity import plan_from_config\n"
            f"plan_from_config({str(QWEN3_30B)!r}, 'jetson-orin')\n"
            "print(time.time() - t, sorted(m for m in ('torch', 'transformers', 'onnx') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    seconds, heavy = out.split(" ", 1)
    assert heavy.strip() == "[]" and float(seconds) < 5


def test_bad_configs_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnsupportedArchitectureError, match="gpt_neox"):
        read_config({"model_type": "gpt_neox", "hidden_size": 8})
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        read_config({k: v for k, v in _tiny_config("qwen3_moe").items() if k != "num_hidden_layers"})
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    assert main(["plan", "--model-config", str(tmp_path)]) != 0
    assert "not valid JSON" in capsys.readouterr().err
