"""The flavour and task tables are the only lists: everything that names flavours or tasks agrees with them."""

from __future__ import annotations

import pytest

from edgeq.errors import ConfigError
from edgeq.sdk.bundle.flavours import ENGINE_FLAVOURS, TENSORRT_FLAVOURS, engine_flavour
from edgeq.sdk.bundle.manifest import EngineInfo
from edgeq.sdk.bundle.model_info import CONVERTIBLE_TASKS, TASK_SPECS, TASKS, ModelInfo
from edgeq.sdk.bundle.plan import BuildPlan, InputShape, OptimizationProfile


def _plan(flavour: str) -> BuildPlan:
    cross = ENGINE_FLAVOURS[flavour].cross_builds
    return BuildPlan(flavour=flavour, onnx="m.onnx", engine="m.engine", precision="fp16",
                     profiles=(OptimizationProfile((InputShape("x", (1,), (1,), (2,)),)),),
                     compute_capabilities=("8.9",) if cross else ())


@pytest.mark.parametrize("name", list(ENGINE_FLAVOURS))
def test_every_flavour_is_an_engine_entry_and_tensorrt_ones_are_plans(name: str) -> None:
    assert EngineInfo(flavour=name, onnx="m.onnx").flavour == name
    if name in TENSORRT_FLAVOURS:
        assert _plan(name).to_trtexec().startswith(ENGINE_FLAVOURS[name].cli_tool or name)
    else:
        with pytest.raises(ConfigError, match="unknown engine flavour"):
            _plan(name)


def test_unknown_flavour_refused_everywhere() -> None:
    for make in (lambda: engine_flavour("openvino"), lambda: EngineInfo(flavour="openvino", onnx="m.onnx")):
        with pytest.raises(ConfigError, match="unknown engine flavour 'openvino'"):
            make()


def test_builder_and_backends_take_their_modules_from_the_table() -> None:
    from edgeq.sdk.engine import builder
    from edgeq.sdk.runtime.backends.base import BACKENDS

    assert sorted(builder.FLAVOURS) == sorted(TENSORRT_FLAVOURS)
    for name, fl in builder.FLAVOURS.items():
        assert (fl.module, fl.install_hint) == (ENGINE_FLAVOURS[name].module, ENGINE_FLAVOURS[name].install_hint)
    trt_backends = [b for b in BACKENDS.values() if getattr(b, "flavour", None) in TENSORRT_FLAVOURS]
    assert sorted(b.flavour for b in trt_backends) == sorted(TENSORRT_FLAVOURS)
    for b in trt_backends:  # the backends still spell their module: it must be the table's
        assert b.module == ENGINE_FLAVOURS[b.flavour].module


def test_tasks_derive_from_one_table() -> None:
    from edgeq.converters import sources
    from edgeq.targets import KNOWN_TASKS

    assert TASKS == tuple(TASK_SPECS) and set(CONVERTIBLE_TASKS) < set(TASKS)
    assert sources.TASKS == KNOWN_TASKS == CONVERTIBLE_TASKS
    for task in TASKS:
        assert ModelInfo(task=task).task == task
    with pytest.raises(Exception, match="unknown model task"):
        ModelInfo(task="translation")
