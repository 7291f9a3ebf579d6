"""Scheme configs: registry, validation, JSON round trip of every preset (every registered scheme)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeq.converters.quantize import QuantConfig, get_config, handler_for, handler_named, scheme_names
from edgeq.converters.quantize.registry import HANDLERS
from edgeq.errors import ConfigError


def test_registry_is_keyed_by_config_type_and_owns_the_names() -> None:
    names = scheme_names()
    assert names and len(set(names)) == len(names)
    for name in names:
        h = handler_named(name)
        cfg = get_config(name)
        assert type(cfg) is h.config and HANDLERS[h.config] is h and handler_for(cfg) is h
        assert cfg.scheme == name  # the config's name is its handler's
        assert h.weight_bits(cfg) > 0


def test_listing_schemes_loads_no_torch() -> None:
    """The CLI help and target validation read the registry: it must not import the quantizer's torch."""
    code = ("import sys; from edgeq.converters.quantize import get_config, scheme_names; "
            "assert scheme_names() and get_config('int4-awq').scheme == 'int4-awq'; print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_int4_weight_bits_follow_the_config() -> None:
    """A block's FP16 scale, plus its offset when asymmetric, spread over the block's weights."""
    h = handler_named("int4-awq")
    assert h.block_int4 and not handler_named("int8-wo").block_int4
    assert h.weight_bits(get_config("int4-awq", block_size=32, asymmetric=False)) == 4.5
    assert h.weight_bits(get_config("int4-awq", block_size=128)) == 4.25


@pytest.mark.parametrize("scheme", scheme_names())
def test_round_trip(scheme: str) -> None:
    cfg = get_config(scheme)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["version"] == 1 and data["scheme"] == scheme
    back = QuantConfig.from_dict(data)
    assert back == cfg and type(back) is type(cfg)


def test_round_trip_with_overrides() -> None:
    cfg = get_config("int4-awq", block_size=64, keep_fp16=["model.layers.0.*"], n_grid=10)
    back = QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.keep_fp16 == ("model.layers.0.*",) and back.block_size == 64


def test_unknown_scheme_lists_valid() -> None:
    with pytest.raises(ConfigError, match="int4-awq"):
        get_config("int3")


@pytest.mark.parametrize("kwargs", [{"block_size": 48}, {"block_size": 8}, {"n_grid": 0}, {"max_shrink": 1.5},
                                    {"compute_dtype": "bfloat16"}, {"nonsense": 1}, {"asymmetric": "yes"},
                                    {"rounding": "stochastic"}, {"gptq_damp": 0.0}])
def test_bad_options(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        get_config("int4-awq", **kwargs)


def test_bad_alpha_and_calib() -> None:
    with pytest.raises(ConfigError):
        get_config("int8-wo", rounding="round")
    with pytest.raises(ConfigError):
        get_config("int8", alpha=1.5)
    with pytest.raises(ConfigError):
        get_config("fp8", act_calib="entropy")


def test_version_checked() -> None:
    with pytest.raises(ConfigError, match="version"):
        QuantConfig.from_dict({"version": 99, "scheme": "fp8"})


def test_frozen() -> None:
    cfg = get_config("fp8")
    with pytest.raises(AttributeError):
        cfg.percentile = 1.0  # type: ignore[misc]
    assert cfg.with_overrides(act_calib="percentile").act_calib == "percentile"


def test_fp8_block_options_are_checked() -> None:
    assert get_config("fp8-block").block_size is None and get_config("fp8-block").activations == "dynamic"
    assert handler_named("fp8-block").weight_bits(get_config("fp8-block", block_size=64)) == 8.0 + 32 / 64**2
    for bad in ({"block_size": 48}, {"block_size": 8}, {"activations": "static"}):
        with pytest.raises(ConfigError):
            get_config("fp8-block", **bad)


def test_fp8_block_edge_divides_every_layer() -> None:
    """128 (the released checkpoints' block) where every size is a multiple of it; else the largest power of
    two that divides them all (readers take whole blocks only); 128 with partial blocks when none >= 16 does."""
    from edgeq.converters.hf_checkpoint.fp8_block import fp8_block_edge

    qwen3_4b = [(4096, 2560), (1024, 2560), (2560, 4096), (9728, 2560), (2560, 9728)]
    smollm2 = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
    assert fp8_block_edge(qwen3_4b) == 128
    assert fp8_block_edge(smollm2) == 64
    assert fp8_block_edge([(100, 24)]) == 128


def test_dynamic_fp8_is_refused_by_every_tensorrt_flavour() -> None:
    """No TensorRT has a per-token FP8 quantizer: a TensorRT target gets the reason, not a failed build."""
    from edgeq.sdk.bundle.flavours import TENSORRT_FLAVOURS
    from edgeq.targets import get_profile

    h = handler_named("fp8-dynamic")
    assert set(h.refused_flavours) == set(TENSORRT_FLAVOURS)
    assert "per-token FP8" in (h.target_problem(get_profile("rtx-ada")) or "")


def test_checkpoint_block_tells_blocks_from_per_tensor_and_per_channel_entries() -> None:
    import torch

    from edgeq.converters.hf_checkpoint.snap import checkpoint_block
    from edgeq.converters.quantize.numerics import LinearPlan

    def plan(**info: object) -> LinearPlan:
        return LinearPlan("l", "fp8", torch.zeros(64, 64), torch.ones(64), info=dict(info))

    assert checkpoint_block(plan(block=[64, 64])) == (64, 64)  # fp8-block's own, even a one-block layer
    assert checkpoint_block(plan(checkpoint_block=[32, 32])) == (32, 32)
    assert checkpoint_block(plan(checkpoint_block=[64, 64])) is None  # a checkpoint's per-tensor scale
    assert checkpoint_block(plan(checkpoint_block=[1, 64])) is None  # per channel
