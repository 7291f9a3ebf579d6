"""Run every CPU benchmark in order, then regenerate BENCHMARKS.md and the charts.

    python benchmarks/run_all.py [--quick] [--only quality speed ...]

Order matters: bench_quality produces the quantized models the others reuse; bench_build runs before
bench_size (engine sizes); bench_cpi reads speed.json (and h100_fp8.json if the device run was copied in).
The H100 benchmark runs on the GPU machine separately (see bench_h100_fp8.py). Each script runs in its own
process; a failing one is reported and the rest still run. Exit code 1 if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ("quality", "speed", "build", "size", "cpi")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="*", choices=ORDER)
    args = p.parse_args()
    failed, took = [], {}
    for name in args.only or ORDER:
        argv = [sys.executable, str(HERE / f"bench_{name}.py")] + (["--quick"] if args.quick else [])
        print(f"=== {name}: {' '.join(argv[1:])}", flush=True)
        t0 = time.time()
        rc = subprocess.call(argv, cwd=HERE.parent)
        took[name] = time.time() - t0
        print(f"=== {name}: exit {rc} after {took[name]:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    rc = subprocess.call([sys.executable, str(HERE / "report.py")], cwd=HERE.parent)
    print("durations: " + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()))
    if failed or rc:
        print(f"FAILED: {failed or ''} {'report' if rc else ''}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
