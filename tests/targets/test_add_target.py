"""Adding a target is adding ONE TOML file: on ``EDGEQ_TARGETS_PATH`` it is listed, validated against the
scheme registry, and a build is planned for it, with no other edit. Also: aliases, and the profile-level
checks that come from the scheme handlers."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq.cli import main
from edgeq.converters.build_checks import check_precision, checked_profiles, target_profile
from edgeq.errors import ConfigError, UnsupportedPrecisionError
from edgeq.targets import aliases, get_profile, profile_names

#: an NVIDIA L4 (Ada sm89, data centre) served with full TensorRT: one file, nothing else
L4 = """
schema_version = 1
name = "l4-server"
description = "NVIDIA L4 (Ada sm89, data centre), full TensorRT"
compute_capability = "8.9"
engine_flavour = "tensorrt"
build_on = "device"
workspace_mib = 2048
usable_memory_fraction = 0.9
default_variant = "l4-24"

[memory_variants_gb]
l4-24 = 24

[precisions]
text-generation = ["fp16", "fp8", "int8", "int8-wo", "int4-rtn"]
feature-extraction = ["fp16", "fp8"]

[default_precision]
text-generation = "fp8"
feature-extraction = "fp8"

[shapes.text-generation]
batch = [1, 2, 4]
sequence = [1, 64, 256]
past = [0, 256, 1024]

[shapes.feature-extraction]
batch = [1, 8, 32]
sequence = [1, 128, 512]
"""


def _targets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **files: str) -> Path:
    d = tmp_path / "targets"
    d.mkdir()
    for name, text in files.items():
        (d / f"{name}.toml").write_text(text)
    monkeypatch.setenv("EDGEQ_TARGETS_PATH", str(d))
    return d


def test_one_toml_adds_a_target_that_is_listed_validated_and_planned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeq.converters.build import build
    from edgeq.sdk.bundle.manifest import Manifest
    from edgeq.sdk.bundle.plan import BuildPlan

    _targets_dir(tmp_path, monkeypatch, **{"l4-server": L4})
    assert "l4-server" in profile_names() and "l4-server" in [p.name for p in checked_profiles()]
    assert main(["targets"]) == 0 and "l4-server" in capsys.readouterr().out
    assert main(["targets", "show", "l4-server"]) == 0 and "sm89" in capsys.readouterr().out

    out = tmp_path / "bundle"
    result = build("tiny-llama", "l4-server", precision="int4-rtn", out=out, health=False,
                   quant_overrides={"calib_tokens": 256, "calib_seq_len": 64, "holdout_tokens": 128})
    m = Manifest.load(out)
    assert m.target == "l4-server" and m.precision == "int4-rtn" and result.engine_mode == "planned"
    plan = BuildPlan.load(out / "plan/build_plan.json")
    assert plan.target == "l4-server" and plan.flavour == "tensorrt" and plan.workspace_bytes == 2048 << 20
    memory = m.build["memory_estimate"]
    assert memory["variant"] == "l4-24" and 0 < memory["weights_bytes"] < memory["total_bytes"] <= memory["budget_bytes"]


def test_alias_resolves_to_the_renamed_target(capsys: pytest.CaptureFixture[str]) -> None:
    hopper = get_profile("h100-fp8")
    assert hopper.name == "hopper-server" and hopper.aliases == ("h100-fp8",)
    assert "h100-fp8" not in profile_names() and aliases()["h100-fp8"] == "hopper-server"
    assert main(["targets", "show", "h100-fp8"]) == 0 and "hopper-server" in capsys.readouterr().out


def test_an_alias_may_not_shadow_a_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _targets_dir(tmp_path, monkeypatch, **{"l4-server": L4.replace('name = "l4-server"', 'name = "l4-server"\naliases = ["rtx-ada"]')})
    with pytest.raises(ConfigError, match="alias 'rtx-ada' of l4-server is already the name"):
        aliases()


def test_two_targets_may_not_claim_one_alias(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    twin = L4.replace('name = "l4-server"', 'name = "l4-twin"')
    _targets_dir(tmp_path, monkeypatch, **{"l4-twin": twin.replace("schema_version = 1", 'aliases = ["h100-fp8"]\nschema_version = 1')})
    with pytest.raises(ConfigError, match="alias 'h100-fp8' of .* is already the name or an alias of"):
        get_profile("h100-fp8")


@pytest.mark.parametrize("change, match", [
    # the FP8 handler needs sm89+: an Ampere-class target listing fp8 is a data error, caught on load
    (('compute_capability = "8.9"', 'compute_capability = "8.6"'), "fp8 needs compute capability >= 8.9"),
    # the INT8 W8A8 handler refuses TensorRT-RTX
    (('engine_flavour = "tensorrt"\nbuild_on = "device"', 'engine_flavour = "tensorrt_rtx"\nbuild_on = "host"'),
     "TensorRT-RTX runs INT8 only as weight-only"),
    # a precision no handler is registered for
    (('"int4-rtn"]', '"int4-rtn", "int3"]'), "names 'int3', which is no quantization scheme"),
])
def test_profile_checked_against_the_scheme_handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str], change: tuple[str, str], match: str) -> None:
    old, new = change
    assert old in L4
    _targets_dir(tmp_path, monkeypatch, **{"l4-server": L4.replace(old, new)})
    get_profile("l4-server")  # the targets layer knows no schemes: the form is valid
    with pytest.raises(ConfigError, match=match):
        target_profile("l4-server")
    assert main(["targets"]) == 2  # `edgeq targets` refuses it with one line
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: target l4-server:") and len(err) == 2 and err[1].startswith("hint: ")


def test_check_precision_asks_the_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A profile that neither lists nor explains fp8 still gets the handler's hardware reason."""
    _targets_dir(tmp_path, monkeypatch, **{"l4-server": L4.replace('compute_capability = "8.9"', 'compute_capability = "8.6"')
                                           .replace('"fp16", "fp8", ', '"fp16", ').replace('"fp8"', '"fp16"')})
    profile = target_profile("l4-server")
    with pytest.raises(UnsupportedPrecisionError, match="fp8 needs compute capability >= 8.9; l4-server is 8.6"):
        check_precision(profile, "fp8")


def test_every_builtin_profile_agrees_with_the_scheme_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEQ_TARGETS_PATH", raising=False)
    assert [p.name for p in checked_profiles()] == profile_names()


def test_build_refuses_a_bfloat16_target_before_loading_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeq.converters import build as build_mod

    def fail(*a: object, **k: object) -> None:
        raise AssertionError("the model was loaded before the profile was refused")

    monkeypatch.setattr(build_mod, "load_model", fail)
    _targets_dir(tmp_path, monkeypatch, **{"l4-server": L4.replace('usable_memory_fraction', 'compute_dtype = "bfloat16"\nusable_memory_fraction')})
    with pytest.raises(ConfigError, match="compute_dtype"):
        build_mod.build("tiny-llama", "l4-server", out=tmp_path / "b")
    assert not (tmp_path / "b").exists()
