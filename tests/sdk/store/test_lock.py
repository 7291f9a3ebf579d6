"""The store lock (``edgeq.sdk.store._lock``): one changer at a time, a dead holder's lock taken over, and
a Windows fallback (``msvcrt.locking``) where ``fcntl`` is missing."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeq.errors import StoreLockedError
from edgeq.sdk.store.store import Store
from tests.sdk.store.conftest import ADA

REPO = Path(__file__).resolve().parents[3]


def _store(root: Path, keypair, **kw) -> Store:  # type: ignore[no-untyped-def]
    return Store(root, trusted_keys=[keypair.public_path], device=ADA, **kw)


def test_lock_excludes_threads_of_one_process(tmp_path: Path) -> None:
    s = Store(tmp_path / "s", device=ADA)
    order: list[str] = []

    def worker(i: int) -> None:
        with s._lock:
            order.append(f"enter{i}")
            time.sleep(0.05)
            with s._lock:  # nesting in the holding thread still works
                pass
            order.append(f"exit{i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    pairs = [order[i : i + 2] for i in range(0, len(order), 2)]
    assert len(order) == 6 and all(a[5:] == b[4:] and a.startswith("enter") for a, b in pairs), order


def _hold_lock(root: str, ready, pause: float) -> None:  # type: ignore[no-untyped-def]
    s = Store(root, device=ADA)
    with s._lock:
        ready.set()
        time.sleep(pause)


def test_lock_serialises_and_dead_holder_is_recovered(tmp_path, keypair, make_bundle):
    root = tmp_path / "store"
    s = _store(root, keypair, lock_timeout=0.3)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(root), ready, 60))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
            s.install(make_bundle(1))
        os.kill(holder.pid, signal.SIGKILL)  # the holder dies without releasing anything
        holder.join(10)
        assert (root / ".lock").exists()  # the stale lock file is still there...
        assert s.install(make_bundle(1)).version == 1  # ...and is taken over
    finally:
        if holder.is_alive():
            holder.kill()


def test_concurrent_installs_are_serialised(tmp_path, keypair, make_bundle):
    root = tmp_path / "store"
    _store(root, keypair)
    bundles = [str(make_bundle(v)) for v in (1, 2, 3, 4)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_install_quietly, [(str(root), b) for b in bundles])
    ok = [r for r in results if r.startswith("ok")]
    assert ok, results  # some succeed; the rest are refused cleanly as downgrades, never corrupt
    s = Store(root, device=ADA)
    assert all(r.startswith(("ok", "DowngradeError")) for r in results), results
    for v in s.versions("tiny"):
        s.verify("tiny", v.version)
    assert s.recover() == []


def _install_quietly(root: str, bundle: str) -> str:
    try:
        return f"ok {Store(root, device=ADA).install(bundle).version}"
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        return f"{type(exc).__name__}: {exc}"


# A Windows-like interpreter: no fcntl, no resource. With FAKE_MSVCRT a stand-in for msvcrt.locking (built on
# the real flock, taken before fcntl is hidden) checks that the fallback path is the one that locks.
_WINDOWS_LIKE = r'''
import json, sys, types
import fcntl as real_fcntl
sys.modules["fcntl"] = None
sys.modules["resource"] = None

import edgeq.sdk.store.store, edgeq.sdk.store.update, edgeq.sdk.engine.builder, edgeq.sdk.runtime.runtime
from edgeq.errors import StoreError, StoreLockedError
from edgeq.sdk.device import DeviceInfo
from edgeq.sdk.engine.builder import _PeakRss
from edgeq.sdk.store._lock import StoreLock
from edgeq.sdk.store.store import Store

# Only now: the stdlib (subprocess) takes an importable msvcrt to mean Windows.
calls = []
if FAKE_MSVCRT:
    msvcrt = types.ModuleType("msvcrt")
    msvcrt.LK_UNLCK, msvcrt.LK_NBLCK = 0, 2
    def locking(fd, mode, nbytes):
        calls.append((mode, nbytes))
        try:
            real_fcntl.flock(fd, real_fcntl.LOCK_UN if mode == 0 else real_fcntl.LOCK_EX | real_fcntl.LOCK_NB)
        except BlockingIOError:
            raise PermissionError(13, "Permission denied")  # what the CRT's _locking reports
    msvcrt.locking = locking
    sys.modules["msvcrt"] = msvcrt
else:
    sys.modules["msvcrt"] = None

root, bundle, key = sys.argv[1:4]
import os
out = {"fcntl_loaded": sys.modules.get("fcntl") is not None, "pid": os.getpid()}
peak = _PeakRss()
peak.method = "ru_maxrss"  # the path that needed resource
out["peak"] = list(peak.read())
store = Store(root, trusted_keys=[key], device=DeviceInfo("8.9", {"tensorrt_rtx": "1.7.1.116"}), lock_timeout=0.3)
out["backend"] = store._lock.backend
try:
    out["installed"] = store.install(bundle).version
except StoreError as exc:
    out["install_error"] = str(exc)
if FAKE_MSVCRT:
    with store._lock:
        try:
            with StoreLock(store._lock.path, timeout=0.3):
                out["second_lock"] = "taken"
        except StoreLockedError as exc:
            out["second_lock"] = str(exc)
    with StoreLock(store._lock.path, timeout=0.3):
        out["after_release"] = "taken"
out["calls"] = calls
print(json.dumps(out))
'''


@pytest.mark.parametrize("fake_msvcrt", [True, False], ids=["msvcrt", "no-locking"])
def test_store_and_builder_import_without_fcntl_and_resource(tmp_path, keypair, make_bundle, fake_msvcrt):
    code = f"FAKE_MSVCRT = {fake_msvcrt}\n" + _WINDOWS_LIKE
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "store"), str(make_bundle(1)),
                           str(keypair.public_path)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["fcntl_loaded"] is False
    assert out["peak"] == [0, "unavailable"]
    if fake_msvcrt:
        assert out["backend"] == "msvcrt" and out["installed"] == 1
        assert f"locked by another process (pid {out['pid']})" in out["second_lock"], out["second_lock"]
        assert out["after_release"] == "taken"
        # every lock and unlock went through msvcrt.locking, one byte past the PID text
        assert {m for m, _ in out["calls"]} == {0, 2} and {n for _, n in out["calls"]} == {1}
    else:
        assert out["backend"] == "none"
        assert "no file locking" in out["install_error"]
        assert not (tmp_path / "store" / "models" / "tiny").exists()
