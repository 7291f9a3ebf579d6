"""Keep or re-quantize: what ``edgeq build`` does with a pre-quantized checkpoint on a given target.

Where the target runs the checkpoint's kind (FP8 on Ada/Hopper/Blackwell, INT4 weight-only everywhere edgeq
builds INT4), the published weights are kept exactly (scheme ``prequantized``) and the build's precision is
the target precision of that kind. Where it does not (an FP8 checkpoint for Jetson Orin, whose sm87 has no
FP8 tensor cores), or when ``--precision`` asks for another scheme, the dequantized weights are re-quantized
with that precision, and the build summary says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgeq.errors import ConfigError

#: target precisions that run each published kind as published (first: the default)
KIND_PRECISIONS: dict[str, tuple[str, ...]] = {"fp8": ("fp8",), "int4": ("int4-awq", "int4-rtn")}


@dataclass(frozen=True)
class TargetChoice:
    """``precision``: the target precision the build records; ``keep``: the published weights are kept exactly
    (else dequantized and re-quantized with ``precision``); ``note``: the line the build summary prints."""

    precision: str
    keep: bool
    note: str
    format: str

    def __post_init__(self) -> None:
        if not self.precision:
            raise ConfigError("a target choice needs a precision")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose(published: Any, profile: Any, task: str, precision: str | None) -> TargetChoice:
    """Keep or re-quantize ``published`` (formats.Published) on ``profile`` for ``task``.

    ``precision``: what the user asked (None: decide here). The caller still checks that the precision is
    one the target supports (``check_precision``), which refuses e.g. ``--precision fp8`` on Jetson Orin.
    """
    kind, fmt = published.format.kind, published.format.name
    supported = profile.precisions.get(task, ())
    runs = [p for p in KIND_PRECISIONS[kind] if p in supported]
    if precision is None and runs:
        precision = runs[0]
    if precision is not None and precision in KIND_PRECISIONS[kind]:
        return TargetChoice(precision, True, f"kept the checkpoint's {fmt} weights exactly (codes, scales"
                            f"{', zero points' if kind == 'int4' else ''}): no re-quantization", fmt)
    if precision is None:
        precision = profile.default_precision[task]
        why = next((profile.unsupported[p] for p in KIND_PRECISIONS[kind] if p in profile.unsupported),
                   f"{profile.name} has no {kind} precision for {task}")
        note = (f"{profile.name} cannot run the checkpoint's {kind.upper()} weights ({why}): dequantized them and "
                f"re-quantized to {precision}")
    else:
        note = f"--precision {precision} asked: dequantized the checkpoint's {fmt} weights and re-quantized them"
    return TargetChoice(precision, False, note, fmt)
