"""Driver for the kill -9 test: fork an installer per store copy and SIGKILL it at a random point.

Run as ``python -m tests.sdk.store.killer TEMPLATE BUNDLE OUT_DIR KILLS SEED``; it writes
``OUT_DIR/results.json`` with one record per run. Half the runs die at a random injected step
(``Store._fault_hook``), half at a random wall-clock delay measured against a dry run (some of those
finish first, more so on a loaded machine), so runs go on until KILLS installers were killed
(at most 2 × KILLS runs). The checks
live in the test, which inspects every store copy afterwards. A separate interpreter (not pytest's)
forks, so no pytest or torch threads are ever duplicated into the children.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

from edgeq.sdk.device import DeviceInfo
from edgeq.sdk.store.store import Store

DEVICE = DeviceInfo("8.9", {"tensorrt_rtx": "1.7.1.116"})


def _install(root: Path, bundle: str, kill_at: int | None) -> None:
    store = Store(root, device=DEVICE)
    steps = 0

    def hook(step: str) -> None:
        nonlocal steps
        if kill_at is not None and steps == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        steps += 1

    store._fault_hook = hook
    store.install(bundle)


def _dry_run(template: Path, bundle: str, scratch: Path) -> tuple[int, float]:
    shutil.copytree(template, scratch)
    store = Store(scratch, device=DEVICE)
    names: list[str] = []
    store._fault_hook = names.append
    t0 = time.perf_counter()
    store.install(bundle)
    elapsed = time.perf_counter() - t0
    shutil.rmtree(scratch)
    return len(names), elapsed


def main(template: Path, bundle: str, out: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    n_steps, t_install = _dry_run(template, bundle, out / "dry")
    results: list[dict] = []
    i = 0
    while sum(r["killed"] for r in results) < kills and i < 2 * kills:
        root = out / f"run{i:03d}"
        shutil.copytree(template, root)
        mode = "step" if i % 2 == 0 else "delay"
        kill_at = rng.randrange(n_steps) if mode == "step" else None
        delay = rng.uniform(0, 1.3 * t_install) if mode == "delay" else 0.0
        pid = os.fork()
        if pid == 0:  # child: install, die wherever told; never return into the driver
            code = 0
            try:
                _install(root, bundle, kill_at)
            except BaseException:  # noqa: BLE001
                code = 3
            os._exit(code)
        if mode == "delay":
            time.sleep(delay)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        results.append({"root": str(root), "mode": mode, "step": kill_at, "delay": delay, "killed": killed,
                        "exit": None if killed else os.waitstatus_to_exitcode(status)})
        i += 1
    (out / "results.json").write_text(json.dumps({"steps": n_steps, "t_install": t_install, "runs": results}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
