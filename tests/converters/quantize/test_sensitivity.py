"""Sensitivity (Fisher scores, the stand-alone one-layer-at-a-time table) and the accuracy budget's ladder."""

from __future__ import annotations

import json

import pytest

from edgeq.converters.quantize import get_config, quantize
from edgeq.converters.quantize.fisher import fisher_scores, input_groups
from edgeq.converters.quantize.sensitivity import layer_sensitivity
from edgeq.converters.quantize.sensitivity_run import run_sensitivity
from edgeq.errors import AccuracyBudgetError

BUDGET = "kl<=0.004"


@pytest.fixture(scope="module")
def ladder(tiny_llama, tmp_path_factory):
    """tiny-llama at INT4 RTN with INT8 weight-only as the middle rung, under a KL budget INT4 alone misses."""
    root = tmp_path_factory.mktemp("ladder")
    cfg = get_config("int4-rtn", block_size=32)
    free = quantize(tiny_llama, cfg, root / "free")
    res = quantize(tiny_llama, cfg, root / "budget", accuracy_budget=BUDGET, upgrade=("int8-wo",), report_dir=root / "rep")
    return free, res, root


def test_budget_raises_the_fewest_groups_and_holds_in_the_graph(ladder) -> None:
    free, res, _ = ladder
    assert free.report["validation"]["mean_kl"] > 0.004, "INT4 alone must miss the budget for this test to mean anything"
    b = res.report["accuracy_budget"]
    assert b["ladder"] == ["int4-rtn", "int8-wo", "fp32"] and b["scorer"].startswith("fisher")
    assert 0 < b["moves"] < b["moves_available"]
    # the emitted graph, checked in ONNX Runtime, meets the budget; so does the simulation, with its reserve
    assert b["met_in_graph"] is True and b["graph_check"] == "onnxruntime cpu"
    assert res.report["validation"]["mean_kl"] == b["graph_measured"] <= 0.004
    assert b["measured"] <= b["searched_to"] < 0.004
    # the fewest measured: every shorter prefix the search measured misses the (tightened) budget
    by_moves = {e["moves"]: e["kl"] for e in b["evaluations"]}
    assert len(by_moves) >= 3 and by_moves[b["moves"]] == b["measured"]
    assert all(v > b["searched_to"] for k, v in by_moves.items() if k < b["moves"])
    # every raised layer is in the graph at its rung, or left out of it when unquantized
    for name, r in b["raised"].items():
        if r["precision"] == "int8-wo":
            assert res.report["layers"][name]["scheme"] == "int8-weight-only"
        else:
            assert name not in res.report["layers"] and res.report["kept_fp16"][name] == f"accuracy budget {BUDGET}"
    assert 4 < b["effective_bits"] < 32 and abs(sum(b["weight_fraction"].values()) - 1) < 1e-3


def test_fused_groups_take_one_precision(ladder) -> None:
    b = ladder[1].report["accuracy_budget"]
    assert b["groups"] == 8  # per layer: q/k/v, o, gate/up, down
    at = {n: r["precision"] for n, r in b["raised"].items()}
    for layer in (0, 1):
        p = f"model.layers.{layer}."
        assert len({at.get(p + f"self_attn.{x}_proj", "int4") for x in "qkv"}) == 1
        assert len({at.get(p + f"mlp.{x}_proj", "int4") for x in ("gate", "up")}) == 1


def test_culprit_table_and_chart(ladder) -> None:
    _, res, root = ladder
    rows = res.report["sensitivity"]
    assert len(rows) == 14 and rows == sorted(rows, key=lambda r: r["score"], reverse=True)
    assert (root / "rep" / "sensitivity.png").stat().st_size > 1000
    assert json.loads((root / "rep" / "sensitivity.json").read_text())["layers"] == rows


