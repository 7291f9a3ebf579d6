"""The backend lifecycle every runtime backend shares, and the registry that picks one.

The base class owns the public ``open / infer / close`` and the context manager; a backend implements
``_open`` / ``_infer`` / ``_close`` and says whether it can serve a version on this machine
(``available`` and ``match``). ``select_backend`` walks the registry in preference order
(TensorRT engine → ONNX Runtime on GPU → ONNX Runtime CPU) and opens the first that fits.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgeq.errors import BundleError, ConfigError, NoBackendError, RuntimeErrorBase
from edgeq.sdk.bundle.manifest import EngineInfo
from edgeq.sdk.runtime.backends.binding import Binder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendOptions:
    """How backends are chosen and configured.

    Args:
        prefer: backend names to consider, in this order (None = every registered backend, by preference).
        intra_op_threads: ONNX Runtime intra-op threads (0 = library default, all cores).
        graph_optimization: ONNX Runtime graph optimization level: "disable" | "basic" | "extended" | "all".
        device_id: the CUDA device the GPU backends run on.
        profile_prefix: write an ONNX Runtime profile (a chrome-trace JSON, per session) with this file prefix;
            for finding copies and slow nodes, off by default (it costs time on every run).
    """

    prefer: tuple[str, ...] | None = None
    intra_op_threads: int = 0
    graph_optimization: str = "all"
    device_id: int = 0
    profile_prefix: str | None = None

    def __post_init__(self) -> None:
        if self.prefer is not None:
            object.__setattr__(self, "prefer", tuple(self.prefer))
            unknown = [p for p in self.prefer if p not in BACKENDS]
            if unknown:
                raise ConfigError(f"unknown backend(s) {unknown}; known: {sorted(BACKENDS)}")
        if self.intra_op_threads < 0:
            raise ConfigError("intra_op_threads must be >= 0")
        if self.graph_optimization not in ("disable", "basic", "extended", "all"):
            raise ConfigError(f"unknown graph_optimization {self.graph_optimization!r}")
        if self.device_id < 0:
            raise ConfigError("device_id must be >= 0")


class Backend(ABC):
    """One opened model on one execution library. ``infer`` takes name → array feeds, returns outputs in order."""

    name: ClassVar[str]
    #: lower runs first
    priority: ClassVar[int]

    def __init__(self) -> None:
        self.input_names: list[str] = []
        #: name → numpy dtype of every input (an FP16 graph takes its KV cache in float16)
        self.input_dtypes: dict[str, np.dtype] = {}
        self.output_names: list[str] = []
        self.description = self.name
        self._open_ = False

    # -- what a backend says about itself ------------------------------------------------------------
    @classmethod
    @abstractmethod
    def available(cls) -> str | None:
        """None when this backend can run on this machine, else the reason it cannot."""

    @classmethod
    @abstractmethod
    def match(cls, version: Any) -> EngineInfo | None:
        """The artifact of ``version`` this backend would run, or None."""

    # -- lifecycle -------------------------------------------------------------------------------------
    def open(self, version: Any, engine: EngineInfo, options: BackendOptions) -> Backend:
        self._open(version, engine, options)
        self._open_ = True
        return self

    def infer(self, feeds: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]:
        """Run one inference. Outputs come back in ``output_names`` order."""
        return self._infer(feeds)

    def binder(self, info: Any) -> Binder | None:
        """I/O bindings on this backend's device for one LM generation (``binding.Binder``), or None.

        With one, the decode loop keeps the KV cache in the backend's buffers; without, it goes through
        ``infer`` as host arrays. ``info`` is the bundle's ModelInfo.
        """
        return None

    def close(self) -> None:
        if self._open_:
            self._open_ = False
            self._close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def _open(self, version: Any, engine: EngineInfo, options: BackendOptions) -> None: ...

    @abstractmethod
    def _infer(self, feeds: Mapping[str, np.ndarray]) -> Sequence[np.ndarray]: ...

    def _close(self) -> None:
        return None


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: add a backend to the registry (returns the class)."""
    BACKENDS[cls.name] = cls
    return cls


def _ordered(options: BackendOptions) -> list[type[Backend]]:
    if options.prefer is not None:
        return [BACKENDS[n] for n in options.prefer]
    return sorted(BACKENDS.values(), key=lambda c: c.priority)


def select_backend(
    version: Any, options: BackendOptions, *, on_skip: Callable[[str, str], None] | None = None
) -> Backend:
    """Open ``version`` with the first backend that is available here and has an artifact to run.

    A hash mismatch or missing file (BundleError) is never hidden by trying another backend: the version is bad.
    """
    reasons: list[str] = []
    for cls in _ordered(options):
        why = cls.available()
        engine = cls.match(version) if why is None else None
        if why is None and engine is None:
            why = "the bundle has no artifact for it"
        if why is not None:
            reasons.append(f"{cls.name}: {why}")
            if on_skip:
                on_skip(cls.name, why)
            continue
        backend = cls()
        try:
            return backend.open(version, engine, options)
        except BundleError:
            raise
        except RuntimeErrorBase as exc:
            reasons.append(f"{cls.name}: {exc.message}")
        except Exception as exc:  # a library failing to load an artifact: try the next backend
            log.warning("backend %s could not open %s v%s: %s", cls.name, version.model, version.version, exc)
            reasons.append(f"{cls.name}: {type(exc).__name__}: {exc}")
        if on_skip:
            on_skip(cls.name, reasons[-1])
    raise NoBackendError(
        f"no backend can run {version.model} v{version.version}: " + "; ".join(reasons),
        hint="install onnxruntime, or a bundle built for this device's GPU",
    )
