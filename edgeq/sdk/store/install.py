"""The install state machine, plan then execute (run by ``Store.install`` under the store lock).

:func:`plan` checks everything before the first byte is written: the signature over the canonical
manifest, compatibility with this device, already-installed and downgrade-floor rules, the file list's
layout and limits, that the bundle holds exactly the listed files (names and sizes), the target path,
and free space on the store's filesystem for the whole bundle.
:func:`execute` then stages the listed files (each hashed once, while it is copied or extracted),
fsyncs them, renames the staged directory to ``versions/<v>``, atomically replaces ``state.json``
(the commit point) and prunes old versions. A failure or crash before the commit leaves the old
state; leftovers are unreferenced and recovery sweeps them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeq._fs import fsync_dir, fsync_tree, mkdir_durable
from edgeq.errors import DowngradeError, StoreError, StoreFullError
from edgeq.sdk.bundle.manifest import Manifest
from edgeq.sdk.bundle.signing import TrustedKeys
from edgeq.sdk.bundle.verify import BundleSource, SignedManifest, check_layout, load_signed_manifest
from edgeq.sdk.device import DeviceInfo, check_compatible
from edgeq.sdk.store._layout import StoreLayout
from edgeq.sdk.store._state import ModelState, append_event, now_iso, read_state, write_state

#: Free space an install must leave besides the bundle itself: filesystem blocks and inodes of many
#: files, the state and event files, and room for the device to go on logging after the install.
SPACE_MARGIN_BYTES = 64 << 20
SPACE_MARGIN_FRACTION = 0.02

Fault = Callable[[str], None]


def required_bytes(content_bytes: int) -> int:
    """Free bytes an install of ``content_bytes`` of bundle needs on the store's filesystem."""
    return content_bytes + SPACE_MARGIN_BYTES + int(content_bytes * SPACE_MARGIN_FRACTION)


@dataclass(frozen=True)
class InstallPlan:
    """An install whose every check passed; nothing has been written yet."""

    signed: SignedManifest
    state: ModelState  # the model's committed state when planned (execute commits a changed copy)
    final: Path  # models/<m>/versions/<v>
    content_bytes: int  # the listed files plus manifest.json/.sig
    free_bytes: int  # free on the store's filesystem when planned

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest


def plan(layout: StoreLayout, src: BundleSource, *, trusted: TrustedKeys, device: Callable[[], DeviceInfo],
         allow_unsigned: bool, allow_downgrade: bool, fault: Fault) -> InstallPlan:
    """Every check of an install, in trust order; raises with nothing written.

    ``device`` is called only once the signature verified: probing may load GPU libraries, which an
    unverified bundle must not cause.
    """
    signed = load_signed_manifest(src.manifest_bytes, src.signature_bytes, trusted, allow_unsigned=allow_unsigned)
    m = signed.manifest
    fault("signature_ok")
    check_compatible(m, device())
    st = read_state(layout.state_file(m.model_name), m.model_name) or ModelState(model=m.model_name)
    if m.bundle_version in st.installed:
        raise StoreError(f"{m.model_name} v{m.bundle_version} is already installed",
                         hint="activate it with `edgeq rollback --to`, or publish a new version")
    if m.bundle_version < st.floor and not allow_downgrade:
        raise DowngradeError(f"{m.model_name} v{m.bundle_version} is below the store's floor v{st.floor} (downgrade)",
                             hint="pass --allow-downgrade to install an older version on purpose")
    content = check_layout(m, src.limits) + len(src.manifest_bytes) + len(src.signature_bytes or b"")
    src.check_contents(m)  # exactly the listed files, before staging begins
    final = layout.version_dir(m.model_name, m.bundle_version)
    if os.path.lexists(final):  # recovery just removed unreferenced versions: someone writes without the lock
        raise StoreError(f"{final} exists but the store does not record it; refusing to overwrite it",
                         hint="run `edgeq status` once the other writer is done")
    free = shutil.disk_usage(layout.staging).free
    need = required_bytes(content)
    if free < need:
        raise StoreFullError(
            f"installing {m.model_name} v{m.bundle_version} needs {need / 2**20:.1f} MiB free on {layout.root} "
            f"({content / 2**20:.1f} MiB of bundle + margin), {free / 2**20:.1f} MiB are free; nothing was written",
            hint="free space on the device, or remove kept versions with `edgeq remove`")
    return InstallPlan(signed=signed, state=st, final=final, content_bytes=content, free_bytes=free)


def execute(layout: StoreLayout, p: InstallPlan, src: BundleSource, *, keep: int, fault: Fault) -> ModelState:
    """Stage, hash, fsync, rename, commit, prune; returns the committed state."""
    m = p.manifest
    staged = Path(tempfile.mkdtemp(prefix=f"{m.model_name}-{m.bundle_version}-", dir=layout.staging))
    try:
        fault("staging_created")
        src.materialize(staged, m, on_file=lambda _entry: fault("hashed_file"))
        fault("extracted")
        fsync_tree(staged)
        fault("fsynced")
        mkdir_durable(p.final.parent, layout.root)
        os.replace(staged, p.final)
        fsync_dir(p.final.parent)
        fault("renamed")
    except BaseException as exc:
        shutil.rmtree(staged, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFullError(f"the device ran out of space while staging {m.model_name} v{m.bundle_version}; "
                                 "nothing was installed", hint="free space on the device and retry") from exc
        raise
    st = dataclasses.replace(p.state, installed=dict(p.state.installed), bad=dict(p.state.bad))
    previous = st.active
    st.installed[m.bundle_version] = {"digest": p.signed.digest, "key_id": p.signed.key_id, "installed_at": now_iso()}
    st.active = m.bundle_version
    st.floor = max(st.floor, m.bundle_version)
    pruned = prune(st, keep)
    write_state(layout.state_file(m.model_name), st)  # commit point
    fault("committed")
    for v in pruned:
        layout.discard(layout.version_dir(m.model_name, v))
        fault("pruned")
    with contextlib.suppress(OSError):  # committed already; the event log is diagnostics only
        append_event(layout.events_file(m.model_name), {"event": "install", "version": m.bundle_version,
                                                        "previous": previous, "key_id": p.signed.key_id,
                                                        "pruned": pruned})
    return st


def prune(st: ModelState, keep: int) -> list[int]:
    """Drop all but the active version and ``keep`` others from ``st`` (bad ones go first, then the oldest)."""
    others = sorted((v for v in st.installed if v != st.active), key=lambda v: (v not in st.bad, v), reverse=True)
    drop = others[keep:]
    for v in drop:
        st.installed.pop(v)
        st.bad.pop(v, None)
    return sorted(drop)
