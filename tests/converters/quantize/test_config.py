"""Scheme configs: registry, validation, JSON round trip of every preset."""

from __future__ import annotations

import json

import pytest

from edgeq.converters.quantize import SCHEMES, QuantConfig, get_config
from edgeq.errors import ConfigError

EXPECTED = {"fp16", "fp8", "int8", "int8-wo", "int4-awq", "int4-rtn", "prequantized", "fp8-block"}


def test_scheme_names() -> None:
    assert set(SCHEMES) == EXPECTED


@pytest.mark.parametrize("scheme", sorted(EXPECTED))
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
