"""Fleet updates: fetch bundles from a TUF repository with python-tuf's ngclient, install through the store.

TUF gives the device protection from rollback (older metadata versions refused), freeze (expired
metadata refused), mix-and-match (snapshot pins every targets version) and endless-data attacks
(every download is length-bounded and hashed). The store then verifies the bundle itself as for any
install (signature, compatibility, hashes), so a TUF compromise alone still cannot install an
unsigned engine. A refused update leaves the store, and the version it serves, untouched.

Per-repository client state lives in ``<store>/tuf/<sha256(url)[:16]>/``: ``trusted_root.json`` (the
bootstrap trust anchor given on first pull), ``metadata/`` (ngclient's cache) and ``downloads/``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeq._fs import atomic_write_bytes
from edgeq.errors import ConfigError, UpdateError
from edgeq.sdk.store.store import Store

INDEX_TARGET = "index.json"
#: index.json is tiny; anything larger is refused before it is parsed.
MAX_INDEX_BYTES = 1 << 20


@dataclass(frozen=True)
class PullResult:
    model: str
    version: int
    action: str  # "installed" | "up-to-date"


def _client_dir(store: Store, url: str) -> Path:
    return store.root / "tuf" / hashlib.sha256(url.encode()).hexdigest()[:16]


def _explain(exc: Exception) -> UpdateError:
    from tuf.api import exceptions as tx

    if isinstance(exc, tx.ExpiredMetadataError):
        msg = f"repository metadata has expired (possible freeze attack): {exc}"
    elif isinstance(exc, tx.BadVersionNumberError):
        msg = f"repository metadata is older than what this device already trusts (rollback attack?): {exc}"
    elif isinstance(exc, tx.UnsignedMetadataError):
        msg = f"repository metadata is not signed by the trusted keys: {exc}"
    elif isinstance(exc, tx.LengthOrHashMismatchError | tx.DownloadLengthMismatchError):
        msg = f"downloaded data does not match its signed length/hash: {exc}"
    elif isinstance(exc, tx.DownloadError):
        msg = f"download failed: {exc or type(exc).__name__}"
    else:
        msg = f"update refused: {type(exc).__name__}: {exc}"
    return UpdateError(msg, hint="the device keeps serving its current version")


def pull(
    url: str,
    store: Store,
    *,
    root: str | Path | bytes | None = None,
    models: list[str] | None = None,
    allow_downgrade: bool = False,
    socket_timeout: int = 30,
) -> list[PullResult]:
    """Refresh TUF metadata from ``url`` and install the newest published version of each model.

    ``root`` (path or bytes of the repository's ``1.root.json``) is required on the first pull from
    a URL and pinned afterwards. ``models`` limits which models are pulled (default: all in the index).
    Raises UpdateError (store untouched) on any TUF verification failure.
    """
    from tuf.api import exceptions as tx
    from tuf.ngclient import Updater
    from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher
    from urllib3.exceptions import HTTPError

    base = url.rstrip("/") + "/"
    cdir = _client_dir(store, base)
    trusted_root = cdir / "trusted_root.json"
    if root is not None:
        root_bytes = root if isinstance(root, bytes) else Path(root).read_bytes()
        if trusted_root.exists() and trusted_root.read_bytes() != root_bytes:
            raise ConfigError(f"a different trusted root is already pinned for {base} in {trusted_root}",
                              hint="root rotation happens through the repository; remove that directory to re-bootstrap")
        if not trusted_root.exists():
            (cdir / "metadata").mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(trusted_root, root_bytes)
    if not trusted_root.exists():
        raise ConfigError(f"no trusted root for {base}", hint="pass --root ROOT.json (the repository's 1.root.json) once")
    (cdir / "metadata").mkdir(parents=True, exist_ok=True)
    downloads = cdir / "downloads"
    shutil.rmtree(downloads, ignore_errors=True)
    downloads.mkdir()
    try:
        updater = Updater(
            metadata_dir=str(cdir / "metadata"),
            metadata_base_url=base + "metadata/",
            target_dir=str(downloads),
            target_base_url=base + "targets/",
            fetcher=Urllib3Fetcher(socket_timeout=socket_timeout, app_user_agent="edgeq"),
            bootstrap=trusted_root.read_bytes(),
        )
        updater.refresh()
        index = _fetch_index(updater)
        results: list[PullResult] = []
        wanted = models if models is not None else sorted(index)
        for name in wanted:
            entry = index.get(name)
            if entry is None:
                raise UpdateError(f"model {name!r} is not published at {base}")
            version, target = int(entry["version"]), str(entry["target"])
            st_versions = {v.version for v in store.versions(name)} if name in store.models() else set()
            if version in st_versions or (st_versions and version < max(st_versions) and not allow_downgrade):
                results.append(PullResult(name, version, "up-to-date"))
                continue
            info = updater.get_targetinfo(target)
            if info is None:
                raise UpdateError(f"{target} is in the index but not in the signed targets metadata")
            path = updater.download_target(info)
            try:
                store.install(path, allow_downgrade=allow_downgrade)
            finally:
                Path(path).unlink(missing_ok=True)
            store.record_event(name, {"event": "pull", "version": version, "url": base})
            results.append(PullResult(name, version, "installed"))
        return results
    except (tx.RepositoryError, tx.DownloadError) as exc:
        raise _explain(exc) from exc
    except HTTPError as exc:
        raise UpdateError(f"cannot reach {base}: {exc}", hint="the device keeps serving its current version") from exc
    finally:
        shutil.rmtree(downloads, ignore_errors=True)


def _fetch_index(updater: Any) -> dict[str, Any]:
    info = updater.get_targetinfo(INDEX_TARGET)
    if info is None:
        return {}
    if info.length > MAX_INDEX_BYTES:
        raise UpdateError(f"index.json is {info.length} bytes; refusing it")
    path = updater.download_target(info)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        models = data["models"]
        if not isinstance(models, dict):
            raise TypeError("models is not an object")
        return models
    except (ValueError, KeyError, TypeError) as exc:
        raise UpdateError(f"repository index.json is malformed: {exc}") from exc
    finally:
        Path(path).unlink(missing_ok=True)
