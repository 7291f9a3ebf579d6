"""Where the device store keeps things, and the two ways it deletes them.

One place for the on-disk layout (see ``edgeq.sdk.store.store``) so that the store, the install state
machine, crash recovery and the derived cache agree on every path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeq._fs import fsync_dir
from edgeq.errors import ConfigError

CONFIG_NAME = "store.json"
STATE_NAME = "state.json"
EVENTS_NAME = "events.jsonl"


@dataclass(frozen=True)
class StoreLayout:
    """The paths of a store rooted at ``root`` (absolute)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def model_dir(self, model: str) -> Path:
        # the model name comes from a manifest or a caller: it must name one directory below models/
        if not model or "/" in model or "\\" in model or model.startswith(".") or "\x00" in model:
            raise ConfigError(f"invalid model name {model!r}")
        return self.models / model

    def state_file(self, model: str) -> Path:
        return self.model_dir(model) / STATE_NAME

    def events_file(self, model: str) -> Path:
        return self.model_dir(model) / EVENTS_NAME

    def versions_dir(self, model: str) -> Path:
        return self.model_dir(model) / "versions"

    def version_dir(self, model: str, version: int) -> Path:
        return self.versions_dir(model) / str(version)

    def derived_dir(self, model: str, version: int) -> Path:
        return self.model_dir(model) / "derived" / str(version)

    def discard(self, path: Path) -> None:
        """Delete a directory tree so that no reader ever sees it half-deleted.

        It is renamed into ``staging/`` first (atomic), then removed; a crash part-way leaves only
        staging leftovers, which recovery sweeps.
        """
        trash = Path(tempfile.mkdtemp(prefix="trash-", dir=self.staging))
        os.replace(path, trash / "x")
        fsync_dir(path.parent)
        shutil.rmtree(trash, ignore_errors=True)


def rm(p: Path) -> None:
    """Remove a file or a directory tree, whatever is there (leftovers nobody references)."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
