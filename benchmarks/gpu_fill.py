"""Fill the weights of a weight-free ONNX graph from a seed (run on the GPU machine; numpy only).

``gpu_payload.strip_weights`` (host) moves every large initializer of a graph into an external-data file
that it does not write, and records in ``fill.json`` each tensor's place, dtype and the mean/std of its
real values. ``fill`` writes that file here: floats drawn from a normal with the recorded mean and std,
integer and FP8 codes as random bytes (FP8 NaN patterns avoided). The graph, the shapes, the dtypes and
the bytes moved per token are those of the real file, which is what speed depends on; the values are not,
so nothing measured on a filled model says anything about its accuracy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

FILL_JSON = "fill.json"
_CHUNK = 1 << 24  # elements per draw: bounds the memory the generator needs


def _floats(rng: np.random.Generator, out: np.ndarray, mean: float, std: float) -> None:
    flat = out.reshape(-1)
    for a in range(0, flat.size, _CHUNK):
        b = min(a + _CHUNK, flat.size)
        flat[a:b] = (rng.standard_normal(b - a, dtype=np.float32) * std + mean).astype(flat.dtype)


def fill(model_dir: str | Path, seed: int = 0) -> dict:
    """Write ``model_dir``'s external-data file from ``fill.json``; returns {bytes, tensors, seconds}."""
    d = Path(model_dir)
    spec = json.loads((d / FILL_JSON).read_text())
    path = d / spec["data_file"]
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        f.truncate(spec["total_bytes"])
    mm = np.memmap(path, np.uint8, "r+", shape=(spec["total_bytes"],))
    for i, t in enumerate(spec["tensors"]):
        rng = np.random.default_rng([seed, i])
        region = mm[t["offset"]:t["offset"] + t["length"]]
        kind = t["kind"]
        if kind in ("float16", "float32"):
            _floats(rng, region.view(np.dtype(kind)), t["mean"], t["std"])
        elif kind == "bfloat16":
            tmp = np.empty(t["length"] // 2, np.float32)
            _floats(rng, tmp, t["mean"], t["std"])
            region.view(np.uint16)[:] = (tmp.view(np.uint32) >> 16).astype(np.uint16)
        else:  # integer or FP8 codes: any byte is a valid code except FP8 E4M3FN's NaN (s.1111.111)
            for a in range(0, t["length"], _CHUNK):
                b = min(a + _CHUNK, t["length"])
                chunk = np.frombuffer(rng.bytes(b - a), np.uint8).copy()
                if kind == "float8e4m3fn":
                    chunk[(chunk & 0x7F) == 0x7F] ^= 1
                region[a:b] = chunk
    mm.flush()
    del mm
    return {"bytes": spec["total_bytes"], "tensors": len(spec["tensors"]), "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        print(arg, fill(arg))
