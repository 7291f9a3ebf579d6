"""Prepare the files bench_h100_fp8.py needs on the GPU machine (run here, on the CPU host):
edgeq's FP8 QDQ ONNX of the tiny random Llama and fixed check inputs, under .cache/h100_payload (~1 MB).

    python benchmarks/prepare_h100_payload.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import EVAL_TEXT, ROOT, setup_env  # noqa: E402

PAYLOAD = ROOT / ".cache" / "h100_payload"


def main() -> None:
    setup_env()
    import numpy as np

    from benchmarks import lm_eval
    from edgeq.converters.quantize import quantize
    from edgeq.converters.validate import lm_feeds

    out = PAYLOAD / "tiny-llama-fp8"
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize("tiny-llama", "fp8", out)
    ids = lm_eval.eval_ids(out, EVAL_TEXT, 48)
    nk, hd = lm_eval.kv_shape(out)
    sess = lm_eval.session(out / "model.onnx")
    np.save(out / "check_ids.npy", ids)
    np.savez(out / "check_feeds.npz", **lm_feeds(sess, ids, [], nk, hd))
    for name in ("bench_h100_fp8.py", "h100_result.py"):
        (PAYLOAD / name).write_bytes((ROOT / "benchmarks" / name).read_bytes())
    size = sum(f.stat().st_size for f in PAYLOAD.rglob("*") if f.is_file())
    print(f"payload {PAYLOAD.relative_to(ROOT)}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
