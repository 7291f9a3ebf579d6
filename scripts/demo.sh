#!/usr/bin/env bash
# The main job on the built-in default: SmolLM2-135M-Instruct (offline) → ONNX → quantized QDQ ONNX checked
# against the FP reference → TensorRT-RTX engine built on this CPU for an RTX target → signed bundle →
# device store → a short generation through the device runtime (no GPU here: ONNX Runtime CPU serves the
# bundle's CPU graph, FP32 weight-only and fused, instead of its FP8/FP16 graph).
# Override with EDGEQ_DEMO_TARGET (default rtx-ada: FP8) and EDGEQ_DEMO_DIR (default ./demo-out).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
OUT="${EDGEQ_DEMO_DIR:-$ROOT/demo-out}"
TARGET="${EDGEQ_DEMO_TARGET:-rtx-ada}"
rm -rf "$OUT"
mkdir -p "$OUT"
echo "[edgeq] 1/4 signing key"
edgeq keys generate --out "$OUT/keys"
echo "[edgeq] 2/4 build smollm2-135m for $TARGET (export, quantize, check, engine, bundle)"
edgeq build --target "$TARGET" --model smollm2-135m --out "$OUT/bundle" --sign-key "$OUT/keys/edgeq.key"
echo "[edgeq] 3/4 install into a device store (signature, compatibility, hashes, atomic switch)"
edgeq install "$OUT/bundle" --store "$OUT/store" --trust "$OUT/keys/edgeq.pub"
edgeq status --store "$OUT/store"
echo "[edgeq] 4/4 generate through the runtime"
edgeq run --store "$OUT/store" --model smollm2-135m --max-new-tokens 48 "What is the capital of France? Answer in one sentence."
