#!/bin/bash
# The GPU run on the lent H200, in stages (the device tool carries at most 64 MiB a call, so the 256 MB
# onnxruntime-gpu wheel travels in pieces, a few a call, gathered in /tmp/w while the machine stays warm;
# the code and payload travel once, to /tmp/g, and again only when a call carries them).
#   bash .gpu/src/benchmarks/gpu_run.sh 1       (or /tmp/g/src/benchmarks/gpu_run.sh 2|3 on later calls)
#        1 = probe + device-memory tests + fill the weights, 3 = transformers BF16 baselines,
#        loader = transformers' FP8 loader on edgeq's checkpoints (benchmarks/gpu_fp8_loader_check.py; the
#        payload's large safetensors travel as pieces L*.part, like the wheel), probe = benchmarks/gpu_probe.py
#   bash /tmp/g/src/benchmarks/gpu_run.sh final   reassemble + check + install, tests/gpu, bench_gpu.py
# Whatever a call carried under .gpu/p*/ is copied to /tmp/w first. Results land in $OUT (what the tool
# brings back). Host side: benchmarks/gpu_stage.sh lays out .gpu/.
set -o pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
C=$PWD/.gpu
G=/tmp/g
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/w /tmp/site "$G" "$OUT"
cp "$C"/p*/* /tmp/w/ 2>/dev/null
# a folder travels again only when this call carried it whole (a path a call does not name is removed there)
[ -f "$C/src/benchmarks/gpu_run.sh" ] && rm -rf "${G:?}/src" && cp -r "$C/src" "$G/src"
for d in payload deps loader; do [ -n "$(ls -A "$C/$d" 2>/dev/null)" ] && rm -rf "${G:?}/$d" && cp -r "$C/$d" "$G/$d"; done
[ -f "$C/COMMIT" ] && cp "$C/COMMIT" "$C/ort-gpu.sha256" "$G/"
echo "== /tmp/w:"; ls -l /tmp/w; echo "== /tmp/g:"; ls /tmp/g
# CUDA 13 libraries ONNX Runtime's CUDA provider and genai need: torch's nvidia wheels and the toolkit
NV=$(python3 -c "import glob, sys; print(':'.join(sorted(glob.glob(sys.prefix + '/lib/python3*/site-packages/nvidia/*/lib'))))")
export LD_LIBRARY_PATH=$NV:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PYTHONPATH=/tmp/site:$G/src
export EDGEQ_GPU_PAYLOAD=$G/payload/tests EDGEQ_COMMIT=$(cat "$G"/COMMIT 2>/dev/null)
cd "$G/src" || exit 1
if ls "$C"/deps/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$C"/deps/*.whl || exit 1
fi
BENCH="python3 benchmarks/bench_gpu.py --payload $G/payload/models --work /tmp/edgeq-gpu-bench"
case "$1" in
  1)
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$OUT/probe.log"
    python3 - <<'EOF' 2>&1 | tee -a "$OUT/probe.log"
import importlib.metadata as md, ctypes
for d in ("cuda-bindings", "numpy", "torch", "transformers", "onnx", "onnxruntime", "ml-dtypes", "psutil", "cryptography"):
    try: print(d, md.version(d))
    except md.PackageNotFoundError: print(d, "MISSING")
for lib in ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcufft.so.12", "libcudnn.so.9", "libnvinfer.so.10"):
    try: ctypes.CDLL(lib); print(lib, "loads")
    except OSError as e: print(lib, "FAILS", str(e)[:120])
EOF
    timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/gpu/test_devmem.py 2>&1 | tee "$OUT/devmem_tests.log"
    ;&
  2)
    timeout 200 python3 - <<'EOF' 2>&1 | tee "$OUT/fill.log"
import shutil
from pathlib import Path
from benchmarks.gpu_fill import fill
work = Path("/tmp/edgeq-gpu-bench")
for d in sorted(Path("/tmp/g/payload/models").iterdir()):
    dst = work / d.name
    shutil.copytree(d, dst, dirs_exist_ok=True)
    print(d.name, fill(dst, seed=0), flush=True)
EOF
    ;;
  3)
    timeout 400 $BENCH --only torch --out /tmp/torch_out 2>&1 | tee "$OUT/torch.log"
    cp /tmp/torch_out/gpu.json "$OUT/torch.json" 2>/dev/null
    ;;
  loader)
    L=$G/loader
    for f in "$L"/*/model.safetensors.sha256; do
      d=$(dirname "$f"); cat /tmp/w/"$(basename "$d")".L*.part > "$d/model.safetensors" || exit 3
      (cd "$d" && sha256sum -c model.safetensors.sha256) || { echo "loader pieces missing or damaged"; exit 3; }
    done
    timeout 300 python3 "$L/gpu_fp8_loader_check.py" check "$L" 2>&1 | tee "$OUT/loader.log"
    cp "$L/results.json" "$OUT/loader_results.json" 2>/dev/null
    ;;
  probe)
    timeout 400 python3 benchmarks/gpu_probe.py --work /tmp/edgeq-gpu-bench --out "$OUT" \
      --models smollm2-fp16 smollm2-int4-awq smollm2-fp8 2>&1 | tee "$OUT/probe_run.log"
    ;;
  final)
    W=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
    cd /tmp/w && cat ort-gpu.part* > $W && sha256sum -c "$G/ort-gpu.sha256" || { echo "pieces missing or damaged"; exit 3; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/w/$W \
      /tmp/w/onnxruntime_genai*.whl || exit 3
    cd "$G/src"
    python3 -c "import onnxruntime as o; print(o.__version__, o.__file__, o.get_available_providers())" 2>&1 | tee "$OUT/gpu_tests.log"
    timeout 170 python3 -m pytest -q -m gpu -p no:cacheprovider tests/gpu --timeout 120 -rA 2>&1 | tee -a "$OUT/gpu_tests.log"
    timeout 370 $BENCH --only ort --merge /tmp/torch_out/gpu.json --budget-s 330 --out "$OUT" 2>&1 | tee "$OUT/gpu_bench.log"
    ;;
esac
