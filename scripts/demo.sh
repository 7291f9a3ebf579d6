#!/usr/bin/env bash
# The main job on the built-in default: SmolLM2-135M-Instruct (offline) → export → quantize → TensorRT-RTX engine
# for an RTX target → signed bundle → device store → a short generation through the runtime.
# Override with EDGEQ_DEMO_TARGET (default rtx-ada) and EDGEQ_DEMO_DIR (default ./demo-out).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
OUT="${EDGEQ_DEMO_DIR:-$ROOT/demo-out}"
TARGET="${EDGEQ_DEMO_TARGET:-rtx-ada}"
echo "[edgeq] demo: export smollm2-135m → ONNX (validated against PyTorch) in $OUT"
rm -rf "$OUT"
mkdir -p "$OUT"
edgeq export --model smollm2-135m --out "$OUT/onnx"
