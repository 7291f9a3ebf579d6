"""benchmarks/results/gpu.json from what one session's H200 calls brought back (several calls, two leases).

bench_gpu.py writes one gpu.json per call; the transformers baselines ran in an earlier call (``--only torch``),
a repeat of the whole bench may come from an earlier lease, and gpu_probe.py / gpu_fp8_loader_check.py write
their own files. This puts them in one result file, with a table for each, and says which call and commit each
record came from. Tables are rebuilt by bench_gpu's own code from the records.

    python benchmarks/gpu_result.py --main /work/.device/18/gpu.json --torch /work/.device/4/torch.json \\
        --repeat /work/.device/7/gpu.json --probe /work/.device/19/gpu_probe.json \\
        --loader /work/.device/17/loader_results.json --tests-log /work/.device/18/gpu_tests.log
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_gpu import CANDIDATES, Bench  # noqa: E402
from benchmarks.common import RESULTS, fmt  # noqa: E402


def _commit(doc: dict[str, Any]) -> str:
    return next((n.split()[2].rstrip(";")[:12] for n in doc.get("notes", []) if n.startswith("edgeq commit")), "?")


def _d1(records: list[dict[str, Any]], model: str, cand: str) -> float | None:
    return next((r["decode_tok_s"] for r in records if r.get("model") == model and r.get("candidate") == cand
                 and r.get("kind") == "decode" and r.get("batch") == 1), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("main", "torch", "repeat", "probe", "loader", "tests-log"):
        p.add_argument(f"--{name}", type=Path, required=name == "main")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    main_doc = json.loads(a.main.read_text())
    b = Bench(SimpleNamespace(quick=main_doc["quick"], work="/tmp", budget_s=0, cpu_dry_run=False))
    b.res.records = list(main_doc["records"])
    b.res.not_run = list(main_doc["not_run"])
    b.res.notes = list(main_doc["notes"]) + [f"bench_gpu.py call started {main_doc['started']} ({main_doc['wall_s']} s)"]
    if a.torch:
        t = json.loads(a.torch.read_text())
        b.res.records += [r for r in t["records"] if r.get("candidate") == "transformers eager BF16"]
        b.res.notes.append(f"transformers eager BF16 rows: an earlier call (--only torch, commit {_commit(t)}, "
                           f"started {t['started']}); torch {t['records'][-1].get('torch', '?')}")
    bw = next(r for r in b.res.records if r.get("kind") == "copy_bandwidth")
    b.tables(bw)
    if a.repeat:
        rep = json.loads(a.repeat.read_text())
        rows = []
        for model in dict.fromkeys(r["model"] for r in b.res.records if r.get("kind") == "decode"):
            for cand in CANDIDATES[:3]:
                x, y = _d1(b.res.records, model, cand), _d1(rep["records"], model, cand)
                rows.append([model, cand, fmt(x, 4), fmt(y, 4), fmt(x / y if x and y else None, 3)])
        b.res.table("Repeatability: decode b1 tok/s in this run and in an earlier lease's run of the same bench",
                    ["model", "candidate", "this run", "earlier run", "ratio"], rows,
                    f"Earlier run: commit {_commit(rep)}, started {rep['started']}, another machine of the same kind "
                    "(its batch-8 device greedy fell back to the host: the bug this run's commit fixed). At 8-27 ms "
                    "a step for a 135M-1B model the step is bound by the host launching ~3,300-3,900 nodes, so "
                    "these figures move with the machine's CPU, not its GPU.")
        b.res.records += [{"kind": "repeat_run", **r} for r in rep["records"] if r.get("kind") == "decode"]
    if a.probe:
        pr = json.loads(a.probe.read_text())
        rows = []
        for model, res in pr.items():
            if not isinstance(res, dict) or "raw" not in res:
                continue
            prof = res["raw_profile"]
            cpu_nodes = sum(t["per_step"] for t in prof["top"] if t["op"].startswith("CPUExecutionProvider"))
            rows.append([model, *(fmt(res["raw"].get(v), 3) for v in ("default", "threads=1", "no spinning",
                                                                          "extended", "basic")),
                         fmt(res["edgeq"]["default"], 3), fmt(res["genai"] if isinstance(res["genai"], float)
                                                              else None, 3),
                         int(prof["nodes_per_step"]), int(cpu_nodes)])
            b.res.records.append({"kind": "probe", "model": model, **res})
        b.res.table("Where a decode step goes (gpu_probe.py): ms per step at batch 1, raw loop under session "
                    "options, edgeq, genai; nodes per step in ONNX Runtime's profile",
                    ["model", "raw default", "raw threads=1", "raw no spinning", "raw extended", "raw basic",
                     "edgeq", "genai", "nodes/step", "CPU-EP nodes/step (top ops)"], rows,
                    "16-token prompt, 64 new tokens, median of 3, one call. No option moves the step consistently; "
                    "about a quarter of the nodes are the export's shape subgraphs, which ONNX Runtime places on "
                    "the CPU. The lever is fewer nodes per step (fused attention, rotary and norms), not options.")
    if a.loader:
        ld = json.loads(a.loader.read_text())
        rows = [[name, e.get("quant_method"), e.get("linear_class"), e.get("all_match", "-"),
                 e.get("error", "").split(":")[0] + (": needs the `kernels` package (downloads from the Hub)"
                                                     if "kernels" in e.get("error", "") else "")]
                for name, e in ld["checkpoints"].items()]
        b.res.table(f"edgeq's FP8 block checkpoints in transformers {ld['transformers']} on the GPU "
                    "(gpu_fp8_loader_check.py)", ["checkpoint", "quant_method", "linear class", "greedy match",
                                                    "error"], rows,
                    "transformers loads the weights into its FP8Linear modules; their forward needs the `kernels` "
                    "package (0.16.x), which fetches its kernels from the Hugging Face Hub, and the GPU machine has "
                    "no network: the greedy comparison did not run.")
        b.res.records.append({"kind": "loader_check", **ld})
    b.res.notes.append("No TensorRT engine ran: full TensorRT is not installable here and TensorRT-RTX refuses sm90; "
                       "the TensorRT backends' device-memory layer (cudart) was exercised directly "
                       "(tests/gpu/test_devmem.py: 4 passed on the H200).")
    path = b.res.write(a.out)
    doc = json.loads(path.read_text())  # the device's machine line and times, not this host's
    machine = dict(main_doc["machine"], commit=next((n.split()[2].rstrip(";") for n in main_doc["notes"]
                                                      if n.startswith("edgeq commit")), None))
    if a.tests_log:  # its first line: the onnxruntime the run imported (onnxruntime-gpu from /tmp/site)
        machine["versions"] = dict(machine["versions"], onnxruntime=a.tests_log.read_text().split()[0] + " (gpu)")
    doc.update(machine=machine, started=main_doc["started"], wall_s=main_doc["wall_s"])
    path.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
