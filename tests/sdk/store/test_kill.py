"""kill -9 of the installer at >= 100 random points: old or new version fully usable, nothing extra left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from edgeq.sdk.store.store import Store
from tests.sdk.store.conftest import ADA

KILLS = 100  # installers killed mid-install (the driver runs until it has this many)
REPO = Path(__file__).resolve().parents[3]


def _logical_tree(root: Path) -> dict[str, str]:
    """Everything on disk except files whose bytes legitimately differ run to run (timestamps, pids)."""
    from tests.sdk.store.conftest import tree_snapshot

    snap = tree_snapshot(root)
    for volatile in ("models/tiny/state.json", "models/tiny/events.jsonl", ".lock"):
        if volatile in snap:
            snap[volatile] = "present"
    return snap


def test_kill9_during_install_leaves_old_or_new(tmp_path, keypair, make_bundle):
    template = tmp_path / "template"
    s = Store(template, trusted_keys=[keypair.public_path], keep=2, device=ADA)
    for v in (1, 2, 3):
        s.install(make_bundle(v))
    bundle = make_bundle(4)
    # references: the store as it is (old) and after a clean install of v4 (new); v1 gets pruned
    ref_new_root = tmp_path / "ref-new"
    subprocess.run(["cp", "-a", str(template), str(ref_new_root)], check=True)
    Store(ref_new_root, device=ADA).install(bundle)
    ref = {3: _logical_tree(template), 4: _logical_tree(ref_new_root)}

    out = tmp_path / "runs"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-m", "tests.sdk.store.killer", str(template), str(bundle), str(out), str(KILLS), "11"],
                   check=True, env=env, cwd=REPO, timeout=300)
    report = json.loads((out / "results.json").read_text())
    outcomes = {"old": 0, "new": 0}
    killed = 0
    for run in report["runs"]:
        root = Path(run["root"])
        killed += run["killed"]
        assert run["killed"] or run["exit"] == 0, run
        store = Store(root, device=ADA)
        active = store.active("tiny").version
        assert active in (3, 4), run
        # every version the store reports is fully usable: all hashes match, no unlisted files
        kept = [v.version for v in store.versions("tiny")]
        assert kept == ([1, 2, 3] if active == 3 else [2, 3, 4]), (run, kept)
        for v in kept:
            store.verify("tiny", v)
        for f in store.active("tiny").manifest.files:
            store.read_verified("tiny", active, f.path)
        store.events("tiny")  # a torn event line must not break reading
        # after recovery the disk holds exactly what a clean old/new store holds: zero extra files
        store.recover()
        assert _logical_tree(root) == ref[active], run
        if active == 3:  # and the interrupted install can simply be retried
            assert store.install(bundle).version == 4
        outcomes["old" if active == 3 else "new"] += 1
    print(f"kill -9 runs: {len(report['runs'])} ({killed} killed, {report['steps']} injection steps, "
          f"dry install {report['t_install'] * 1e3:.1f} ms) -> old {outcomes['old']}, new {outcomes['new']}")
    assert killed >= KILLS
