"""Turn a target profile + an ONNX file into a BuildPlan: which input dims are batch / sequence / past.

The exporter names dynamic dims symbolically (``batch_size``, ``sequence_length``,
``past_sequence_length``, ``past_sequence_length + sequence_length``); a table maps each symbol to
a profile axis and sums are evaluated, so new exporters need a table row, not code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edgeq.errors import ConfigError
from edgeq.sdk.bundle.flavours import ENGINE_FLAVOURS
from edgeq.sdk.bundle.plan import BuildPlan, InputShape, OptimizationProfile
from edgeq.targets import ShapeRange, TargetProfile, TaskShapes, profile_hash

log = logging.getLogger(__name__)

#: ONNX dim symbol -> profile axis.
DIM_SYMBOLS = {
    "batch_size": "batch",
    "batch": "batch",
    "sequence_length": "sequence",
    "seq_len": "sequence",
    "past_sequence_length": "past",
    "past_seq_len": "past",
}
ENGINE_PATH = "engine/model.engine"
ONNX_PATH = "model/model.onnx"


@dataclass(frozen=True)
class PlannedShapes:
    """The task shapes actually used (after fitting to the model) and why they changed, if they did."""

    shapes: TaskShapes
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {axis: r.as_list() for axis, r in self.shapes.axes().items()}


def fit_shapes(shapes: TaskShapes, max_positions: int | None) -> PlannedShapes:
    """Shrink sequence/past ranges so that past + sequence never exceeds the model's position limit.

    A profile is generic; a model with 512 positions cannot use a 4096-token KV cache. The change is
    logged and recorded in the manifest (never silent).
    """
    if not max_positions:
        return PlannedShapes(shapes, ())
    notes = []
    seq, past = shapes.sequence, shapes.past
    total = seq.max + (past.max if past is not None else 0)
    if total > max_positions:
        # Keep the profile's prefill/cache proportions: scale both maxima down together.
        seq_max = max(1, min(max_positions, seq.max * max_positions // total))
        seq = _cap(seq, seq_max)
        if past is not None:
            past = _cap(past, max(max_positions - seq_max, 1))
        notes.append(
            f"sequence max {shapes.sequence.max} -> {seq.max}"
            + (f", past max {shapes.past.max} -> {past.max}" if past is not None and shapes.past is not None else "")
            + f" (the model has {max_positions} positions)"
        )
    for n in notes:
        log.warning("shape range fitted to the model: %s", n)
    return PlannedShapes(TaskShapes(shapes.batch, seq, past), tuple(notes))


def _cap(r: ShapeRange, top: int) -> ShapeRange:
    mx = min(r.max, top)
    opt = min(r.opt, mx)
    return ShapeRange(min(r.min, opt), opt, mx)


def onnx_inputs(onnx_path: Path) -> list[tuple[str, list[int | str]]]:
    """Graph inputs (name, dims) of an ONNX file, without loading its weights."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims: list[int | str] = [d.dim_param if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]
        out.append((vi.name, dims))
    return out


def _dim_value(dim: int | str, values: dict[str, int], input_name: str) -> int:
    if isinstance(dim, int):
        if dim <= 0:
            raise ConfigError(f"input {input_name!r} has an unnamed dynamic dimension; cannot plan its range")
        return dim
    total = 0
    for term in dim.split("+"):
        sym = term.strip()
        axis = DIM_SYMBOLS.get(sym)
        if axis is None or axis not in values:
            raise ConfigError(
                f"input {input_name!r}: dynamic dimension {dim!r} maps to no profile axis",
                hint=f"known symbols: {sorted(DIM_SYMBOLS)}",
            )
        total += values[axis]
    return total


def optimization_profile(inputs: list[tuple[str, list[int | str]]], shapes: TaskShapes) -> OptimizationProfile:
    """One optimization profile: every input's min/opt/max from the task's axis ranges."""
    axes = shapes.axes()
    points = {k: {axis: getattr(r, k) for axis, r in axes.items()} for k in ("min", "opt", "max")}
    result = []
    for name, dims in inputs:
        result.append(InputShape(
            name=name,
            min=tuple(_dim_value(d, points["min"], name) for d in dims),
            opt=tuple(_dim_value(d, points["opt"], name) for d in dims),
            max=tuple(_dim_value(d, points["max"], name) for d in dims),
        ))
    return OptimizationProfile(tuple(result))


def make_plan(
    profile: TargetProfile,
    task: str,
    onnx_path: Path,
    precision: str,
    *,
    max_positions: int | None = None,
    planned: PlannedShapes | None = None,
    onnx_rel: str = ONNX_PATH,
    engine_rel: str = ENGINE_PATH,
) -> tuple[BuildPlan, PlannedShapes]:
    """The BuildPlan for ``onnx_path`` on ``profile`` (paths in the plan are bundle-relative).

    ``planned`` (from ``fit_shapes``) is used as is; otherwise the task's shapes are fitted here.
    """
    planned = planned or fit_shapes(profile.shapes[task], max_positions)
    # a cross-building flavour (TensorRT-RTX) names the GPUs to build for; the others build for the one they run on
    cross = ENGINE_FLAVOURS[profile.engine_flavour].cross_builds
    plan = BuildPlan(
        flavour=profile.engine_flavour,
        onnx=onnx_rel,
        engine=engine_rel,
        precision=precision,
        profiles=(optimization_profile(onnx_inputs(onnx_path), planned.shapes),),
        compute_capabilities=(profile.compute_capability,) if cross else (),
        hardware_compatibility="none" if cross else profile.hardware_compatibility,
        version_compatible=False if cross else profile.version_compatible,
        workspace_bytes=profile.workspace_mib << 20,
        builder_optimization_level=profile.builder_optimization_level,
        timing_cache=False,
        target=profile.name,
        target_hash=profile_hash(profile),
    )
    return plan, planned