def test_fisher_ranks_like_the_measured_divergence(tiny_llama) -> None:
    """The one-pass Fisher score orders layers as quantizing each alone and measuring the KL does."""
    from edgeq.converters.quantize.calibrate import make_calib_data, quantizable_linears
    from edgeq.converters.quantize.registry import QuantContext, handler_for

    cfg = get_config("int4-rtn", block_size=32)
    linears, _ = quantizable_linears(tiny_llama, (), False)
    calib = make_calib_data(tiny_llama, None, tokens=1024, seq_len=128, holdout=256)
    plans = handler_for(cfg).quantize(QuantContext(tiny_llama, cfg, linears, calib))
    scores, groups = fisher_scores(tiny_llama, {"int4-rtn": plans}, calib.calib[:2])
    measured = {r["layer"]: r["score"] for r in layer_sensitivity(tiny_llama, plans, calib.calib[:2])}
    names = sorted(measured)
    rank = lambda d: {n: i for i, n in enumerate(sorted(names, key=d.get))}  # noqa: E731
    ra, rb = rank(scores["int4-rtn"]), rank(measured)
    n = len(names)
    spearman = 1 - 6 * sum((ra[x] - rb[x]) ** 2 for x in names) / (n * (n * n - 1))
    assert spearman > 0.7, spearman
    assert len(groups) == 8 and ["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.q_proj",
                                 "model.layers.0.self_attn.v_proj"] in groups


def test_moe_experts_decide_together() -> None:
    names = [f"model.layers.0.mlp.experts.{e}.{p}_proj" for e in range(3) for p in ("gate", "up", "down")]
    names += ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.experts.0.down_proj"]
    groups = input_groups(names, [])
    assert sorted(map(len, groups)) == [1, 1, 9]


def test_budget_out_of_reach_fails_with_culprits_and_no_output(tiny_llama, tmp_path) -> None:
    with pytest.raises(AccuracyBudgetError) as err:
        quantize(tiny_llama, get_config("int4-rtn", block_size=32), tmp_path / "q", accuracy_budget="kl<=0.0001",
                 upgrade=("int8-wo",), max_extra_bytes=1000)
    assert "memory budget spent" in err.value.message and "budget-report" in (err.value.hint or "")
    assert not (tmp_path / "q").exists()
    table = json.loads((tmp_path / "q.budget-report" / "sensitivity.json").read_text())
    assert len(table["layers"]) == 14 and (tmp_path / "q.budget-report" / "sensitivity.png").is_file()


def test_sensitivity_command_api(tiny_qwen3, tmp_path) -> None:
    rows, files = run_sensitivity(tiny_qwen3, "fp8", tmp_path / "s")
    assert len(rows) == 14 and all(r["metric"] == "kl" and r["score"] >= 0 for r in rows)
    assert rows == sorted(rows, key=lambda r: r["score"], reverse=True)
    assert files["png"].endswith("sensitivity.png")


def test_fisher_pass_forms_no_weight_gradient_and_restores_the_model(tiny_llama) -> None:
    from edgeq.converters.quantize.calibrate import make_calib_data, quantizable_linears
    from edgeq.converters.quantize.registry import QuantContext, handler_for

    cfg = get_config("int4-rtn", block_size=32)
    linears, _ = quantizable_linears(tiny_llama, (), False)
    calib = make_calib_data(tiny_llama, None, tokens=512, seq_len=128, holdout=128)
    plans = handler_for(cfg).quantize(QuantContext(tiny_llama, cfg, linears, calib))
    before = {n: p.requires_grad for n, p in tiny_llama.model.named_parameters()}
    w = tiny_llama.model.get_submodule("model.layers.0.self_attn.q_proj").weight
    assert w.requires_grad, "the loaded model's weights require grad: the pass must switch that off itself"
    fired: list[int] = []
    handle = w.register_hook(lambda g: fired.append(1))  # runs only if a weight gradient is computed
    try:
        scores, _ = fisher_scores(tiny_llama, {"int4-rtn": plans}, calib.calib[:1])
    finally:
        handle.remove()
    assert not fired and all(p.grad is None for p in tiny_llama.model.parameters())
    assert {n: p.requires_grad for n, p in tiny_llama.model.named_parameters()} == before
    assert all(v > 0 for v in scores["int4-rtn"].values())
