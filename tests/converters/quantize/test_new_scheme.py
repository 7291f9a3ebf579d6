"""Adding a scheme is one config class plus one handler: registered from here, with no other edit, it
quantizes a tiny model end to end, feeds the memory estimate, and a target TOML may list it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeq.converters.quantize import QuantConfig, get_config, quantize, scheme_names
from edgeq.converters.quantize.registry import QuantContext, SchemeHandler, register_handler, unregister_handler
from edgeq.errors import ConfigError

NAME = "int8-clip-test"
SMALL = {"calib_tokens": 256, "calib_seq_len": 64, "holdout_tokens": 128}


@dataclass(frozen=True)
class Int8ClipConfig(QuantConfig):
    """INT8 per-channel weights, each row clipped at a quantile of its |w| before rounding."""

    clip: float = 0.999

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.5 < self.clip <= 1.0:
            raise ConfigError(f"clip must be in (0.5, 1], got {self.clip}")


class Int8Clip(SchemeHandler):
    name = NAME
    config = Int8ClipConfig

    def weight_bits(self, cfg: Int8ClipConfig) -> float:
        return 8.0

    def quantize(self, ctx: QuantContext) -> dict:
        import torch

        from edgeq.converters.quantize.numerics import LinearPlan, int8_channel_quant

        plans = {}
        for name, mod in ctx.linears.items():
            w = mod.weight.detach().float()
            lim = torch.quantile(w.abs(), ctx.cfg.clip, dim=1, keepdim=True)
            q, scale = int8_channel_quant(torch.clamp(w, -lim, lim))
            plans[name] = LinearPlan(name, "int8", q, scale, info={"clip": ctx.cfg.clip})
        return plans


@pytest.fixture
def int8_clip():
    handler = register_handler(Int8Clip)  # what ``@register_handler`` on the class does
    try:
        yield handler
    finally:
        unregister_handler(Int8ClipConfig)


TARGET = """
name = "clip-gpu"
description = "a target that lists the test scheme"
compute_capability = "8.9"
engine_flavour = "tensorrt"
build_on = "device"
usable_memory_fraction = 0.9
default_variant = "g-24"
[memory_variants_gb]
g-24 = 24
[precisions]
text-generation = ["fp16", "int8-clip-test"]
[default_precision]
text-generation = "int8-clip-test"
[shapes.text-generation]
batch = [1, 1, 2]
sequence = [1, 64, 256]
past = [0, 256, 1024]
"""


def test_a_scheme_registered_from_a_test_works_end_to_end(int8_clip, tiny_llama, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    from edgeq.converters.build_checks import check_precision, estimate_memory, target_profile

    assert NAME in scheme_names()
    cfg = get_config(NAME, clip=0.99, **SMALL)
    assert type(cfg) is Int8ClipConfig and cfg.scheme == NAME
    assert QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg

    res = quantize(tiny_llama, cfg, tmp_path / "q")
    assert res.onnx_path.is_file() and res.report["scheme"] == NAME
    assert res.report["validation"]["passed"] is True and res.report["layers"]
    graph = onnx.load(str(res.onnx_path), load_external_data=False).graph
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) == len(res.report["layers"])

    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "clip-gpu.toml").write_text(TARGET)
    monkeypatch.setenv("EDGEQ_TARGETS_PATH", str(tmp_path / "targets"))
    profile = target_profile("clip-gpu")
    check_precision(profile, NAME, "text-generation")
    shapes = profile.shapes["text-generation"]
    est8 = estimate_memory(profile, "text-generation", cfg, tiny_llama.model, shapes)
    est16 = estimate_memory(profile, "text-generation", "fp16", tiny_llama.model, shapes)
    assert 0 < est8.weights < est16.weights and est8.kv_cache == est16.kv_cache > 0

    unregister_handler(Int8ClipConfig)  # the same TOML names an unknown scheme once the handler is gone
    with pytest.raises(ConfigError, match="names 'int8-clip-test', which is no quantization scheme"):
        target_profile("clip-gpu")
    with pytest.raises(ConfigError, match="unknown quantization scheme"):
        get_config(NAME)


def test_a_name_or_config_type_is_registered_once(int8_clip) -> None:
    class Again(Int8Clip):
        pass

    with pytest.raises(ConfigError, match="already has a scheme handler"):
        register_handler(Again)

    class SameName(SchemeHandler):
        name = NAME
        config = type("OtherConfig", (), {})

    with pytest.raises(ConfigError, match="already registered"):
        register_handler(SameName)
