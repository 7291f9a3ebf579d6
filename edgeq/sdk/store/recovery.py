"""Crash recovery: sweep what interrupted store operations left behind (run under the lock).

Nothing a crash leaves is ever referenced by a committed ``state.json``: staged installs, versions
renamed into place but never committed, derived files never recorded, temporary files of atomic
writes. Removing them restores exactly the tree a clean run of the last committed operation leaves.
"""

from __future__ import annotations

from edgeq._fs import TMP_PREFIX, fsync_dir
from edgeq.sdk.store import derived
from edgeq.sdk.store._layout import STATE_NAME, StoreLayout, rm
from edgeq.sdk.store._state import read_state


def sweep(layout: StoreLayout) -> list[str]:
    """Remove every unreferenced leftover; returns their paths relative to the store root."""
    removed: list[str] = []
    root = layout.root
    layout.staging.mkdir(exist_ok=True)
    for p in layout.staging.iterdir():
        rm(p)
        removed.append(str(p.relative_to(root)))
    for p in root.glob(TMP_PREFIX + "*"):
        rm(p)
        removed.append(p.name)
    models = layout.models
    for mdir in models.iterdir() if models.is_dir() else ():
        if not mdir.is_dir() or mdir.is_symlink():  # a stray file must not stop the store working
            continue
        st = read_state(mdir / STATE_NAME, mdir.name)
        installed = st.installed if st else {}
        for p in mdir.glob(TMP_PREFIX + "*"):
            rm(p)
            removed.append(str(p.relative_to(root)))
        vdir = mdir / "versions"
        for p in vdir.iterdir() if vdir.is_dir() else ():
            if not p.name.isdigit() or int(p.name) not in installed:
                layout.discard(p)
                removed.append(str(p.relative_to(root)))
        derived.sweep(layout, mdir, installed, removed)
        if st is None:  # a first install that never committed: leave no empty model dir behind
            for p in (vdir, mdir):
                if p.is_dir() and not any(p.iterdir()):
                    p.rmdir()
    if removed:
        fsync_dir(layout.staging)
    return removed
