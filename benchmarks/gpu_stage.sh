#!/bin/bash
# Host side of the GPU run: lay out $MAIN/.gpu (git-ignored there) for benchmarks/gpu_run.sh and print, per
# device call, the paths to carry. The device tool sends the checkout $MAIN plus the carried paths, at most
# 64 MiB a call, so the onnxruntime-gpu wheel is cut to fill each call up to that limit:
#   call 1: src + payload + deps + piece;  calls 2..: a piece (+ the genai wheel once);  last: piece + src
#   MAIN=/work/main WHEELS=/tmp/gpuw bash benchmarks/gpu_stage.sh
set -euo pipefail
WT=$(cd "$(dirname "$0")/.." && pwd)
MAIN=${MAIN:-/work/main}
WHEELS=${WHEELS:-/tmp/gpuw}
ORT=$WHEELS/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
GENAI=$WHEELS/onnxruntime_genai_cuda-0.18.0-cp312-cp312-manylinux_2_28_x86_64.whl
LIMIT=$((64 * 1024 * 1024 - 1536 * 1024))  # 1.5 MiB under the tool's limit
G=$MAIN/.gpu
grep -qx '/.gpu/' "$MAIN/.git/info/exclude" 2>/dev/null || { mkdir -p "$MAIN/.git/info"; echo '/.gpu/' >> "$MAIN/.git/info/exclude"; }
rm -rf "$G"
mkdir -p "$G/src" "$G/deps"
(cd "$WT" && tar -cf - --exclude=__pycache__ --exclude='*.png' edgeq tests benchmarks pyproject.toml) | tar -xf - -C "$G/src"
cp -r "$WT/.cache/gpu_payload" "$G/payload"
cp "$WHEELS"/deps/*.whl "$G/deps/"
(cd "$WT" && git rev-parse HEAD) > "$G/COMMIT"
(cd "$WHEELS" && sha256sum "$(basename "$ORT")") > "$G/ort-gpu.sha256"
base=$(cd "$MAIN" && git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
size() { du -cb "$@" | tail -1 | cut -f1; }
first=$((LIMIT - base - $(size "$G/src" "$G/payload" "$G/deps" "$G/COMMIT" "$G/ort-gpu.sha256")))
middle=$((LIMIT - base))
last_extra=$(size "$G/src")
total=$(stat -c %s "$ORT")
off=0; i=1
echo "main tree $base B; wheel $total B"
while [ $off -lt "$total" ]; do
  room=$middle
  [ $i -eq 1 ] && room=$first
  [ $i -eq 3 ] && room=$((middle - $(stat -c %s "$GENAI")))
  left=$((total - off))
  if [ $left -le $((middle - last_extra)) ] && [ $i -gt 1 ]; then room=$left; fi
  mkdir -p "$G/p$i"
  dd if="$ORT" of="$G/p$i/ort-gpu.part$(printf %02d $i)" bs=1M iflag=skip_bytes,count_bytes skip=$off count=$room status=none
  [ $i -eq 3 ] && cp "$GENAI" "$G/p$i/"
  off=$((off + room)); i=$((i + 1))
done
n=$((i - 1))
for c in $(seq 1 $n); do
  carry="\".gpu/p$c\""
  [ "$c" -eq 1 ] && carry="\".gpu/src\", \".gpu/payload\", \".gpu/deps\", \".gpu/COMMIT\", \".gpu/ort-gpu.sha256\", $carry"
  [ "$c" -eq "$n" ] && [ "$c" -gt 1 ] && carry="\".gpu/src\", $carry"
  echo "call $c: carry [$carry] = $(( base + $(size $(echo "$carry" | tr -d '",' | sed "s#\.gpu#$G#g")) )) B"
done
