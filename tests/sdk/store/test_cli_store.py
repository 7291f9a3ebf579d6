"""The store and shipping commands from the CLI (edgeq.cli.main, in-process)."""

from __future__ import annotations

import os
import stat

from edgeq.cli import main


def test_keys_pack_install_status_rollback_remove(tmp_path, make_bundle, capsys):
    keys = tmp_path / "keys"
    assert main(["keys", "generate", "--out", str(keys), "--name", "pub"]) == 0
    assert stat.S_IMODE(os.stat(keys / "pub.key").st_mode) == 0o600
    assert main(["keys", "generate", "--out", str(keys), "--name", "pub"]) != 0  # never overwrites silently
    b1 = make_bundle(1, engine=False, sign=keys / "pub.key")
    b2 = make_bundle(2, engine=False, sign=keys / "pub.key")
    arch = tmp_path / "b2.edgeq.tar"
    assert main(["pack", str(b2), "--out", str(arch)]) == 0
    store = str(tmp_path / "store")
    capsys.readouterr()
    # untrusted key: refused with the bundle exit code and a hint
    assert main(["install", str(b1), "--store", store]) == 6
    assert "does not trust" in capsys.readouterr().err
    assert main(["install", str(b1), "--store", store, "--trust", str(keys / "pub.pub")]) == 0
    assert main(["install", str(arch), "--store", store]) == 0  # trust persisted
    assert main(["status", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "CPU only" in out
    assert main(["rollback", "tiny", "--store", store]) == 0
    assert main(["list", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "active" in out and "kept" in out
    assert main(["install", str(make_bundle(1, engine=False, sign=keys / "pub.key", seed=4)), "--store", store]) == 7
    assert main(["remove", "tiny", "--store", store, "--version", "2"]) == 0
    assert main(["remove", "tiny", "--store", store]) == 0
    unsigned = make_bundle(3, engine=False, sign=False)
    assert main(["install", str(unsigned), "--store", store]) == 6
    assert main(["install", str(unsigned), "--store", store, "--allow-unsigned"]) == 0
    assert main(["install", str(make_bundle(2, engine=False, sign=keys / "pub.key")), "--store", store]) == 6  # downgrade
    assert main(["install", str(make_bundle(2, engine=False, sign=keys / "pub.key")), "--store", store,
                 "--allow-downgrade"]) == 0


def test_publish_from_cli(tmp_path, make_bundle, keypair):
    repo = tmp_path / "repo"
    assert main(["publish", str(make_bundle(1)), "--repo", str(repo), "--trust", str(keypair.public_path)]) == 0
    assert (repo / "public" / "metadata" / "1.root.json").exists()
    assert main(["publish", "--repo", str(repo), "--refresh"]) == 0
    assert main(["publish", str(make_bundle(2, sign=False)), "--repo", str(repo)]) == 8  # unsigned refused
