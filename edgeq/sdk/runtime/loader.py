"""Load one installed version into a serving handle: backend, model info, tokenizer, health spec.

Every file is read through the version's verified accessors; a hash mismatch raises IntegrityError
and the version is refused. A handle counts the requests running on it, so that a switch to another
version lets them finish before the old backend is closed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from edgeq.errors import BundleError
from edgeq.sdk.runtime.backends import Backend, BackendOptions, select_backend
from edgeq.sdk.runtime.decode import LmStepper
from edgeq.sdk.bundle.health import CANARIES_NPZ, HEALTH_JSON, HealthSpec, Thresholds
from edgeq.sdk.bundle.model_info import GENERIC, MODEL_INFO_NAME, TEXT_GENERATION, ModelInfo
from edgeq.sdk.runtime.tokenizer import TOKENIZER_FILES, DeviceTokenizer

log = logging.getLogger(__name__)


@dataclass
class Handle:
    """One loaded version. ``inflight``/``retired`` are guarded by the runtime's lock."""

    version: int
    files: Any
    backend: Backend
    info: ModelInfo
    spec: HealthSpec | None
    tokenizer: DeviceTokenizer | None
    stepper: LmStepper | None = None
    eos_ids: frozenset[int] = frozenset()
    pad_id: int = 0
    inflight: int = 0
    retired: bool = False
    output_names: list[str] = field(default_factory=list)
    #: canary outputs of the first healthy check after loading (the drift reference)
    fingerprint: Any = None

    def close(self) -> None:
        if self.stepper is not None:  # its pooled KV buffers live on the backend's device
            self.stepper.close()
        self.backend.close()


def _by_basename(files: Any, names: tuple[str, ...]) -> dict[str, str]:
    """basename → bundle path for the listed names (first match wins; the manifest order is stable)."""
    found: dict[str, str] = {}
    for f in files.manifest.files:
        base = f.path.rsplit("/", 1)[-1]
        if base in names and base not in found:
            found[base] = f.path
    return found


def load_health(files: Any, thresholds: Thresholds | None) -> HealthSpec | None:
    """The version's health spec (None when the bundle has none), with the app's thresholds if given."""
    m = files.manifest
    rel = m.health or HEALTH_JSON
    listed = {f.path for f in m.files}
    if rel not in listed:
        return None
    npz = CANARIES_NPZ if CANARIES_NPZ in listed else None
    spec = HealthSpec.from_bytes(files.read(rel), files.read(npz) if npz else None)
    return spec.with_thresholds(thresholds) if thresholds is not None else spec


def load_version(files: Any, options: BackendOptions, thresholds: Thresholds | None = None,
                 on_skip: Any = None) -> Handle:
    """Open ``files`` (a VersionFiles) for serving. Raises BundleError/IntegrityError/NoBackendError."""
    found = _by_basename(files, (MODEL_INFO_NAME, *TOKENIZER_FILES))
    info = ModelInfo.from_bytes(files.read(found[MODEL_INFO_NAME])) if MODEL_INFO_NAME in found else None
    if info is None:
        info = ModelInfo(task=files.manifest.task if files.manifest.task in (TEXT_GENERATION, GENERIC,
                                                                                   "feature-extraction") else GENERIC)
    tok_files = {name: files.read(path) for name, path in found.items() if name in TOKENIZER_FILES}
    tokenizer = DeviceTokenizer(tok_files) if "tokenizer.json" in tok_files else None
    spec = load_health(files, thresholds)
    backend = select_backend(files, options, on_skip=on_skip)
    h = Handle(version=files.version, files=files, backend=backend, info=info, spec=spec, tokenizer=tokenizer,
               output_names=list(backend.output_names))
    if info.task == TEXT_GENERATION:
        if tokenizer is None:
            backend.close()
            raise BundleError(f"{files.model} v{files.version}: a text-generation bundle needs tokenizer.json")
        h.stepper = LmStepper(backend, info)
        eos = set(info.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        h.eos_ids = frozenset(eos)
        h.pad_id = tokenizer.pad_token_id
    return h
