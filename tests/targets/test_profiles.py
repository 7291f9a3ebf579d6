"""Target profiles: the built-in TOML files load and validate; adding a target is adding a file.

Tests iterate the registry (every ``*.toml`` the profile directory holds), never a hard-coded list.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from edgeq.errors import ConfigError, UnknownTargetError
from edgeq.targets import TargetProfile, get_profile, list_profiles, profile_hash, profile_names
from edgeq.targets.registry import BUILTIN_DIR

#: the built-in profile files, found the way the registry finds them (a new file is picked up here too)
BUILTINS = sorted(f.stem for f in BUILTIN_DIR.glob("*.toml"))


def test_builtin_targets_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEQ_TARGETS_PATH", raising=False)
    assert BUILTINS and profile_names() == BUILTINS
    assert [p.name for p in list_profiles()] == BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
def test_profile_round_trips_and_hash_is_stable(name: str) -> None:
    p = get_profile(name)
    again = TargetProfile.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again == p
    assert profile_hash(again) == profile_hash(p)
    assert len(profile_hash(p)) == 64


@pytest.mark.parametrize("name", BUILTINS)
def test_every_field_has_a_reason_comment(name: str) -> None:
    """Every key of the profile, in every table, has a comment on the line right above it or after its value.

    ``[unsupported]`` values are themselves the reason shown to the user: each must say why and what to use."""
    text = (BUILTIN_DIR / f"{name}.toml").read_text()

    def leaves(d: dict, prefix: str = "") -> set[str]:
        return {k for key, v in d.items() for k in (leaves(v, f"{prefix}{key}.") if isinstance(v, dict) else {prefix + key})}

    def trailing_comment(line: str) -> bool:  # a '#' outside any string on the line
        quote = None
        for ch in line:
            if quote:
                quote = None if ch == quote else quote
            elif ch in "\"'":
                quote = ch
            elif ch == "#":
                return True
        return False

    table, seen, bare = "", set(), []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            table = stripped.strip("[]").strip() + "."
            continue
        key = stripped.split("=", 1)[0].strip().strip('"')
        assert "=" in stripped and "[" not in key, f"line {i + 1} is not one key = value: {line!r}"
        seen.add(table + key)
        if table == "unsupported.":
            continue  # judged by value below
        if not (trailing_comment(line) or (i > 0 and lines[i - 1].strip().startswith("#"))):
            bare.append(table + key)
    parsed = tomllib.loads(text)
    empty_tables = {k for k, v in parsed.items() if v == {}}
    # the line scan found exactly the keys TOML parses: no multi-line value or inline table hides a key
    assert seen == leaves(parsed) - empty_tables, (sorted(seen ^ leaves(parsed)))
    assert bare == [], f"{name}.toml: fields without a reason comment: {bare}"
    for precision, why in parsed.get("unsupported", {}).items():
        assert isinstance(why, str) and "; use " in why and len(why.split()) >= 6, (precision, why)


def test_hardware_facts() -> None:
    jetson, ampere, ada, bw, h100 = (get_profile(n) for n in ["jetson-orin", "rtx-ampere", "rtx-ada", "rtx-blackwell", "h100-fp8"])
    assert (jetson.sm, ampere.sm, ada.sm, bw.sm, h100.sm) == ("sm87", "sm86", "sm89", "sm120", "sm90")
    thor, spark = get_profile("jetson-thor"), get_profile("dgx-spark")
    assert (thor.sm, spark.sm) == ("sm110", "sm121")  # developer.nvidia.com/cuda-gpus
    assert jetson.engine_flavour == h100.engine_flavour == thor.engine_flavour == spark.engine_flavour == "tensorrt"
    assert thor.build_on == spark.build_on == h100.build_on == "device" and thor.dla_cores == 0
    assert thor.default_precision["text-generation"] == spark.default_precision["text-generation"] == "fp8"
    assert {"h100-80", "h200-141"} <= set(h100.memory_variants_gb) and h100.default_variant == "h100-80"
    assert {ampere.engine_flavour, ada.engine_flavour, bw.engine_flavour} == {"tensorrt_rtx"}
    assert jetson.default_precision == {"text-generation": "int4-awq", "feature-extraction": "int8"}
    assert ampere.default_precision["text-generation"] == "int4-awq"
    assert ada.default_precision["text-generation"] == bw.default_precision["text-generation"] == "fp8"
    assert h100.default_precision["text-generation"] == "fp8"
    assert "fp8" not in jetson.all_precisions() and "fp8" not in ampere.all_precisions()
    assert "sm87 has no FP8 tensor cores" in jetson.unsupported["fp8"]
    assert "sm86 has no FP8" in ampere.unsupported["fp8"]
    assert jetson.dla_cores == 2 and ada.dla_cores == 0
    assert {"agx-orin-64", "agx-orin-32", "orin-nx-16", "orin-nx-8", "orin-nano-8", "orin-nano-4"} <= set(jetson.memory_variants_gb)
    assert jetson.memory_budget_bytes("orin-nano-4") < jetson.memory_budget_bytes("agx-orin-64")
    assert jetson.shapes["text-generation"].past is not None


def test_cpu_targets() -> None:
    """CPU targets: ONNX Runtime runs the ONNX (no engine, no GPU), FP32 compute, fast CPU precisions only."""
    from edgeq.converters.build_checks import check_precision
    from edgeq.errors import UnsupportedPrecisionError

    for name in ("cpu-x86-64", "cpu-arm64"):
        p = get_profile(name)
        assert (p.engine_flavour, p.build_on, p.compute_capability, p.sm) == ("onnx", "host", "", "cpu")
        assert not p.builds_engine and p.compute_dtype == "float32"
        assert p.default_precision == {"text-generation": "int4-awq", "feature-extraction": "int8-wo"}
        assert set(p.precisions["text-generation"]) == {"int4-awq", "int4-rtn", "int8-wo"}
        assert p.memory_budget_bytes() <= 2 * 2**30  # a small device: 50 % of 4 GB
        for prec in ("fp8", "int8"):
            with pytest.raises(UnsupportedPrecisionError, match="use int8-wo"):
                check_precision(p, prec, "text-generation")
    assert all(get_profile(n).builds_engine for n in BUILTINS if not n.startswith("cpu-"))


def test_unknown_target_lists_valid_ones() -> None:
    with pytest.raises(UnknownTargetError) as e:
        get_profile("jetson-xavier")
    for name in profile_names():
        assert name in e.value.message


def _write(tmp: Path, name: str, **changes: object) -> Path:
    data = tomllib.loads((BUILTIN_DIR / "rtx-ada.toml").read_text())
    data["name"] = name
    data.update(changes)
    lines = []
    # tiny TOML writer: enough for the profile's shape (scalars, tables, nested tables)
    def emit(prefix: str, d: dict) -> None:
        scal = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in scal.items():
            lines.append(f'"{k}" = {json.dumps(v)}')
        for k, v in d.items():
            if isinstance(v, dict):
                emit(f'{prefix}."{k}"' if prefix else f'"{k}"', v)
    emit("", data)
    path = tmp / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_adding_a_target_is_adding_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "rtx-ada-laptop", description="RTX 40xx laptop", memory_variants_gb={"laptop-8": 8}, default_variant="laptop-8")
    p = get_profile("rtx-ada-laptop", search_path=[tmp_path])
    assert p.compute_capability == "8.9" and p.memory_variants_gb == {"laptop-8": 8.0}
    monkeypatch.setenv("EDGEQ_TARGETS_PATH", str(tmp_path))
    assert "rtx-ada-laptop" in profile_names()


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"compute_capability": "sm89"}, "compute_capability"),
        ({"engine_flavour": "onnxruntime"}, "engine_flavour"),
        ({"default_precision": {"text-generation": "int8", "feature-extraction": "fp8"}}, "default_precision"),
        ({"precisions": {"text-generation": ["fp16", "FP4 blocks"], "feature-extraction": ["fp16"]}}, "FP4 blocks"),
        ({"shapes": {"text-generation": {"batch": [1, 4, 2], "sequence": [1, 1, 8], "past": [0, 1, 8]},
                     "feature-extraction": {"batch": [1, 1, 1], "sequence": [1, 1, 8]}}}, "min <= opt <= max"),
        ({"shapes": {"text-generation": {"batch": [1, 1, 2], "sequence": [1, 1, 8]},
                     "feature-extraction": {"batch": [1, 1, 1], "sequence": [1, 1, 8]}}}, "needs a past range"),
        ({"shapes": {"text-generation": {"batch": [1, 1, 2], "sequence": [1, 1, 8], "past": [0, 1, 8]},
                     "feature-extraction": {"batch": [1, 1, 1], "sequence": [1, 1, 8], "past": [0, 1, 8]}}},
         "feature-extraction has no KV cache"),
        ({"engine_flavour": "tensorrt"}, "build_on = 'host' needs a flavour that builds without the target GPU"),
        ({"compute_capability": ""}, "compute_capability must look like"),
        ({"engine_flavour": "onnx"}, "has no GPU: drop compute_capability"),
        ({"engine_flavour": "onnx", "compute_capability": "", "build_on": "device"}, "build_on = 'host'"),
        ({"aliases": ["bad-target"]}, "not the profile's own name"),
        ({"usable_memory_fraction": 1.5}, "usable_memory_fraction"),
        ({"default_variant": "rtx-9999"}, "default_variant"),
        ({"dla": 3}, "unknown profile fields"),
        ({"upgrade_precisions": {"text-generation": ["nvfp4"]}}, "is not in precisions.text-generation"),
        ({"upgrade_precisions": {"text-generation": ["fp8"]}}, "is the default itself"),
        ({"accuracy_budget": {"text-generation": 1.0}}, "must be a budget like"),
    ],
)
def test_bad_profiles_are_refused(tmp_path: Path, changes: dict, match: str) -> None:
    path = _write(tmp_path, "bad-target", **changes)
    with pytest.raises(ConfigError, match=match):
        get_profile("bad-target", search_path=[tmp_path])
    assert str(path) in str(pytest.raises(ConfigError, get_profile, "bad-target", search_path=[tmp_path]).value)


def test_file_name_must_match_profile_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "one")
    path.rename(tmp_path / "two.toml")
    with pytest.raises(ConfigError, match="must match the file name"):
        get_profile("two", search_path=[tmp_path])


def test_targets_import_no_heavy_libraries() -> None:
    import subprocess
    import sys

    code = "import sys, edgeq.targets; edgeq.targets.list_profiles(); print([m for m in ('torch','onnx','transformers','tensorrt_rtx_bindings') if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_profile_refuses_a_compute_dtype_the_quantizer_cannot_produce(tmp_path: Path) -> None:
    """Defect: bfloat16 loaded here and QuantConfig refused it only after the model had loaded."""
    _write(tmp_path, "bf16-gpu", compute_dtype="bfloat16")
    with pytest.raises(ConfigError, match="compute_dtype: 'bfloat16' is not one of"):
        get_profile("bf16-gpu", search_path=[tmp_path])


def test_every_compute_dtype_a_profile_takes_the_quantizer_takes(tmp_path: Path) -> None:
    from edgeq.converters.quantize import get_config, scheme_names
    from edgeq.sdk.bundle.flavours import COMPUTE_DTYPES

    for dtype in COMPUTE_DTYPES:
        _write(tmp_path, "dtype-gpu", compute_dtype=dtype)
        profile = get_profile("dtype-gpu", search_path=[tmp_path])
        for scheme in scheme_names():
            assert get_config(scheme, compute_dtype=profile.compute_dtype).compute_dtype == dtype


@pytest.mark.parametrize("changes, match", [
    ({"accuracy_budget": {"text-generation": "ppl*2"}}, "accuracy_budget.text-generation: cannot parse"),
    ({"accuracy_budget": {"text-generation": "cosine>=0.99"}}, "does not apply to text-generation"),
    ({"upgrade_precisions": {"text-generation": ["int4-awq"]}}, "rewrites FP weights"),
])
def test_budgets_and_rungs_are_checked_where_the_converters_load_a_profile(tmp_path: Path, changes: dict, match: str) -> None:
    from edgeq.converters.build_checks import check_profile

    _write(tmp_path, "budget-target", **changes)
    profile = get_profile("budget-target", search_path=[tmp_path])  # the form is fine: the targets layer takes it
    with pytest.raises(ConfigError, match=match):
        check_profile(profile)


def test_every_builtin_target_states_a_budget_inside_the_outer_bound() -> None:
    from edgeq.converters.build_checks import checked_profiles, profile_budget

    for p in checked_profiles():
        if p.name not in BUILTINS:
            continue
        for task in p.precisions:
            assert task in p.accuracy_budget, (p.name, task)
            b = profile_budget(p, task)
            assert b is not None and (b.value <= 2.0 if b.metric == "ppl" else b.value >= 0.99), (p.name, task, str(b))
