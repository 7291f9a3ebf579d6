"""Shipping through TUF over a real HTTP server on 127.0.0.1: publish, pull, and refused attacks (counted)."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from edgeq.converters.publish import TufExpiry, publish, refresh
from edgeq.errors import UpdateError
from edgeq.sdk.store.store import Store
from edgeq.sdk.store.update import pull
from tests.sdk.store.conftest import ADA

SERVER_LIFETIME_S = 90  # the server stops by itself even if a test hangs


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served_repo(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    repo = tmp_path / "repo"
    (repo / "public").mkdir(parents=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(repo / "public")))
    host, port = server.server_address[:2]
    assert host == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(SERVER_LIFETIME_S, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield repo, f"http://127.0.0.1:{port}/"
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(5)


def _device(tmp_path: Path, keypair) -> Store:  # type: ignore[no-untyped-def]
    return Store(tmp_path / "device", trusted_keys=[keypair.public_path], device=ADA)


def test_publish_and_pull(tmp_path, keypair, make_bundle, served_repo):
    repo, url = served_repo
    r1 = publish(make_bundle(1), repo)
    dev = _device(tmp_path, keypair)
    assert [(r.version, r.action) for r in pull(url, dev, root=r1.root_path)] == [(1, "installed")]
    publish(make_bundle(2), repo)
    publish(make_bundle(1, model="other", engine=False), repo)
    res = {(r.model, r.version, r.action) for r in pull(url, dev)}
    assert res == {("tiny", 2, "installed"), ("other", 1, "installed")}
    assert [r.action for r in pull(url, dev, models=["tiny"])] == ["up-to-date"]
    from edgeq.cli import main

    publish(make_bundle(3), repo)
    assert main(["pull", url, "--store", str(dev.root), "--model", "tiny"]) == 0
    assert Store(dev.root).active("tiny").version == 3
    assert not (repo / "public" / "keys").exists() and (repo / "keys" / "root.key").stat().st_mode & 0o077 == 0
    with pytest.raises(UpdateError, match="not above"):
        publish(make_bundle(3, seed=3), repo)


def test_attacks_refused_and_device_keeps_serving(tmp_path, keypair, make_bundle, served_repo):
    repo, url = served_repo
    meta = repo / "public" / "metadata"
    r = publish(make_bundle(1), repo)
    dev = _device(tmp_path, keypair)
    pull(url, dev, root=r.root_path)
    publish(make_bundle(2), repo)
    pull(url, dev)
    old_timestamp = (meta / "timestamp.json").read_bytes()  # validly signed and unexpired; older below
    refused: list[str] = []

    def expect_refused(what: str, match: str, serving: int) -> None:
        with pytest.raises(UpdateError, match=match):
            pull(url, dev)
        assert dev.active("tiny").version == serving, what
        dev.verify("tiny", serving)
        refused.append(what)

    # 1. freeze: the newest metadata is expired
    publish(make_bundle(3), repo, expiry=TufExpiry(timestamp=timedelta(days=-1)))
    expect_refused("expired timestamp", "expired", serving=2)
    # once re-signed, the device takes v3 and so has seen a newer timestamp than old_timestamp
    refresh(repo)
    assert [(x.version, x.action) for x in pull(url, dev)] == [(3, "installed")]
    # 2. rollback: the older (validly signed, unexpired) timestamp is served again
    good_ts = (meta / "timestamp.json").read_bytes()
    (meta / "timestamp.json").write_bytes(old_timestamp)
    expect_refused("rolled-back timestamp", "older than what this device already trusts", serving=3)
    (meta / "timestamp.json").write_bytes(good_ts)
    # 3. a target swapped on the server (hash mismatch) and 4. endless data (longer than signed)
    publish(make_bundle(4), repo)
    blob = next((repo / "public" / "targets" / "bundles" / "tiny").glob("*.tiny-v4.edgeq.tar"))
    original = blob.read_bytes()
    blob.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    expect_refused("target bytes swapped", "does not match", serving=3)
    blob.write_bytes(original + b"\0" * 4096)
    expect_refused("endless data", "does not match|download failed", serving=3)
    blob.write_bytes(original)
    # 5. metadata signed by another repository's keys
    good_ts = (meta / "timestamp.json").read_bytes()
    evil = tmp_path / "evil-repo"
    publish(make_bundle(4), evil)
    shutil.copyfile(evil / "public" / "metadata" / "timestamp.json", meta / "timestamp.json")
    expect_refused("timestamp signed by an untrusted key", "not signed by the trusted keys", serving=3)
    # and once the repository is honest again, the device updates
    (meta / "timestamp.json").write_bytes(good_ts)
    assert [(x.version, x.action) for x in pull(url, dev)] == [(4, "installed")]
    print(f"TUF attacks refused while the device kept serving its version: {len(refused)} ({', '.join(refused)})")
    assert len(refused) == 5


def test_pull_needs_a_pinned_root(tmp_path, keypair, make_bundle, served_repo):
    repo, url = served_repo
    r = publish(make_bundle(1), repo)
    dev = _device(tmp_path, keypair)
    from edgeq.errors import ConfigError

    with pytest.raises(ConfigError, match="no trusted root"):
        pull(url, dev)
    pull(url, dev, root=r.root_path)
    other = tmp_path / "other-repo"
    r2 = publish(make_bundle(1), other)
    with pytest.raises(ConfigError, match="different trusted root"):
        pull(url, dev, root=r2.root_path)
