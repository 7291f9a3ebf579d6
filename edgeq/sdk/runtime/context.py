"""How much a request may ask of the serving engine, checked before its first step.

The limits come from what the bundle records, never from guessing:

- the model's position table (``edgeq_model.json``: ``max_position_embeddings``) bounds every backend;
- a TensorRT / TensorRT-RTX engine runs one optimization profile, whose min/opt/max shapes `edgeq build`
  records in the manifest (``build.profile_shapes``, signed with it): the ``past`` maximum of the
  ``past_key_values.*`` inputs bounds the KV cache, the ``sequence`` maximum of ``input_ids`` the
  tokens one run takes (a longer prompt is prefilled in chunks of it through the KV cache, so it bounds
  no prompt), the ``batch`` maximum the rows of one step;
- ONNX Runtime runs any shape, so only the position table applies to the ``onnx`` entry.

A bundle that records neither (an old one, or a graph without position facts) has no limit here; the
engine then refuses an oversized shape when it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from edgeq.errors import ConfigError, ContextLengthError

#: What ``truncate`` may be: refuse an over-long prompt, or keep its end (the newest turns of a chat).
TRUNCATE_POLICIES = ("error", "left")


@dataclass(frozen=True)
class ContextLimits:
    """What one request may use on the serving engine (None = no limit recorded).

    Args:
        max_context: prompt tokens + ``max_new_tokens`` must not exceed this (the position table, and
            the KV cache's ``past`` maximum + 1 of an engine's profile).
        max_prompt: the most prompt tokens one prefill run takes (the profile's ``sequence`` maximum); a
            longer prompt is prefilled in chunks of this size (``decode.prefill``), so only
            ``max_context`` bounds a prompt to generate from (an encoder's input is one run: this bounds it).
        max_batch: the most rows one step takes (the profile's ``batch`` maximum).
        source: where the binding limit came from, for error messages.
    """

    max_context: int | None = None
    max_prompt: int | None = None
    max_batch: int | None = None
    source: str = "none"

    def __post_init__(self) -> None:
        for name in ("max_context", "max_prompt", "max_batch"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"ContextLimits.{name} must be >= 1 or None, got {v}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _profile_max(manifest: Any) -> dict[str, int]:
    """batch / sequence / past maxima of the first recorded optimization profile ({} when none is)."""
    build = getattr(manifest, "build", None) or {}
    profiles = build.get("profile_shapes") if isinstance(build, dict) else None
    if not isinstance(profiles, list) or not profiles or not isinstance(profiles[0], dict):
        return {}
    out: dict[str, int] = {}
    try:
        for inp in profiles[0].get("inputs", ()):  # edgeq plans exactly one profile per engine
            name, mx = inp["name"], [int(v) for v in inp["max"]]
            if name == "input_ids" and len(mx) == 2:
                out["batch"], out["sequence"] = mx
            elif name.startswith("past_key_values.") and len(mx) == 4:
                out["past"] = min(out.get("past", mx[2]), mx[2])
    except (KeyError, TypeError, ValueError):
        return {}  # a malformed record is no limit: the engine still refuses a wrong shape itself
    return out


def engine_limits(info: Any, manifest: Any, flavour: str) -> ContextLimits:
    """The limits of ``manifest``'s engine of ``flavour`` for a model described by ``info`` (a ModelInfo)."""
    ctx: list[tuple[int, str]] = []
    if info.max_position_embeddings:
        ctx.append((int(info.max_position_embeddings), "the model's position table"))
    prof = _profile_max(manifest) if flavour != "onnx" else {}
    if "past" in prof:
        # The last step feeds a KV cache of prompt + generated - 2 tokens; +1 keeps the usual
        # "prompt + max_new_tokens <= context" contract conservative by one token.
        ctx.append((prof["past"] + 1, f"the {flavour} engine profile's KV-cache maximum"))
    if "sequence" in prof and not ctx:
        ctx.append((prof["sequence"], f"the {flavour} engine profile's sequence maximum"))
    limit, source = min(ctx) if ctx else (None, "none")
    return ContextLimits(max_context=limit, max_prompt=prof.get("sequence"), max_batch=prof.get("batch"),
                         source=source)


def fit_prompt(ids: Sequence[int], max_new_tokens: int, limits: ContextLimits, truncate: str = "error",
               *, model: str = "the model") -> tuple[list[int], int]:
    """``ids`` checked against ``limits`` (and cut from the left when ``truncate="left"``).

    Returns (the ids to run, how many were dropped). Raises ContextLengthError when the prompt cannot fit,
    or when ``max_new_tokens`` alone leaves no room for any prompt.
    """
    if truncate not in TRUNCATE_POLICIES:
        raise ConfigError(f"truncate must be one of {list(TRUNCATE_POLICIES)}, got {truncate!r}")
    n = len(ids)
    room: int | None = None
    limit = 0
    why = ""
    if limits.max_context is not None:
        room, limit = limits.max_context - max_new_tokens, limits.max_context
        why = (f"{n} prompt tokens + max_new_tokens {max_new_tokens} exceed the {limit}-token context of "
               f"{model} ({limits.source})")
        if room < 1:
            raise ContextLengthError(
                f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the {limit}-token context of "
                f"{model} ({limits.source})", prompt_tokens=n, max_new_tokens=max_new_tokens, limit=limit,
                hint=f"ask for at most {limit - 1} new tokens")
    if room is None or n <= room:
        return list(ids), 0
    if truncate == "left":
        return list(ids[n - room:]), n - room
    raise ContextLengthError(why, prompt_tokens=n, max_new_tokens=max_new_tokens, limit=limit,
                             hint="shorten the prompt, ask for fewer new tokens, or pass truncate='left'")
