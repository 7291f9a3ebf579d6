"""The one error tree of edgeq. Every failure a user can cause or meet maps to a subclass here.

Each error carries a one-line ``message`` and an optional ``hint`` (what to do next); the CLI prints
``error: <message>`` and, when present, ``hint: <hint>``, and exits with the class's ``exit_code``.
Only the standard library is imported here: every layer, the device runtime included, may import it.
"""

from __future__ import annotations


class EdgeqError(Exception):
    """Base class of every error edgeq raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


# -- configuration and input ------------------------------------------------------------------
class ConfigError(EdgeqError, ValueError):
    """A config, option or profile value is invalid (raised from ``__post_init__``, never ``assert``)."""

    exit_code = 2


class ModelNotFoundError(EdgeqError):
    """A model name, hub id, directory or file could not be resolved."""

    exit_code = 2


class UnsupportedArchitectureError(EdgeqError):
    """The model's architecture or task has no supported export/quantization path."""

    exit_code = 2


class CorruptWeightsError(EdgeqError):
    """A weights file is truncated, corrupt or not what its name says."""

    exit_code = 2


# -- filesystem ---------------------------------------------------------------------------------
class OutputError(EdgeqError):
    """Writing an output failed; nothing partial was left behind."""

    exit_code = 3


class OutputNotWritableError(OutputError):
    pass


class OutputExistsError(OutputError):
    pass


class DiskFullError(OutputError):
    pass


# -- conversion ---------------------------------------------------------------------------------
class ExportError(EdgeqError):
    """The exporter failed on a model it claims to support."""


class ValidationError(EdgeqError):
    """A converted model disagrees with its reference beyond the stated tolerance."""

    exit_code = 4


class QuantizationError(EdgeqError):
    """Quantization could not run (no linear layers, block size that cannot fit, too little calibration data)."""

    exit_code = 2


class AccuracyBudgetError(ValidationError):
    """No allowed precision mix meets the accuracy budget. ``culprits``: the per-layer sensitivity rows, most
    sensitive first, when the search got as far as scoring the layers."""

    culprits: list[dict[str, object]] | None = None


# -- targets and engines ----------------------------------------------------------------------
class TargetError(EdgeqError):
    exit_code = 2


class UnknownTargetError(TargetError):
    pass


class UnsupportedPrecisionError(TargetError):
    pass


class MemoryBudgetError(TargetError):
    pass


class EngineBuildError(EdgeqError):
    """The TensorRT builder failed; the message carries the builder log tail."""

    exit_code = 5


class OnnxParseError(EngineBuildError):
    """TensorRT's ONNX parser rejected the model; the message names the nodes."""


class BackendUnavailableError(EdgeqError):
    """A library a step needs (tensorrt, tensorrt_rtx, onnxruntime-gpu) is not importable here."""

    exit_code = 5


# -- bundles, store, shipping -----------------------------------------------------------------
class BundleError(EdgeqError):
    """A bundle is malformed, unsigned, tampered with or incompatible. Nothing was installed."""

    exit_code = 6


class SignatureError(BundleError):
    pass


class IntegrityError(BundleError):
    """A file's size or SHA-256 does not match what the manifest records."""


class UnsafeArchiveError(BundleError):
    pass


class IncompatibleBundleError(BundleError):
    pass


class DowngradeError(BundleError):
    pass


class StoreError(EdgeqError):
    exit_code = 7


class StoreLockedError(StoreError):
    pass


class NotInstalledError(StoreError):
    pass


class StoreFullError(StoreError, DiskFullError):
    """An install was refused before writing: the store's filesystem has less free space than the bundle needs.

    Both a StoreError and a DiskFullError, so either ``except`` catches it; it exits like every other full
    disk (3), which a fleet script can tell from a refused or broken bundle (6) and retry after cleanup.
    """

    exit_code = 3


class UpdateError(EdgeqError):
    """Fetching an update from a TUF repository failed or was refused."""

    exit_code = 8


# -- runtime ------------------------------------------------------------------------------------
class RuntimeErrorBase(EdgeqError):
    exit_code = 9


class NoBackendError(RuntimeErrorBase):
    pass


class DegradedError(RuntimeErrorBase):
    """No usable version of the model is left to serve."""


class ContextLengthError(ConfigError):
    """A prompt plus ``max_new_tokens`` does not fit the engine's context (checked before the first step)."""

    def __init__(self, message: str, *, prompt_tokens: int, max_new_tokens: int, limit: int,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.limit = limit


class OverloadedError(RuntimeErrorBase):
    """Too many requests are waiting for the model; retry later (the server answers 429)."""


class DeadlineExceededError(RuntimeErrorBase, TimeoutError):
    """A request with no partial result to return (an embedding) ran past its deadline."""
